"""`qfid demo`: the main job on the default model, end to end."""
from __future__ import annotations

import typer

HELP = """Run the whole story on the bundled default model (SmolLM2-135M-Instruct): quantize AWQ INT4,
RTN INT4 and FP8; evaluate the original (bf16) and all three on every built-in suite; compare; write
the report; say which scheme to ship for which suite. Resumable: finished steps are reused.

Examples:

  qfid demo

  qfid demo --full -o out/demo --reports reports
"""


def demo_command(
    output: str = typer.Option("out/demo", "--output", "-o", help="Where the quantized checkpoints go."),
    reports: str = typer.Option("reports", "--reports", help="Where eval runs (runs/) and the report (demo/) go."),
    full: bool = typer.Option(False, "--full", help="Evaluate every item instead of the default per-suite limit."),
    backend: str = typer.Option("engine", "--backend", help="Eval backend: engine | hf."),
) -> None:
    from qfid.demo import run_demo

    run_demo(output, reports, full=full, backend=backend)
