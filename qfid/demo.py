"""`qfid demo`: the whole story on the bundled default model (SmolLM2-135M-Instruct), as a
sweep with the demo's defaults (one path: `qfid sweep smollm2-135m` with these arguments).

It quantizes AWQ INT4, RTN INT4 and FP8; AWQ with its 4, 8 and 16 most sensitive units kept
in FP8; and AWQ calibrated on the domain suites' calibration split (the others on the
built-in large corpus, `builtin-large`); evaluates the original and
every candidate on every built-in suite in bf16 activations (what a server runs: the move the
mission is about, 16-bit -> INT4/FP8), compares, gates, and answers "which scheme would you
ship for which suite, and why". The default item limit (60 per suite) trades power for time:
the committed report's run took 18 min 19 s of wall time on an idle 2-core machine (its
steps: evaluation 5.0 min, sensitivity 4.5, quantization 4.1, held-out perplexity 1.7,
throughput 1.6; the report's time line, from OUTPUT/timings.json), under the 30-minute
target; the +keep:N checkpoints replay the AWQ base's saved search, ~15 s each instead of
a search's 1.5 min. `--full` runs every item. Unlike `qfid sweep`, the demo exits 0
whatever the verdict.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qfid.models.default import DEFAULT_MODEL_NAME
from qfid.sweep.run import SweepOptions, SweepResult, run_sweep
from qfid.sweep.schemes import parse_schemes

DEMO_SCHEMES = "awq-int4,rtn-int4,fp8,awq-int4+keep:4,awq-int4+keep:8,awq-int4+keep:16,awq-int4@suite"
DEMO_LIMIT = 60
DEMO_CALIB = "builtin-large"   # the report's AWQ rows were calibrated on it (16 x 512 samples)
DEMO_TITLE = "qfid demo: SmolLM2-135M-Instruct, bf16 vs AWQ INT4 (+ kept layers, suite calibration), RTN INT4, FP8"


def demo_suites() -> list[str]:
    """Every built-in suite."""
    from qfid.evals.suite import builtin_suite_names

    return builtin_suite_names()


def run_demo(output: str | Path = "out/demo", reports: str | Path = "reports", full: bool = False,
             backend: str = "engine", quant_progress: Callable | None = None) -> SweepResult:
    options = SweepOptions(
        model=DEFAULT_MODEL_NAME, schemes=parse_schemes(DEMO_SCHEMES), suites=demo_suites(), output=Path(output),
        report=Path(reports) / "demo", limit=None if full else DEMO_LIMIT, calib=DEMO_CALIB, backend=backend,
        title=DEMO_TITLE,
        quant_progress=quant_progress)
    return run_sweep(options)
