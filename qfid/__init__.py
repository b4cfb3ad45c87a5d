"""qfid: quantize LLMs and prove, on your own domain, that the quantized model still works.

Heavy modules (torch, transformers) are imported lazily so `qfid --help` stays fast.

Layering: imports go down only. A module imports its own package and the layers below it,
never a package beside it or above it, at module level or inside a function. Top to bottom
(tests/unit/test_layering.py reads this block; its exceptions, each with its reason, are
listed there):

    testing: tiny random checkpoints for tests and benchmarks; nothing in qfid imports it
    qfid: this facade (load, quantize, LLM); any module may read qfid.__version__
    cli: one module per command (parse, call the library, render)
    demo: the bundled walk-through that `qfid demo` runs (a sweep with defaults)
    sweep: quantize several schemes, evaluate, compare, gate, recommend (`qfid sweep`)
    bench: the benchmark harness `qfid bench` and bench/*.py share (workloads, HF engines, traces)
    evals: suites, backends, runs, compare, gate, reports
    engine: the paged continuous-batching runtime
    quant, layers: quantizers, checkpoint formats and quantized modules; the runtime's layers
        (attention backends, norms, RoPE, MLPs, MoE, the Llama-family forward)
    kernels: dispatch and the CPU / Triton / CUDA backends
    models, layouts: checkpoint loading and mappings; reference quantizers and packed INT4 layouts
    config: validated configuration dataclasses
    utils: file and safetensors helpers
    paths: where qfid keeps caches and kernel sources
    errors: QfidError
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
