"""Option aliases shared by several commands, so the same flag means the same everywhere."""
from __future__ import annotations

import typer

MODEL_ARG = typer.Argument(..., help="A model folder, a .gguf file, a hub id, or a default model name (smollm2-135m).")
OUTPUT_OPT = typer.Option(..., "--output", "-o", help="Output folder (written to a temp dir, then renamed).")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace the output folder if it exists.")
