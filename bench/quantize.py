"""Quantization benchmark on the default model (or any model folder).

For each scheme, in a fresh subprocess (so peak RSS is that scheme's alone): wall time,
peak RSS, quantized-linear bytes vs fp16, checkpoint size, held-out perplexity and its
delta vs the fp32 baseline; AWQ's share of RTN's perplexity gap. Prints a table and writes
JSON (`--json PATH`).

    python bench/quantize.py [--model smollm2-135m] [--schemes awq-int4,rtn-int4,fp8] [--json out.json]

`--calib-spread` measures instead how much AWQ's held-out perplexity depends on which
calibration samples it saw: 3 seeds at 16, 64 and 128 samples (bench/_calib_spread.py),
written to bench/results/quantize_calib_spread.json unless `--json` says otherwise.

    python bench/quantize.py --calib-spread [--spread-samples 16,64,128] [--spread-seeds 0,1,2] [--calib builtin-large]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package transformers imports: search this
# folder last (its helpers, _worker and _calib_spread, are still found)
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

SCHEME_CONFIGS = {
    "awq-int4": {"scheme": "awq-int4"},
    "rtn-int4": {"scheme": "rtn-int4"},
    "fp8": {"scheme": "fp8", "fp8_weights": "channel"},
    "fp8-tensor": {"scheme": "fp8", "fp8_weights": "tensor"},
}


def worker(model: str, scheme: str, out_dir: str, samples: int, seq_len: int, seed: int = 0,
           calib: str | None = None) -> dict:
    """Runs in the subprocess: quantize, then held-out perplexity of the written checkpoint."""
    from qfid.config import QuantConfig
    from qfid.quant.heldout import heldout_perplexity
    from qfid.quant.pipeline import quantize_model

    config = QuantConfig(calib=calib, calib_samples=samples, calib_seq_len=seq_len, seed=seed, **SCHEME_CONFIGS[scheme])
    t0 = time.perf_counter()
    result = quantize_model(model, config, out_dir, overwrite=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "scheme": scheme, "calib_samples": samples, "seed": seed, "wall_s": wall,
        "quantize_s": result.timings.get("quantize"), "peak_rss_mb": peak_mb,
        "group_size": result.group_size, "linear_ratio_vs_fp16": result.linear_ratio,
        "checkpoint_mb": result.checkpoint_bytes / 2**20, "heldout_ppl": heldout_perplexity(out_dir),
    }


def baseline(model: str) -> dict:
    from qfid.models.loading import resolve_model_dir
    from qfid.quant.heldout import heldout_perplexity
    from qfid.quant.pipeline import dir_bytes

    path = resolve_model_dir(model)
    return {"scheme": "fp32", "checkpoint_mb": dir_bytes(path) / 2**20, "heldout_ppl": heldout_perplexity(path)}


def run_scheme_subprocess(model: str, scheme: str, out_dir: str, samples: int, seq_len: int, seed: int = 0,
                          calib: str | None = None) -> dict:
    from _worker import run_worker

    return run_worker(__file__, [scheme, "--model", model, "--out", out_dir, "--samples", str(samples),
                                 "--seq-len", str(seq_len), "--seed", str(seed), *(["--calib", calib] if calib else [])],
                      f"{scheme} (seed {seed})")


def render(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    base = records[0]["heldout_ppl"]
    table = Table(title="bench/quantize.py")
    for col in ("scheme", "wall s", "peak RSS MB", "linears vs fp16", "checkpoint MB", "held-out ppl", "delta vs fp32"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(r["scheme"], _fmt(r.get("wall_s")), _fmt(r.get("peak_rss_mb"), 0), _fmt(r.get("linear_ratio_vs_fp16"), 3),
                      _fmt(r["checkpoint_mb"]), _fmt(r["heldout_ppl"], 3), _fmt(r["heldout_ppl"] - base, 3))
    Console().print(table)


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", default="awq-int4,rtn-int4,fp8")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--calib-spread", action="store_true", help="AWQ's held-out perplexity over seeds x sample counts")
    ap.add_argument("--spread-samples", default="16,64,128")
    ap.add_argument("--spread-seeds", default="0,1,2")
    ap.add_argument("--worker")
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", help="calibration source (default: the built-in corpus; the spread uses builtin-large)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.worker, args.out, args.samples, args.seq_len, args.seed, args.calib)))
        return
    if args.calib_spread:
        from _calib_spread import main_spread

        main_spread(args, run_scheme_subprocess)
        return
    records = [baseline(args.model)]
    with tempfile.TemporaryDirectory(prefix="qfid-bench-") as tmp:
        for scheme in args.schemes.split(","):
            records.append(run_scheme_subprocess(args.model, scheme, str(Path(tmp) / scheme), args.samples, args.seq_len))
    by = {r["scheme"]: r["heldout_ppl"] - records[0]["heldout_ppl"] for r in records}
    if "awq-int4" in by and by.get("rtn-int4"):
        records.append({"scheme": "summary", "awq_over_rtn_gap": by["awq-int4"] / by["rtn-int4"]})
    render([r for r in records if r["scheme"] != "summary"])
    if "awq-int4" in by and by.get("rtn-int4"):
        print(f"dAWQ/dRTN = {by['awq-int4'] / by['rtn-int4']:.3f} (target <= 0.38)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
