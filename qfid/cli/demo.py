"""`qfid demo`: the main job on the default model, end to end."""
from __future__ import annotations

import typer

HELP = """Run the whole story on the bundled default model (SmolLM2-135M-Instruct):
quantize AWQ INT4, RTN INT4 and FP8, then compare them against the full-precision baseline.

Example:  qfid demo -o out/demo
"""


def demo_command(
    output: str = typer.Option("out/demo", "--output", "-o", help="Where checkpoints and results go."),
) -> None:
    from qfid.demo import run_demo

    run_demo(output)
