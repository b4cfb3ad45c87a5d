"""Load what the engine serves: a transformers model on the engine's device (dense, or with
qfid's quantized Linear modules for a quantized checkpoint), its tokenizer, and the token
ids that end generation."""
from __future__ import annotations

from pathlib import Path

import torch

from qfid.models.placement import resolve_dtype
from qfid.models.loading import load_dense_model, quantization_method, read_config, resolve_model_dir


def set_num_threads(count: int) -> None:
    torch.set_num_threads(count)


def load_model_and_tokenizer(model_path_or_name: str | Path, dtype: str, device: torch.device | str = "cpu"):
    """(transformers model in eval mode on `device`, tokenizer, model folder); `dtype` is a
    name from models/placement.py (`auto` resolved against the checkpoint and the device)."""
    model_dir = resolve_model_dir(str(model_path_or_name))
    config = read_config(model_dir)
    torch_dtype = resolve_dtype(dtype, config, device)
    if quantization_method(config) is None:
        model, tokenizer = load_dense_model(model_dir, dtype=torch_dtype, device=device)
        return model, tokenizer, model_dir
    from qfid.quant.formats import load_quantized_or_dense, load_tokenizer

    model = load_quantized_or_dense(model_dir, dtype=torch_dtype, device=device)
    return model, load_tokenizer(model_dir), model_dir


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """EOS ids from the generation config (what `generate` stops at) and the tokenizer."""
    ids = set()
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return frozenset(ids)
