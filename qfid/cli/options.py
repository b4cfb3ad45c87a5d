"""Option aliases shared by several commands, so the same flag means the same everywhere."""
from __future__ import annotations

import typer

MODEL_ARG = typer.Argument(..., help="A model folder, a .gguf file, a hub id, or a default model name (smollm2-135m).")
OUTPUT_OPT = typer.Option(..., "--output", "-o", help="Output folder (written to a temp dir, then renamed).")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace the output folder if it exists.")
DTYPE_OPT = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16 (auto: the checkpoint's 16-bit dtype, bf16 where the device computes it natively, else fp16 on GPUs / fp32 on CPUs).")
DEVICE_OPT = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N (auto: the GPU when torch sees one).")
