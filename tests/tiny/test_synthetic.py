"""The synthetic Llama writer (`qfid.testing.synthetic`) at tiny widths: transformers loads
what it writes with every weight present in the planned shapes and dtype, a sharded write
has an index covering every tensor, and tied embeddings leave out `lm_head`. (Its memory
use is a benchmark's business: bench/quantize_scale.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from qfid.testing.synthetic import llama_tensor_specs, write_synthetic_llama
from qfid.utils.safetensors_stream import INDEX_FILE

TINY = dict(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=640)


def _load(path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return model


def test_written_folder_loads_with_the_planned_shapes_and_dtype(tmp_path):
    path = write_synthetic_llama(tmp_path / "m", **TINY)
    model = _load(path)
    params = dict(model.named_parameters())
    for spec in llama_tensor_specs(**TINY, dtype=torch.bfloat16, tie_embeddings=False):
        assert tuple(params[spec.name].shape) == spec.shape
        assert params[spec.name].dtype == torch.bfloat16
    assert model.config.architectures == ["LlamaForCausalLM"] and model.config.max_position_embeddings == 8192
    embed = params["model.embed_tokens.weight"].float()
    assert 0.015 < embed.std().item() < 0.025  # random N(0, 0.02), not an init default
    norm = params["model.layers.0.input_layernorm.weight"].float()
    assert torch.allclose(norm, torch.ones_like(norm), atol=0.1) and not torch.equal(norm, torch.ones_like(norm))


def test_same_seed_writes_the_same_bytes(tmp_path):
    first = write_synthetic_llama(tmp_path / "a", **TINY, seed=3) / "model.safetensors"
    again = write_synthetic_llama(tmp_path / "b", **TINY, seed=3) / "model.safetensors"
    other = write_synthetic_llama(tmp_path / "c", **TINY, seed=4) / "model.safetensors"
    assert first.read_bytes() == again.read_bytes() != other.read_bytes()


def test_sharded_write_has_several_shards_and_an_index_covering_every_tensor(tmp_path):
    path = write_synthetic_llama(tmp_path / "m", **TINY, max_shard_bytes=40_000)
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    index = json.loads((path / INDEX_FILE).read_text())
    names = {s.name for s in llama_tensor_specs(**TINY, dtype=torch.bfloat16, tie_embeddings=False)}
    assert len(shards) > 2 and not (path / "model.safetensors").exists()
    assert set(index["weight_map"]) == names and set(index["weight_map"].values()) == set(shards)
    _load(path)


def test_tied_embeddings_write_no_lm_head(tmp_path):
    path = write_synthetic_llama(tmp_path / "m", **TINY, tie_embeddings=True)
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    model = _load(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_vocab_smaller_than_the_tokenizer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab"):
        write_synthetic_llama(tmp_path / "m", **{**TINY, "vocab": 100})
