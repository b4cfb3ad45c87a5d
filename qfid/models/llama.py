"""The runtime forward for the Llama family (Llama, Mistral, Qwen2, SmolLM), over a flat
batch of tokens and a paged KV cache.

The model is *built from a loaded transformers model*: it takes that model's Linear modules
(q/k/v/o, gate/up/down, lm_head) and its norm and embedding weights by name, and owns only
the forward. That is what lets a quantized checkpoint run here unchanged: whatever module
the loader put in place of an `nn.Linear` (an `Int4Linear`, an `Fp8Linear`) is called like
one. The arithmetic follows transformers' Llama exactly (norms in fp32, RoPE tables cast to
the model dtype, the same residual order) so greedy decoding matches `generate` token for
token.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from qfid.engine.attention import AttentionMetadata, paged_attention
from qfid.errors import QfidError
from qfid.models.linears import block_module, decoder_blocks
from qfid.models.mappings import ArchSpec, arch_spec


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = weight
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(config) -> torch.Tensor:
    """Inverse frequencies from `config.rope_parameters` (transformers 5) or the older
    `rope_theta` / `rope_scaling` attributes; 'default' and 'llama3' scaling."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    dim = int(head_dim(config) * params.get("partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "llama3":
        return _llama3_scaled(inv_freq, params)
    raise QfidError(f"RoPE scaling {kind!r} is not supported by the qfid runtime (default and llama3 are)")


def _llama3_scaled(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between."""
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(medium, smoothed, scaled)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class Rotary(nn.Module):
    """cos/sin tables for every position, computed once in fp32 as transformers does and
    cast to the model dtype; `forward` rotates the two halves of each head."""

    def __init__(self, config, dtype: torch.dtype):
        super().__init__()
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * rope_inv_freq(config)[None, :]
        self.cos = freqs.cos().to(dtype)
        self.sin = freqs.sin().to(dtype)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, 1, d/2] cos and sin for these positions, shared by every layer."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


class ParallelLinears(nn.Module):
    """Linear layers reading the same input (q/k/v; gate/up), concatenated into one layer
    where their kind allows (plain `nn.Linear`s; `Int4Linear`s / `Fp8Linear`s of one format,
    see their `concatenated`): a CPU runs one matmul markedly faster than three small ones,
    and each output column is the same dot product. Otherwise each is called as is."""

    def __init__(self, linears: list[nn.Module]):
        super().__init__()
        self.sizes = [linear.out_features for linear in linears]
        self.fused = _concatenated(linears)
        self.parts = None if self.fused is not None else nn.ModuleList(linears)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.fused is not None:
            return self.fused(x).split(self.sizes, dim=-1)
        return tuple(linear(x) for linear in self.parts)


def _concatenated(linears: list[nn.Module]) -> nn.Module | None:
    kind = type(linears[0])
    if not all(type(linear) is kind for linear in linears):
        return None
    if hasattr(kind, "concatenated"):
        return kind.concatenated(linears)
    if kind is not nn.Linear:
        return None
    biases = [linear.bias for linear in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    weight = linears[0].weight
    fused = nn.Linear(weight.shape[1], sum(l.out_features for l in linears), bias=biases[0] is not None,
                      dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([linear.weight for linear in linears]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat(biases))
    return fused.requires_grad_(False)


class Attention(nn.Module):
    def __init__(self, hf_attention: nn.Module, config):
        super().__init__()
        self.qkv_proj = ParallelLinears([hf_attention.q_proj, hf_attention.k_proj, hf_attention.v_proj])
        self.o_proj = hf_attention.o_proj
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = head_dim(config)
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x)
        q = apply_rotary(q.view(tokens, self.num_heads, self.head_dim), *rope)
        k = apply_rotary(k.view(tokens, self.num_kv_heads, self.head_dim), *rope)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, *kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class DenseMLP(nn.Module):
    def __init__(self, hf_mlp: nn.Module):
        super().__init__()
        self.gate_up_proj = ParallelLinears([hf_mlp.gate_proj, hf_mlp.up_proj])
        self.down_proj = hf_mlp.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)
        return self.down_proj(nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, hf_layer: nn.Module, config, mlp: nn.Module):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_norm = RMSNorm(hf_layer.input_layernorm.weight, eps)
        self.attention = Attention(hf_layer.self_attn, config)
        self.post_attention_norm = RMSNorm(hf_layer.post_attention_layernorm.weight, eps)
        self.mlp = mlp

    def forward(self, x, rope, meta, kv_cache):
        x = x + self.attention(self.input_norm(x), rope, meta, kv_cache)
        return x + self.mlp(self.post_attention_norm(x))


class CausalLM(nn.Module):
    """Flat-batch forward: `forward` returns final hidden states [T, hidden];
    `compute_logits` applies the head only to the rows the runner needs."""

    def __init__(self, hf_model: nn.Module, spec: ArchSpec):
        super().__init__()
        config = hf_model.config
        self.config = config
        self.dtype = hf_model.get_input_embeddings().weight.dtype
        self.embed_tokens = hf_model.get_input_embeddings()
        self.layers = nn.ModuleList(
            DecoderLayer(layer, config, _mlp_of(layer, config, spec)) for layer in decoder_blocks(hf_model, spec)
        )
        self.norm = RMSNorm(hf_model.model.norm.weight, config.rms_norm_eps)
        self.lm_head = hf_model.get_output_embeddings()
        self.rotary = Rotary(config, self.dtype)

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim): what the KV cache must hold per token."""
        return len(self.layers), self.config.num_key_value_heads, head_dim(self.config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        rope = self.rotary.tables(positions)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, rope, meta, kv_cache)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def _mlp_of(layer: nn.Module, config, spec: ArchSpec) -> nn.Module:
    if spec.moe:
        from qfid.models.moe import SparseMoE

        return SparseMoE(block_module(layer, "block_sparse_moe"), config)
    return DenseMLP(layer.mlp)


def build_runtime_model(hf_model: nn.Module) -> CausalLM:
    """Our forward over the modules of a loaded transformers CausalLM (dense or quantized)."""
    architectures = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    return CausalLM(hf_model, arch_spec(architectures[0])).eval()
