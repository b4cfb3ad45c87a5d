"""The CPU runtime's captured decode step: all decoder layers of a decode-only step in one
C++ call (`qfid_cpu::decode_layers`, kernels/cpu/decode_layers.cpp).

Why: at batch 1 the Python between the kernels (module calls, op dispatch: about ten op
calls and seven module calls per layer) cost as much as the kernels themselves. The C++
loop runs the qfid_cpu ops' own arithmetic (the functions each op calls after its checks)
on the same arguments in the same order as `DecoderLayer.forward`, so its hidden states are
bit for bit the eager ones (tests/tiny/test_cpu_decode.py); it is to a CPU what a CUDA
graph replay is to a GPU.

It covers the common fast path only and says so at build time (`CpuDecodeLayers.build`
returns None otherwise): qfid's CPU attention backend and fused elementwise ops, dense
SwiGLU MLPs, fused q/k/v and gate/up, and every linear an INT4 weight on qfid's kernel, an
FP8 one (activations rounded through E4M3 by qfid's op where the scheme quantizes them) or
a packed bf16 one (layers may mix them: a sweep keeps sensitive layers in FP8 or bf16).
Steps with prefill rows run the Python layers.
"""
from __future__ import annotations

import torch
from torch import nn

from qfid.layers.attention import AttentionMetadata
from qfid.layers.packed_linear import BoundLinear, PackedBf16Linear

INT4, BF16, FP8 = 0, 1, 2   # the op's linear kinds


def _linear_entry(linear: nn.Module) -> tuple | None:
    """(weight, bias, [weight_scale, input_scale], [kind, detail, out_features]) for the op,
    or None if it cannot run it."""
    if isinstance(linear, PackedBf16Linear):
        return linear.packed, linear.bias, [None, None], [BF16, 0, linear.out_features]
    from qfid.kernels.cpu import Fp8Gemm, Int4Gemm

    gemm = linear.run if isinstance(linear, BoundLinear) else None
    if isinstance(gemm, Int4Gemm):
        return gemm.tiles, gemm.bias, [None, None], [INT4, gemm.group_size, gemm.out_features]
    if isinstance(gemm, Fp8Gemm):
        scales = [gemm.weight_scale, gemm.input_scale]
        return gemm.weight, gemm.bias, scales, [FP8, int(gemm.quantize_activations), linear.out_features]
    return None


def _layer_entries(layer: nn.Module) -> list | None:
    attention, mlp = layer.attention, layer.mlp
    dense_fused_mlp = getattr(mlp, "cpu_ops", False)   # DenseMLP with gate/up fused (MoE has none)
    if not (attention.cpu_ops and layer.input_norm.cpu_ops and dense_fused_mlp):
        return None
    if attention.qkv_proj.fused is None:
        return None
    linears = [attention.qkv_proj.fused, attention.o_proj, mlp.gate_up_proj.fused, mlp.down_proj]
    entries = [_linear_entry(linear) for linear in linears]
    return None if any(e is None for e in entries) else entries


class CpuDecodeLayers:
    """The op's arguments that do not change between steps (weights, biases, layout),
    gathered once from the runtime model's layers."""

    def __init__(self, model: nn.Module, entries: list[list]):
        first = model.layers[0]
        self.weights, self.biases, self.scales = [], [], []
        self.config = [first.attention.num_heads, first.attention.num_kv_heads, first.attention.head_dim]
        for layer, linears in zip(model.layers, entries):
            self.weights += [layer.input_norm.weight, layer.post_attention_norm.weight]
            self.weights += [weight for weight, _, _, _ in linears]
            self.biases += [bias for _, bias, _, _ in linears]
            self.scales += [scale for _, _, scales, _ in linears for scale in scales]
            self.config += [value for _, _, _, config in linears for value in config]
        self.scale = first.attention.scale
        self.eps = first.input_norm.eps
        self.op = torch.ops.qfid_cpu.decode_layers.default
        self._caches: tuple[list, list[torch.Tensor]] | None = None

    @classmethod
    def build(cls, model: nn.Module) -> "CpuDecodeLayers | None":
        """The captured step for this runtime model, or None where it does not cover it."""
        if getattr(model.attention_backend, "name", None) != "cpu" or not len(model.layers):
            return None
        entries = [_layer_entries(layer) for layer in model.layers]
        if any(e is None for e in entries):
            return None
        return cls(model, entries)

    @staticmethod
    def covers(meta: AttentionMetadata, tokens: int) -> bool:
        """A step of decode rows only, laid out as block tables (what the CPU backend builds)."""
        return meta.num_decode_tokens == tokens and meta.decode_tables is not None

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last layer's output, residual) for the final norm, as the Python layers return them."""
        return self.op(x, None, self.weights, self.biases, self.scales, self.config, self._flat(kv_caches), *rope,
                       meta.slot_mapping, meta.decode_tables, meta.decode_lens, self.scale, self.eps)

    def _flat(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """The caches as one list, rebuilt only when the runner hands over other caches."""
        if self._caches is None or self._caches[0] is not kv_caches:
            self._caches = (kv_caches, [cache for pair in kv_caches for cache in pair])
        return self._caches[1]
