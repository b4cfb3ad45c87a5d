"""`qfid quantize`: parse options -> QuantConfig -> quant.pipeline -> summary table."""
from __future__ import annotations

from typing import Optional

import typer

from qfid.cli.options import MODEL_ARG, OUTPUT_OPT, OVERWRITE_OPT

HELP = """Quantize a model to AWQ INT4, RTN INT4 or FP8 and save a checkpoint vLLM and transformers load.

Examples:

  qfid quantize smollm2-135m --scheme awq-int4 -o out/smollm2-awq

  qfid quantize ./llama-dir --scheme awq-int4 --group-size 128 --calib my.jsonl -o out/x

  qfid quantize ./llama-dir --scheme rtn-int4 --format compressed-tensors -o out/y

  qfid quantize ./llama-dir --scheme fp8 --weights tensor --activations static -o out/z

  qfid quantize ./Llama-3.1-70B --scheme awq-int4 --device cuda -o out/l70

Decoder blocks stream from the checkpoint's shards one at a time, so RAM (or GPU memory) holds about one block plus the calibration activations, whatever the model's depth. An interrupted run resumes at the next unfinished block when run again with the same arguments.
"""


def quantize_command(
    model: str = MODEL_ARG,
    output: str = OUTPUT_OPT,
    scheme: str = typer.Option("awq-int4", "--scheme", "-s", help="awq-int4 | rtn-int4 | fp8"),
    device: str = typer.Option("auto", "--device", help="Where blocks are searched: auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    offload_activations: Optional[bool] = typer.Option(None, "--offload-activations/--no-offload-activations", help="Keep calibration activations in CPU memory between blocks (default: chosen from free GPU memory)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", "-g", help="INT4 group size (default: 128 where it divides every width, else the largest power of two that does)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="autoawq | compressed-tensors (default: autoawq for INT4, compressed-tensors for FP8)."),
    weights: str = typer.Option("channel", "--weights", help="FP8 weight scales: channel | tensor."),
    activations: str = typer.Option("dynamic", "--activations", help="FP8 activation scales: dynamic (per token) | static (per tensor, from calibration)."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration data: a .txt/.jsonl file, datasets:NAME[:CONFIG][:SPLIT], or suite:NAMES (the suites' calibration split, never their eval items) (default: qfid's built-in mixed corpus)."),
    calib_samples: int = typer.Option(16, "--calib-samples", help="Number of calibration sequences."),
    calib_seq_len: int = typer.Option(512, "--calib-seq-len", help="Tokens per calibration sequence."),
    no_clip: bool = typer.Option(False, "--no-clip", help="AWQ: skip the clip search."),
    awq_search_from: Optional[str] = typer.Option(None, "--awq-search-from", help="AWQ: replay the scales and clips a qfid AWQ checkpoint of the same model saved, instead of searching (the same INT4 weights, e.g. stored in another format)."),
    seed: int = typer.Option(0, "--seed", help="Seed for calibration sampling."),
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    from qfid.cli.progress import progress_callback
    from qfid.config import QuantConfig
    from qfid.quant.pipeline import quantize_model
    from qfid.quant.report import print_summary

    config = QuantConfig(
        scheme=scheme, group_size=group_size, format=fmt, fp8_weights=weights, fp8_activations=activations,
        calib=_calibration_source(calib), calib_samples=calib_samples, calib_seq_len=calib_seq_len, awq_clip=not no_clip, seed=seed,
        awq_search_from=awq_search_from,
    )
    with progress_callback() as progress:
        result = quantize_model(model, config, output, overwrite=overwrite, progress=progress, device=device,
                                offload_activations=offload_activations)
    print_summary(result)


def _calibration_source(calib: str | None) -> str | None:
    """`suite:NAMES` written out as a .jsonl in the cache (the quantizer reads files; the
    checkpoint folder holds only what loaders read); anything else as given."""
    from qfid.evals.calib_split import is_suite_calibration, write_suite_calibration
    from qfid.paths import cache_dir

    if not is_suite_calibration(calib):
        return calib
    folder = cache_dir() / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    return str(write_suite_calibration(calib, folder))
