"""Engine decode-step benchmark: how long one decode step of the default model takes in the
qfid engine, per scheme and batch size, at a fixed context.

Each (scheme, batch) runs in a fresh subprocess: load the engine, prefill `batch` prompts of
`--context` tokens, then time every decode step; the median is reported (the first two steps
are warm-up). This is the figure behind "INT4 decodes faster than bf16 in the engine": at
batch 1 a decode step is bound by reading the weights, so 4-bit weights should win.

    python bench/decode.py [--model smollm2-135m] [--schemes bf16,awq-int4,fp8] [--batches 1,16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package transformers imports: this folder goes
# last (its helper _worker is still found), as in bench/quantize.py
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

# Activation dtype per scheme: bf16 for every quantized scheme (as `qfid bench` runs them),
# so rows differ only in the weight format.
ACTIVATION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "awq-int4": "bfloat16", "fp8": "bfloat16"}


def worker(model: str, scheme: str, batch: int, context: int, steps: int, keep: dict | None = None,
           eager: bool = False) -> dict:
    """One (scheme, batch) row; `keep` receives the LLM (for callers that inspect it after);
    `eager` runs decode steps on the Python layers (the engine's enforce_eager)."""
    from qfid.bench.harness import resolve_model
    from qfid.engine.llm import LLM
    from qfid.engine.sampling import SamplingParams

    model_dir, _ = resolve_model(model, scheme)
    llm = LLM(str(model_dir), dtype=ACTIVATION_DTYPES[scheme], enforce_eager=eager)
    params = SamplingParams(max_tokens=steps + 1, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        llm.engine.add_request([1 + (i * 7 + j) % 1000 for j in range(context)], params)
    times = []
    while llm.engine.has_unfinished():
        start = time.perf_counter()
        llm.engine.step()
        times.append(time.perf_counter() - start)
    decode = times[-steps:][2:]
    if keep is not None:
        keep["llm"] = llm
    return {"scheme": scheme, "batch": batch, "context": context, "decode_ms_median": 1000 * statistics.median(decode),
            "decode_ms_best": 1000 * min(decode), "tokens_per_s": batch / statistics.median(decode)}


def run_subprocess(model: str, scheme: str, batch: int, context: int, steps: int) -> dict:
    from _worker import run_worker

    return run_worker(__file__, ["--model", model, "--schemes", scheme, "--batches", str(batch), "--context",
                                 str(context), "--steps", str(steps)], f"{scheme} batch {batch}")


def render(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bench/decode.py: one engine decode step")
    for col in ("scheme", "batch", "context", "median ms", "best ms", "tokens/s", "vs bf16"):
        table.add_column(col, justify="right")
    bf16 = {r["batch"]: r["decode_ms_median"] for r in rows if r["scheme"] == "bf16"}
    for r in rows:
        speedup = bf16.get(r["batch"], float("nan")) / r["decode_ms_median"]
        table.add_row(r["scheme"], str(r["batch"]), str(r["context"]), f"{r['decode_ms_median']:.1f}",
                      f"{r['decode_ms_best']:.1f}", f"{r['tokens_per_s']:.0f}", f"{speedup:.2f}x")
    Console().print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", default="bf16,awq-int4,fp8")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.schemes, int(args.batches), args.context, args.steps)))
        return
    rows = [run_subprocess(args.model, scheme, int(batch), args.context, args.steps)
            for batch in args.batches.split(",") for scheme in args.schemes.split(",")]
    render(rows)
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
