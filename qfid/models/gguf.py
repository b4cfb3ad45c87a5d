"""GGUF -> plain safetensors folder, through transformers' own GGUF reader.

transformers dequantizes GGUF tensors into a model it then refuses to `save_pretrained`
(it still carries a `gguf` quantization_config), so the weights are moved into a fresh
model built from the cleaned config and that one is saved.
"""
from __future__ import annotations

from pathlib import Path

from qfid.errors import QfidError
from qfid.utils.fs import atomic_output_dir


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_path.is_file():
        raise QfidError(f"GGUF file not found: {gguf_path}")
    folder, name = str(gguf_path.parent), gguf_path.name
    print(f"converting {name} to safetensors (once) -> {target}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    with atomic_output_dir(target, overwrite=True) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target
