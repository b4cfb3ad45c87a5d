"""Random-weight Llama checkpoints in real shapes (e.g. Llama-3-8B's), for benchmarks at scale.

`qfid quantize` at scale is measured on checkpoints of the sizes users run without
downloading them: the weights are random, the tensor names, shapes, dtype, sharding and
config are a hub Llama's. They are written tensor by tensor with the streaming shard
writer, so writing a 16 GB checkpoint takes about one tensor of memory (the embedding,
1 GB in bf16 at a 128k vocabulary), not the model. Deterministic given the seed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qfid.utils.safetensors_stream import ShardedWriter, TensorSpec

WEIGHT_STD = 0.02   # the usual init scale of a Llama's matrices
NORM_NOISE = 0.01   # norms are ones plus this much noise, so channels are not all alike


def llama_tensor_specs(*, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
                       vocab: int, dtype: torch.dtype, tie_embeddings: bool) -> list[TensorSpec]:
    """Every tensor of a Llama checkpoint, in the hub's order and names."""
    kv = hidden // heads * kv_heads
    specs = [TensorSpec("model.embed_tokens.weight", (vocab, hidden), dtype)]
    for i in range(layers):
        p = f"model.layers.{i}"
        specs += [
            TensorSpec(f"{p}.input_layernorm.weight", (hidden,), dtype),
            TensorSpec(f"{p}.self_attn.q_proj.weight", (hidden, hidden), dtype),
            TensorSpec(f"{p}.self_attn.k_proj.weight", (kv, hidden), dtype),
            TensorSpec(f"{p}.self_attn.v_proj.weight", (kv, hidden), dtype),
            TensorSpec(f"{p}.self_attn.o_proj.weight", (hidden, hidden), dtype),
            TensorSpec(f"{p}.post_attention_layernorm.weight", (hidden,), dtype),
            TensorSpec(f"{p}.mlp.gate_proj.weight", (intermediate, hidden), dtype),
            TensorSpec(f"{p}.mlp.up_proj.weight", (intermediate, hidden), dtype),
            TensorSpec(f"{p}.mlp.down_proj.weight", (hidden, intermediate), dtype),
        ]
    specs.append(TensorSpec("model.norm.weight", (hidden,), dtype))
    if not tie_embeddings:
        specs.append(TensorSpec("lm_head.weight", (vocab, hidden), dtype))
    return specs


def random_tensor(spec: TensorSpec, generator: torch.Generator) -> torch.Tensor:
    """Normal(0, 0.02) for matrices, 1 + small noise for norm vectors; drawn straight in the
    stored dtype so no fp32 copy of a large tensor ever exists."""
    values = torch.randn(spec.shape, dtype=spec.dtype, generator=generator)
    if len(spec.shape) == 1:
        return values.mul_(NORM_NOISE).add_(1.0)
    return values.mul_(WEIGHT_STD)


def write_synthetic_llama(path, *, layers: int, hidden: int = 4096, intermediate: int = 14336, heads: int = 32,
                          kv_heads: int = 8, vocab: int = 128256, dtype: torch.dtype = torch.bfloat16,
                          max_shard_bytes: int = 5 * 10**9, seed: int = 0, tie_embeddings: bool = False) -> Path:
    """Write a loadable Llama folder (weights, index when sharded, config.json, tokenizer)
    with random weights; returns the folder. Defaults are Llama-3-8B's widths."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _write_tokenizer(path)
    _write_config(path, tokenizer, layers=layers, hidden=hidden, intermediate=intermediate, heads=heads,
                  kv_heads=kv_heads, vocab=vocab, dtype=dtype, tie_embeddings=tie_embeddings)
    specs = llama_tensor_specs(layers=layers, hidden=hidden, intermediate=intermediate, heads=heads,
                               kv_heads=kv_heads, vocab=vocab, dtype=dtype, tie_embeddings=tie_embeddings)
    generator = torch.Generator().manual_seed(seed)
    writer = ShardedWriter(path, specs, max_shard_bytes)
    for spec in specs:
        writer.write(spec.name, random_tensor(spec, generator))
    writer.close()
    return path


def _write_tokenizer(path: Path):
    """qfid's tiny test tokenizer: its ids are < 600, valid for any realistic vocab, and
    calibration only needs token ids, not meaningful ones."""
    from qfid.testing.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)
    return tokenizer


def _write_config(path: Path, tokenizer, *, layers: int, hidden: int, intermediate: int, heads: int,
                  kv_heads: int, vocab: int, dtype: torch.dtype, tie_embeddings: bool) -> None:
    """Llama-3's config (rope theta 500k, 8k positions) at the given widths."""
    from transformers import LlamaConfig

    if len(tokenizer) > vocab:
        raise ValueError(f"vocab {vocab} is smaller than the tokenizer's {len(tokenizer)} ids")
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tie_embeddings, dtype=str(dtype).removeprefix("torch."),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(path)
