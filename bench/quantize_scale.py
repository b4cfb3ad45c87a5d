"""`qfid quantize` at the size users run (issue 11): synthetic Llama checkpoints with random
bf16 weights in Llama-3-8B's shapes (sharded as the hub does) at 2, 8 and 32 decoder
layers, plus the default model, quantized per scheme by this tree ("new") and by a worktree
of the pre-change commit d684acd ("old"), each run in a fresh process.

Per run: wall time, user and system CPU, peak RSS (the child's ru_maxrss via wait4), time
per block (qfid_quant.json's block stage / layers) and output size; the new/old ratios per
(scheme, layers), since absolute times do not carry across machines; and the issue's
targets, each with its measured value and whether it is met. The pre-change code loads the
whole model in fp32, so it runs only where that fits in RAM; elsewhere its row is n/a.

    python bench/quantize_scale.py                                   # the full benchmark (hours)
    python bench/quantize_scale.py --layers 2 --schemes rtn,fp8 --hidden 256 --intermediate 512 \\
        --heads 4 --kv-heads 2 --vocab 1024 --no-default-model --json /tmp/scale.json   # a smoke run

Time per block is the block stage's time: the streamed pipeline's `blocks` stage also
carries the calibration and drift activations from block to block, which the pre-change
RTN/FP8 `quantize` stage did not (it measured drift in a separate whole-model pass), so for
RTN and FP8 the wall-time ratio is the like-for-like one; for AWQ both stages include it.

Checkpoints are written once into `--work` and reused; outputs are deleted after each run.
Calibration is 16 samples for both codes unless `--calib-samples` says otherwise, so the
ratios compare the same work.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# its helpers sit beside it; bench/kernels.py must not shadow the `kernels` package, so last
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from _scale_cases import (PRECHANGE_COMMIT, SCHEME_ARGS, Case, CheckpointError, Shape,  # noqa: E402
                          REPO, ensure_checkpoint, run_case, tree_state)
from _scale_report import machine_info, mem_total_gb, now_utc, ratios, render, write_json  # noqa: E402
from _scale_targets import Rows, default_model_targets, scale_targets  # noqa: E402

RESULTS = HERE / "results" / "quantize_scale.json"
# The pre-change peak RSS over the model's fp32 bytes: issue 11 measured RTN at 8.2 GB on a
# 3.4 GB (fp32) model. At 8 layers of the 8B shape that is ~27 GB, so the old code is n/a
# there on a 24 GB machine unless --old-mem-factor says it needs less (no swap: a run that
# does not fit invites the OOM killer onto a shared machine).
OLD_FP32_OVERHEAD = 2.4
MEM_RESERVE_GB = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/qfid-scale"), help="scratch: checkpoints, outputs, logs")
    ap.add_argument("--layers", default="2,8,32", help="decoder layers of the synthetic checkpoints")
    ap.add_argument("--schemes", default="rtn,fp8,fp8-static,awq", help=f"any of {','.join(SCHEME_ARGS)}")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help=f"also run the pre-change code ({PRECHANGE_COMMIT}) where it fits in memory")
    ap.add_argument("--calib-samples", type=int, default=16, help="passed to both codes (0: each code's default)")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per run before it is killed")
    ap.add_argument("--awq-max-layers", type=int, default=None,
                    help="skip AWQ on deeper synthetic checkpoints (the targets need it at 2 and 8 layers)")
    ap.add_argument("--old-mem-factor", type=float, default=OLD_FP32_OVERHEAD,
                    help="the pre-change code's peak RSS / fp32 model bytes, to decide where it fits")
    ap.add_argument("--default-model", default="smollm2-135m", help="also measure this model (the issue's targets)")
    ap.add_argument("--no-default-model", dest="default_model", action="store_const", const=None)
    ap.add_argument("--json", type=Path, default=RESULTS)
    shape = Shape()
    for field in ("hidden", "intermediate", "heads", "kv_heads", "vocab"):
        ap.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(shape, field),
                        help="synthetic width override (default: Llama-3-8B's)")
    args = ap.parse_args(argv)
    args.layers = [int(n) for n in args.layers.split(",") if n]   # "" : the default model only
    args.schemes = args.schemes.split(",")
    unknown = set(args.schemes) - set(SCHEME_ARGS)
    if unknown:
        ap.error(f"unknown schemes {sorted(unknown)}; choose from {','.join(SCHEME_ARGS)}")
    args.shape = Shape(args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab)
    return args


def old_code_misfit(source_bytes: int, factor: float) -> str | None:
    """Why the pre-change code cannot run on this checkpoint here (it holds the model in
    fp32: twice the bf16 bytes, times `factor`), or None when it fits."""
    need_gb = source_bytes * 2 * factor / 2**30
    total_gb = mem_total_gb()
    if need_gb > total_gb - MEM_RESERVE_GB:
        return f"old code needs ~{need_gb:.0f} GB (fp32 model), machine has {total_gb:.0f} GB"
    return None


class Benchmark:
    """The runs in order, their rows, and the JSON kept current after each one."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rows: list[dict] = []
        self.checkpoints: list[dict] = []
        self.header = {"date": now_utc(), "machine": machine_info(), "prechange_commit": PRECHANGE_COMMIT,
                       "new_code": tree_state(REPO), "shape": vars(args.shape),
                       "targets_at_issue_shape": args.shape == Shape(),
                       "calib_samples": args.calib_samples or "default"}

    def run(self) -> None:
        self.args.work.mkdir(parents=True, exist_ok=True)
        for layers in sorted(self.args.layers):
            try:
                source, record = ensure_checkpoint(self.args.work, self.args.shape, layers)
            except CheckpointError as exc:
                self.failed_source(layers, str(exc))
                continue
            self.checkpoints.append(record)
            misfit = old_code_misfit(record["bytes"], self.args.old_mem_factor)
            for scheme in self.schemes_at(layers):
                self.pair(self.args.shape.label, str(source), layers, scheme, misfit)
        if self.args.default_model:
            for scheme in self.args.schemes:
                self.pair(self.args.default_model, self.args.default_model, None, scheme, None)

    def schemes_at(self, layers: int) -> list[str]:
        limit = self.args.awq_max_layers
        return [s for s in self.args.schemes if not (s == "awq" and limit and layers > limit)]

    def failed_source(self, layers: int, error: str) -> None:
        """Every run that needed this checkpoint, recorded as failed with the writer's error."""
        for scheme in self.schemes_at(layers):
            for code in ("new", "old") if self.args.baseline else ("new",):
                self.rows.append({"model": self.args.shape.label, "scheme": scheme, "layers": layers,
                                  "code": code, "error": error})
        self.save()

    def pair(self, model: str, source: str, layers: int | None, scheme: str, misfit: str | None) -> None:
        """The new code's run, then the old code's (or its n/a row) on the same input."""
        self.measure(Case(model, source, layers, scheme, "new"))
        if not self.args.baseline:
            return
        if misfit:
            self.rows.append({"model": model, "scheme": scheme, "layers": layers, "code": "old", "skipped": misfit})
        else:
            self.measure(Case(model, source, layers, scheme, "old"))

    def measure(self, case: Case) -> None:
        print(f"{now_utc()} {case.name} ...", flush=True)
        row = run_case(case, self.args.work, self.args.calib_samples or None, self.args.timeout)
        row["sys_per_user"] = row["sys_s"] / row["user_s"] if row["user_s"] else None
        self.rows.append(row)
        print(f"{now_utc()} {case.name}: {row['error'] or 'ok'} wall {row['wall_s']:.1f} s, "
              f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)
        self.save()

    def results(self) -> dict:
        ratio_rows = ratios(self.rows)
        rows = Rows(self.rows, ratio_rows)
        targets = scale_targets(rows, self.args.shape.label)
        if self.args.default_model:
            targets += default_model_targets(rows, self.args.default_model)
        return {**self.header, "finished": now_utc(), "checkpoints": self.checkpoints, "rows": self.rows,
                "ratios_new_over_old": ratio_rows, "targets": targets}

    def save(self) -> dict:
        payload = self.results()
        write_json(self.args.json, payload)
        return payload


def main(argv: list[str] | None = None) -> None:
    bench = Benchmark(parse_args(argv))
    bench.run()
    payload = bench.save()
    render(payload["rows"], payload["ratios_new_over_old"], payload["targets"])
    print(f"JSON: {bench.args.json}")


if __name__ == "__main__":
    main()
