"""Load what the engine serves: a transformers model (dense, or with qfid's quantized Linear
modules for a quantized checkpoint), its tokenizer, and the token ids that end generation."""
from __future__ import annotations

from pathlib import Path

import torch

from qfid.models.loading import load_dense_model, quantization_method, read_config, resolve_model_dir


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def set_num_threads(count: int) -> None:
    torch.set_num_threads(count)


def load_model_and_tokenizer(model_path_or_name: str | Path, dtype: str):
    """(transformers model in eval mode, tokenizer, model folder)."""
    model_dir = resolve_model_dir(str(model_path_or_name))
    if quantization_method(read_config(model_dir)) is None:
        model, tokenizer = load_dense_model(model_dir, dtype=torch_dtype(dtype))
        return model, tokenizer, model_dir
    from qfid.quant.formats import load_quantized_or_dense, load_tokenizer

    model = load_quantized_or_dense(model_dir, dtype=torch_dtype(dtype))
    return model, load_tokenizer(model_dir), model_dir


def release_freed_memory() -> None:
    """Hand memory freed while building the runtime model back to the OS.

    Building replaces the loaded weights with fused or packed copies; glibc keeps the freed
    originals (hundreds of MB for a 135M model, as its mmap threshold rises after large
    frees) in its heap, where they would count in the server's RSS for its whole life.
    `malloc_trim` returns them. A no-op where glibc is absent."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc_name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(libc_name).malloc_trim if libc_name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """EOS ids from the generation config (what `generate` stops at) and the tokenizer."""
    ids = set()
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return frozenset(ids)
