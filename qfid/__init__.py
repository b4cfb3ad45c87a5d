"""qfid: quantize LLMs and prove, on your own domain, that the quantized model still works.

Heavy modules (torch, transformers) are imported lazily so `qfid --help` stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "quantize", "LLM", "SamplingParams"]


def load(path_or_name: str, **kwargs):
    """Load any checkpoint qfid wrote (or an AutoAWQ / compressed-tensors one) as a CausalLM.

    Reads compressed-tensors W4A16 checkpoints as they are; transformers 5.25 with
    compressed-tensors 0.20.1 needs `CompressedTensorsConfig(dequantize=True)` for them (its
    default load refuses packed zero points, the library's own checkpoints included)."""
    from qfid.quant.formats import load_quantized_or_dense

    return load_quantized_or_dense(path_or_name, **kwargs)


def quantize(model: str, config, output_dir: str):
    """Quantize `model` (path, hub id or default-model name) with a QuantConfig into `output_dir`."""
    from qfid.quant.pipeline import quantize_model

    return quantize_model(model, config, output_dir)


def __getattr__(name: str):
    """`from qfid import LLM, SamplingParams` without importing torch for `qfid --help`."""
    if name == "LLM":
        from qfid.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from qfid.engine.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'qfid' has no attribute {name!r}")
