"""`qfid quantize` as a short pipeline: resolve -> load -> pick group size -> calibrate ->
quantize (RTN | AWQ | FP8) -> save (temp dir, rename) -> reload what was written and
measure perplexity drift on a few calibration samples.

Each stage is its own function so the CLI, the demo and the benchmark share it.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qfid import __version__
from qfid.config import QuantConfig
from qfid.errors import QfidError
from qfid.models.linears import WeightRef, model_linears
from qfid.models.loading import check_quantizable, load_dense_model, resolve_model_dir
from qfid.models.mappings import ArchSpec
from qfid.quant.primitives import default_group_size
from qfid.utils.fs import atomic_write_text

DRIFT_SAMPLES = 4


@dataclass
class QuantResult:
    """What a quantization run did; the CLI renders it, the benchmark records it."""

    source: str
    output_dir: Path
    config: QuantConfig
    group_size: int | None
    group_size_auto: bool
    layers_quantized: int
    linear_bytes_fp16: int
    linear_bytes_quantized: int
    checkpoint_bytes: int
    ppl_before: float
    ppl_after: float
    calib_description: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def linear_ratio(self) -> float:
        return self.linear_bytes_quantized / max(self.linear_bytes_fp16, 1)

    @property
    def wall_s(self) -> float:
        return sum(self.timings.values())


def choose_group_size(refs: dict[str, WeightRef], requested: int | None) -> tuple[int, bool]:
    """The requested group size if it divides every quantized input width, else a clear
    error; with none requested, the model's default (128 or the largest power of two)."""
    widths = {ref.shape[1] for ref in refs.values()}
    if requested is None:
        return default_group_size(widths), True
    for name, ref in refs.items():
        if ref.shape[1] % requested:
            fallback = default_group_size(widths, preferred=requested)
            raise QfidError(
                f"group size {requested} does not divide input width {ref.shape[1]} of {name}; "
                f"use --group-size {fallback}"
            )
    return requested, False


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str):
        watch = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                watch.timings[stage] = watch.timings.get(stage, 0.0) + time.perf_counter() - self.t0

        return _Stage()


def quantize_model(model: str, config: QuantConfig, output_dir: str | Path, overwrite: bool = False,
                   progress=None) -> QuantResult:
    from qfid.quant.calib import load_calibration
    from qfid.quant.formats import save_checkpoint
    from qfid.quant.metrics import perplexity

    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise QfidError(f"output directory {output_dir} already exists (pass --overwrite to replace it)")
    watch = _Stopwatch()
    with watch("load"):
        model_dir = resolve_model_dir(model)
        _, spec = check_quantizable(model_dir)
        hf_model, tokenizer = load_dense_model(model_dir)
        refs = model_linears(hf_model, spec)
    group_size, auto = choose_group_size(refs, config.group_size) if config.is_int4 else (None, False)
    with watch("calibrate"):
        calib_ids, calib_desc = load_calibration(
            config.calib, tokenizer, config.calib_samples, config.calib_seq_len, config.seed)
        drift_ids = calib_ids[:DRIFT_SAMPLES]
        ppl_before = perplexity(hf_model, drift_ids)
    with watch("quantize"):
        quantized, artifact = _run_scheme(hf_model, spec, config, group_size, calib_ids, progress)
    meta = _metadata(str(model), config, group_size, auto, calib_desc, watch.timings, artifact)
    with watch("save"):
        save_checkpoint(output_dir, hf_model, tokenizer, quantized, config, meta, overwrite=overwrite)
    with watch("verify"):
        ppl_after = _reloaded_perplexity(output_dir, drift_ids)
    result = QuantResult(
        source=str(model), output_dir=output_dir, config=config, group_size=group_size, group_size_auto=auto,
        layers_quantized=len(quantized), linear_bytes_fp16=sum(2 * ref.get().numel() for ref in refs.values()),
        linear_bytes_quantized=quantized_tensor_bytes(output_dir, quantized), checkpoint_bytes=dir_bytes(output_dir),
        ppl_before=ppl_before, ppl_after=ppl_after, calib_description=calib_desc, timings=watch.timings,
    )
    record_summary(result)
    return result


def record_summary(result: QuantResult) -> None:
    """Add the end-of-run figures to `qfid_quant.json`: the machine-readable twin of the
    table the CLI prints."""
    path = result.output_dir / "qfid_quant.json"
    meta = json.loads(path.read_text())
    meta["summary"] = {
        "layers_quantized": result.layers_quantized,
        "linear_bytes_fp16": result.linear_bytes_fp16,
        "linear_bytes_quantized": result.linear_bytes_quantized,
        "linear_ratio_vs_fp16": round(result.linear_ratio, 4),
        "checkpoint_bytes": result.checkpoint_bytes,
        "ppl_calib_before": result.ppl_before,
        "ppl_calib_after": result.ppl_after,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }
    atomic_write_text(path, json.dumps(meta, indent=2))


def _run_scheme(hf_model, spec: ArchSpec, config: QuantConfig, group_size: int | None,
                calib_ids: torch.Tensor, progress):
    """(quantized weights by checkpoint name, search artifact tensors or {})."""
    if config.scheme == "rtn-int4":
        from qfid.quant.rtn import rtn_quantize

        return rtn_quantize(hf_model, spec, group_size), {}
    if config.scheme == "awq-int4":
        from qfid.quant.awq import awq_quantize

        result = awq_quantize(hf_model, spec, calib_ids, group_size, grid=config.awq_grid,
                              clip=config.awq_clip, progress=progress)
        return result.quantized, result.artifact
    from qfid.quant.fp8 import fp8_quantize_model

    static_ids = calib_ids if config.fp8_activations == "static" else None
    return fp8_quantize_model(hf_model, spec, config.fp8_weights == "channel", static_ids), {}


def _reloaded_perplexity(output_dir: Path, ids: torch.Tensor) -> float:
    """Perplexity of the checkpoint as written: proves the saved files, not the in-memory
    model, carry the quantized weights."""
    from qfid.quant.formats import load_quantized_or_dense
    from qfid.quant.metrics import perplexity

    return perplexity(load_quantized_or_dense(str(output_dir)), ids)


def _metadata(source: str, config: QuantConfig, group_size, auto: bool, calib_desc: str,
              timings: dict, artifact: dict) -> dict:
    import transformers

    return {
        "qfid_version": __version__,
        "source_model": source,
        "scheme": config.scheme,
        "format": config.format,
        "group_size": group_size,
        "group_size_auto": auto,
        "fp8_weights": config.fp8_weights if config.scheme == "fp8" else None,
        "fp8_activations": config.fp8_activations if config.scheme == "fp8" else None,
        "awq": {"grid": config.awq_grid, "clip": config.awq_clip} if config.scheme == "awq-int4" else None,
        "calibration": {"source": config.calib or "builtin", "description": calib_desc,
                        "samples": config.calib_samples, "seq_len": config.calib_seq_len, "seed": config.seed},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "artifact": artifact,
    }


def quantized_tensor_bytes(output_dir: Path, quantized: dict) -> int:
    """Bytes the quantized layers occupy in the written safetensors (packed weights, scales,
    zeros): the figure compared against 2 bytes per fp16 weight."""
    from safetensors import safe_open

    prefixes = tuple(f"{name}." for name in quantized)
    total = 0
    for path in sorted(output_dir.glob("*.safetensors")):
        if path.name.startswith("qfid_"):
            continue
        with safe_open(path, "pt") as f:
            for key in f.keys():
                if key.startswith(prefixes):
                    t = f.get_slice(key)
                    total += _numel(t.get_shape()) * _dtype_bytes(t.get_dtype())
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dtype_bytes(name: str) -> int:
    return {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}.get(name, 1)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
