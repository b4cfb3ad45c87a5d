"""`qfid demo`: the main job on the default model, end to end."""
from __future__ import annotations

import typer

HELP = """Run the whole story on the bundled default model (SmolLM2-135M-Instruct) as a sweep: quantize AWQ
INT4 (also with its most sensitive layers kept in FP8, and calibrated on the domain suites), RTN INT4
and FP8; evaluate the original (bf16) and every candidate on every built-in suite; compare; write the
report; say which scheme to ship for which suite. Resumable: finished steps are reused. Exits 0
whatever the verdict (`qfid sweep` is the command for CI).

Examples:

  qfid demo

  qfid demo --full -o out/demo --reports reports
"""


def demo_command(
    output: str = typer.Option("out/demo", "--output", "-o", help="Where the checkpoints, eval runs and cached measures go."),
    reports: str = typer.Option("reports", "--reports", help="The report goes to REPORTS/demo."),
    full: bool = typer.Option(False, "--full", help="Evaluate every item instead of the default per-suite limit."),
    backend: str = typer.Option("engine", "--backend", help="Eval backend: engine | hf."),
) -> None:
    from qfid.cli.progress import progress_callback
    from qfid.demo import run_demo

    result = run_demo(output, reports, full=full, backend=backend,
                      quant_progress=lambda: progress_callback(transient=True))
    typer.echo(f"report: {result.report['html']}  (markdown: {result.report['md']})")
