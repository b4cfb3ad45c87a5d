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
from qfid.models.packed_linear import pack_dense_linears


class RMSNorm(nn.Module):
    """transformers' LlamaRMSNorm; `cpu_ops` runs it as one fused CPU op (kernels/cpu/elementwise.cpp,
    same rounding steps), and `add_norm` folds in the residual add before it."""

    def __init__(self, weight: torch.Tensor, eps: float, cpu_ops: bool = False):
        super().__init__()
        self.weight = weight
        self.eps = eps
        self.cpu_ops = cpu_ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_ops:
            return torch.ops.qfid_cpu.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x); the fused op updates `residual` in place."""
        if self.cpu_ops:
            return torch.ops.qfid_cpu.add_rms_norm_(x, residual, self.weight, self.eps), residual
        residual = residual + x
        return self(residual), residual


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
        """[T, d/2] cos and sin for these positions, shared by every layer."""
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cpu_ops: bool) -> torch.Tensor:
    """Rotate-half RoPE of x [T, heads, d]; `cpu_ops` rotates in place in one fused CPU op."""
    if cpu_ops:
        return torch.ops.qfid_cpu.rotary_(x, cos, sin)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
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
    def __init__(self, hf_attention: nn.Module, config, cpu_ops: bool):
        super().__init__()
        self.cpu_ops = cpu_ops
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
        q = apply_rotary(q.view(tokens, self.num_heads, self.head_dim), *rope, self.cpu_ops)
        k = apply_rotary(k.view(tokens, self.num_kv_heads, self.head_dim), *rope, self.cpu_ops)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, *kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class DenseMLP(nn.Module):
    """SwiGLU; with `cpu_ops` and gate/up in one layer, SiLU-and-multiply is one fused CPU op."""

    def __init__(self, hf_mlp: nn.Module, cpu_ops: bool):
        super().__init__()
        self.gate_up_proj = ParallelLinears([hf_mlp.gate_proj, hf_mlp.up_proj])
        self.down_proj = hf_mlp.down_proj
        self.cpu_ops = cpu_ops and self.gate_up_proj.fused is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_ops:
            return self.down_proj(torch.ops.qfid_cpu.silu_and_mul(self.gate_up_proj.fused(x)))
        gate, up = self.gate_up_proj(x)
        return self.down_proj(nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block in the residual-stream form: takes (this block's input delta, the
    running residual) and returns the same for the next block, so each residual add is
    fused into the norm that follows it. The arithmetic (and rounding) is transformers'
    `x = x + attn(norm(x)); x = x + mlp(norm(x))`."""

    def __init__(self, hf_layer: nn.Module, config, mlp: nn.Module, cpu_ops: bool):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_norm = RMSNorm(hf_layer.input_layernorm.weight, eps, cpu_ops)
        self.attention = Attention(hf_layer.self_attn, config, cpu_ops)
        self.post_attention_norm = RMSNorm(hf_layer.post_attention_layernorm.weight, eps, cpu_ops)
        self.mlp = mlp

    def forward(self, x, residual, rope, meta, kv_cache):
        if residual is None:
            residual, h = x, self.input_norm(x)
        else:
            h, residual = self.input_norm.add_norm(x, residual)
        h, residual = self.post_attention_norm.add_norm(self.attention(h, rope, meta, kv_cache), residual)
        return self.mlp(h), residual


class CausalLM(nn.Module):
    """Flat-batch forward: `forward` returns final hidden states [T, hidden];
    `compute_logits` applies the head only to the rows the runner needs."""

    def __init__(self, hf_model: nn.Module, spec: ArchSpec):
        super().__init__()
        config = hf_model.config
        self.config = config
        self.dtype = hf_model.get_input_embeddings().weight.dtype
        self.embed_tokens = hf_model.get_input_embeddings()
        cpu_ops = _cpu_ops_supported(config, self.embed_tokens.weight, spec)
        self.layers = nn.ModuleList(
            DecoderLayer(layer, config, _mlp_of(layer, config, spec, cpu_ops), cpu_ops)
            for layer in decoder_blocks(hf_model, spec)
        )
        self.norm = RMSNorm(hf_model.model.norm.weight, config.rms_norm_eps, cpu_ops)
        self.lm_head = hf_model.get_output_embeddings()
        self.rotary = Rotary(config, self.dtype)

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim): what the KV cache must hold per token."""
        return len(self.layers), self.config.num_key_value_heads, head_dim(self.config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        rope = self.rotary.tables(positions)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, rope, meta, kv_cache)
        return self.norm.add_norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def _mlp_of(layer: nn.Module, config, spec: ArchSpec, cpu_ops: bool) -> nn.Module:
    if spec.moe:
        from qfid.models.moe import SparseMoE

        return SparseMoE(block_module(layer, "block_sparse_moe"), config)
    return DenseMLP(layer.mlp, cpu_ops)


def _cpu_ops_supported(config, embedding: torch.Tensor, spec: ArchSpec) -> bool:
    """Whether this model's norms, RoPE and SwiGLU run as qfid's fused CPU ops: on a CPU
    with the kernels built (not under QFID_KERNEL=reference) and widths they handle."""
    from qfid.kernels.cpu import elementwise_supported

    intermediate = None if spec.moe else config.intermediate_size
    return elementwise_supported(embedding.device, embedding.dtype, config.hidden_size, head_dim(config), intermediate)


def build_runtime_model(hf_model: nn.Module) -> CausalLM:
    """Our forward over the modules of a loaded transformers CausalLM (dense or quantized)."""
    architectures = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    model = CausalLM(hf_model, arch_spec(architectures[0])).eval()
    pack_dense_linears(model)
    return model
