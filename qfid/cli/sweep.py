"""`qfid sweep`: the cheapest checkpoint that keeps the model's domain answers right."""
from __future__ import annotations

from typing import Optional

import typer

from qfid.cli.options import MODEL_ARG
from qfid.errors import QfidError

HELP = """Quantize several schemes, evaluate the baseline and each candidate on the suites, compare, apply the
gate, and recommend the smallest checkpoint that passes every threshold (per suite and overall), with
a size / speed / fidelity table and the Pareto front in the report. Exit code 0 when something passes,
1 when nothing does, so it can gate CI. Resumable: finished checkpoints and runs are reused.

Schemes: awq-int4, rtn-int4, fp8; BASE+keep:N keeps the N most sensitive fused units (q/k/v,
o, gate/up, down of one block) in FP8, BASE+keep16:N in 16 bits, BASE+keep:auto finds the smallest N
that passes the gate (bisection, N - 1 checked too); BASE@suite calibrates on the domain suites.

Examples:

  qfid sweep smollm2-135m

  qfid sweep ./llama-8b --suite finance,legal,multilingual,general \\
      --schemes fp8,awq-int4,rtn-int4,awq-int4+keep:auto --calib my_domain.jsonl -o out/sweep

  qfid sweep ./llama-8b --schemes awq-int4,awq-int4@suite --calib suite:finance,legal
"""
DEFAULT_SUITES = "finance,legal,multilingual,general"
DEFAULT_SCHEMES = "awq-int4,rtn-int4,fp8"


def sweep_command(
    model: str = MODEL_ARG,
    suite: str = typer.Option(DEFAULT_SUITES, "--suite", "-s", help="Comma-separated suites (names or suite.yaml paths)."),
    schemes: str = typer.Option(DEFAULT_SCHEMES, "--schemes", help="Comma-separated schemes (see above)."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration: a .txt/.jsonl file, datasets:NAME, or suite:NAMES (default: the built-in corpus)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="About N items per suite (a seeded sample); default every item."),
    output: str = typer.Option("out/sweep", "--output", "-o", help="Checkpoints, runs and cached measures go here."),
    report: Optional[str] = typer.Option(None, "--report", help="Report folder (default: OUTPUT/report)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Gate thresholds file (default: ./qfid.toml, else ./pyproject.toml)."),
    backend: str = typer.Option("engine", "--backend", help="Eval backend: engine | hf."),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="Measure each checkpoint's engine throughput (a short bursty run)."),
    keep_max: int = typer.Option(16, "--keep-max", help="+keep:auto searches N in [0, this]."),
) -> None:
    from pathlib import Path

    from qfid.cli.progress import progress_callback
    from qfid.evals.gate_config import load_gate_config
    from qfid.sweep.run import SweepOptions, run_sweep
    from qfid.sweep.schemes import parse_schemes

    options = SweepOptions(
        model=model, schemes=parse_schemes(schemes), suites=[s for s in suite.split(",") if s], output=Path(output),
        report=Path(report) if report else Path(output) / "report", limit=limit, calib=calib, backend=backend,
        gate=load_gate_config(config), bench=bench, keep_max=keep_max,
        quant_progress=lambda: progress_callback(transient=True))
    result = run_sweep(options)
    typer.echo(f"report: {result.report['html']}  (markdown: {result.report['md']}, summary: {result.report['summary']})")
    if not result.passes:   # the CI verdict, as `qfid gate` gives it
        raise QfidError("nothing passes the gate: every candidate breaks a threshold (see the report)", exit_code=1)
