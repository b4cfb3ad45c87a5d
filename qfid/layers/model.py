"""The runtime forward for the Llama family (Llama, Mistral, Qwen2, SmolLM, Mixtral), over a
flat batch of tokens and a paged KV cache.

The model is *built from a loaded transformers model*: it takes that model's Linear modules
and its norm and embedding weights by the names in the architecture's `RuntimeNames`
(models/mappings.py), and owns only the forward. That is what lets a quantized checkpoint
run here unchanged: whatever module the loader put in place of an `nn.Linear` (an
`Int4Linear`, an `Fp8Linear`) is called like one. The arithmetic follows transformers'
Llama exactly (norms in fp32, RoPE tables cast to the model dtype, the same residual order)
so greedy decoding matches `generate` token for token.

Kernel choices are made once, at build time, through `kernels.dispatch`: the attention
backend (one object shared by every layer), whether norms / RoPE / SiLU-and-mul run as
fused CPU ops, which kernel each linear is bound to (layers/packed_linear.py), and whether
decode-only steps run as one captured C++ call on a CPU (layers/cpu_decode.py).
"""
from __future__ import annotations

import torch
from torch import nn

from qfid.kernels import dispatch
from qfid.layers.attention import AttentionBackend, AttentionMetadata, select_attention_backend
from qfid.layers.cpu_decode import CpuDecodeLayers
from qfid.layers.linear import ParallelLinears
from qfid.layers.norm import RMSNorm
from qfid.layers.packed_linear import bind_linears
from qfid.layers.rotary import Rotary, apply_rotary, head_dim
from qfid.models.linears import block_module, decoder_blocks
from qfid.models.mappings import ArchSpec, RuntimeNames, arch_spec


class Attention(nn.Module):
    def __init__(self, block: nn.Module, names: RuntimeNames, config, backend: AttentionBackend, cpu_ops: bool):
        super().__init__()
        self.cpu_ops = cpu_ops
        self.backend = backend
        self.qkv_proj = ParallelLinears([block_module(block, name) for name in names.qkv])
        self.o_proj = block_module(block, names.o)
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
        out = self.backend.forward(q, k, v, *kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class DenseMLP(nn.Module):
    """SwiGLU; with `cpu_ops` and gate/up in one layer, SiLU-and-multiply is one fused CPU op."""

    def __init__(self, block: nn.Module, names: RuntimeNames, cpu_ops: bool):
        super().__init__()
        self.gate_up_proj = ParallelLinears([block_module(block, name) for name in names.gate_up])
        self.down_proj = block_module(block, names.down)
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

    def __init__(self, block: nn.Module, names: RuntimeNames, config, backend: AttentionBackend, cpu_ops: bool):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_norm = RMSNorm(block_module(block, names.input_norm).weight, eps, cpu_ops)
        self.attention = Attention(block, names, config, backend, cpu_ops)
        self.post_attention_norm = RMSNorm(block_module(block, names.post_attention_norm).weight, eps, cpu_ops)
        self.mlp = _mlp_of(block, names, config, cpu_ops)

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

    def __init__(self, hf_model: nn.Module, spec: ArchSpec, attention: str | None = None):
        super().__init__()
        config = hf_model.config
        self.config = config
        self.embed_tokens = hf_model.get_input_embeddings()
        weight = self.embed_tokens.weight
        self.dtype, self.device = weight.dtype, weight.device
        intermediate = None if spec.runtime.moe else config.intermediate_size
        cpu_ops = dispatch.fused_elementwise(self.device, self.dtype, config.hidden_size, head_dim(config), intermediate)
        self.attention_backend = select_attention_backend(self.device, self.dtype, config.num_attention_heads,
                                                          config.num_key_value_heads, head_dim(config), attention)
        self.layers = nn.ModuleList(
            DecoderLayer(block, spec.runtime, config, self.attention_backend, cpu_ops)
            for block in decoder_blocks(hf_model, spec)
        )
        self.norm = RMSNorm(hf_model.get_submodule(spec.final_norm).weight, config.rms_norm_eps, cpu_ops)
        self.lm_head = hf_model.get_output_embeddings()
        self.rotary = Rotary(config, self.dtype, self.device)
        self.captured_decode: CpuDecodeLayers | None = None   # set by build_runtime_model where it applies

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim): what the KV cache must hold per token."""
        return len(self.layers), self.config.num_key_value_heads, head_dim(self.config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        rope = self.rotary.tables(positions)
        if self.captured_decode is not None and self.captured_decode.covers(meta, x.shape[0]):
            x, residual = self.captured_decode(x, rope, meta, kv_caches)
        else:
            for layer, kv_cache in zip(self.layers, kv_caches):
                x, residual = layer(x, residual, rope, meta, kv_cache)
        return self.norm.add_norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def _mlp_of(block: nn.Module, names: RuntimeNames, config, cpu_ops: bool) -> nn.Module:
    if names.moe:
        from qfid.layers.moe import SparseMoE

        return SparseMoE(block_module(block, names.moe), config)
    return DenseMLP(block, names, cpu_ops)


def build_runtime_model(hf_model: nn.Module, attention: str | None = None, eager: bool = False) -> CausalLM:
    """Our forward over the modules of a loaded transformers CausalLM (dense or quantized),
    on the device its weights are on. `attention` names an attention backend (else the
    device's default, or QFID_ATTENTION's); `eager` keeps decode steps on the Python layers
    (no captured CPU step; the engine's `enforce_eager`)."""
    architectures = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    model = CausalLM(hf_model, arch_spec(architectures[0]), attention).eval()
    bind_linears(model)
    model.captured_decode = None if eager else CpuDecodeLayers.build(model)
    return model
