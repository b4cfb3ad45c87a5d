"""Quantized drop-in replacements for nn.Linear, holding exactly what a checkpoint holds.

`Int4Linear` keeps the AutoAWQ GEMM tensors (`qweight`, `qzeros`, `scales`) as buffers, so
its state dict uses the checkpoint's names and a fast kernel can read the buffers as they
are. `Fp8Linear` keeps the float8 weight and its scales. `_matmul(x)` is the single seam
where `qfid.kernels` routes to the fastest kernel for the device (CUDA -> Triton -> CPU ->
the torch reference: dequantize, then `F.linear`); `QFID_KERNEL=reference` forces the
reference, which `dequantize()` always is.
"""
from __future__ import annotations

import torch
from torch import nn

from qfid.layouts.packing import SCALE_DTYPE, pack_awq_gemm, unpack_awq_gemm
from qfid.layouts.primitives import Fp8Weight, Int4Weight, fp8_dequantize


class _QuantizedLinear(nn.Module):
    """What both layers share: checkpoint tensors as buffers (under their checkpoint
    names), an optional float bias, and `forward` going through the subclass's `_matmul`."""

    def __init__(self, in_features: int, out_features: int, buffers: dict[str, torch.Tensor | None],
                 bias: torch.Tensor | None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x)


class Int4Linear(_QuantizedLinear):
    """Group-wise asymmetric INT4 weights in AutoAWQ GEMM layout."""

    def __init__(self, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None = None):
        buffers = {"qweight": qweight, "qzeros": qzeros, "scales": scales}
        super().__init__(qweight.shape[0], scales.shape[1], buffers, bias)
        self.group_size = group_size
        self._prepared = None   # the kernel's repacked copy, made on first use; never saved

    @classmethod
    def from_int4(cls, q: Int4Weight, bias: torch.Tensor | None = None,
                  scale_dtype: torch.dtype = SCALE_DTYPE) -> "Int4Linear":
        """`scale_dtype` is fp16 for AutoAWQ; a compressed-tensors checkpoint repacked in
        memory keeps its own scale dtype so it decodes to the same weights."""
        return cls(*pack_awq_gemm(q, scale_dtype), group_size=q.group_size, bias=bias)

    @classmethod
    def concatenated(cls, parts: list["Int4Linear"]) -> "Int4Linear | None":
        """One layer computing `parts` side by side (q/k/v, gate/up), or None when they
        cannot share one: the GEMM layout packs 8 output columns per int32, so outputs that
        are multiples of 8 concatenate exactly along the packed axis."""
        first = parts[0]
        same = all(p.group_size == first.group_size and p.scales.dtype == first.scales.dtype
                   and p.in_features == first.in_features and p.out_features % 8 == 0 for p in parts)
        biases = [p.bias for p in parts]
        if not same or (any(b is None for b in biases) and not all(b is None for b in biases)):
            return None
        return cls(torch.cat([p.qweight for p in parts], 1), torch.cat([p.qzeros for p in parts], 1),
                   torch.cat([p.scales for p in parts], 1), first.group_size,
                   None if biases[0] is None else torch.cat(biases))

    def int4_weight(self) -> Int4Weight:
        return unpack_awq_gemm(self.qweight, self.qzeros, self.scales, self.group_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense `[out, in]` weight, computed in fp32 (exact for fp16/fp32 scales) then cast."""
        return self.int4_weight().dequantize(dtype)

    def bind_kernel(self):
        """`x -> self(x)` with the kernel chosen and the weight repacked once (the runtime's swap)."""
        from qfid.kernels.dispatch import bind_int4

        return bind_int4(self.qweight, self.qzeros, self.scales, self.group_size, _data(self.bias))

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        from qfid.kernels import int4_linear, prepare_int4

        self._prepared = prepare_int4(self.qweight, self.qzeros, self.scales, self.group_size, reuse=self._prepared)
        return int4_linear(x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias, prepacked=self._prepared)

    def _load_from_state_dict(self, *args, **kwargs):
        self._prepared = None   # new buffers: the repacked copy is stale
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


class Fp8Linear(_QuantizedLinear):
    """FP8 E4M3 weights with a per-channel `[out, 1]` or per-tensor `[1]` scale. Activations
    are rounded through E4M3 as the serving kernel would: with the static `input_scale`
    when one was calibrated, else per token at run time; `quantize_activations=False`
    gives weight-only FP8 (W8A16 checkpoints from other tools)."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, quantize_activations: bool = True):
        buffers = {"weight": weight, "weight_scale": weight_scale, "input_scale": input_scale}
        super().__init__(weight.shape[1], weight.shape[0], buffers, bias)
        self.quantize_activations = quantize_activations

    @classmethod
    def from_fp8(cls, f: Fp8Weight, bias: torch.Tensor | None = None, quantize_activations: bool = True) -> "Fp8Linear":
        return cls(f.weight, f.scale, f.input_scale, bias, quantize_activations)

    @classmethod
    def concatenated(cls, parts: list["Fp8Linear"]) -> "Fp8Linear | None":
        """One layer computing `parts` side by side, when their weights have per-channel
        scales and their activations are rounded alike (same static scale, or per token)."""
        first = parts[0]
        if not all(p.weight_scale.numel() == p.out_features and p.quantize_activations == first.quantize_activations
                   and _same_optional(p.input_scale, first.input_scale) for p in parts):
            return None
        biases = [p.bias for p in parts]
        if any(b is None for b in biases) and not all(b is None for b in biases):
            return None
        return cls(torch.cat([p.weight for p in parts]), torch.cat([p.weight_scale.reshape(-1, 1) for p in parts]),
                   first.input_scale, None if biases[0] is None else torch.cat(biases), first.quantize_activations)

    def fp8_weight(self) -> Fp8Weight:
        return Fp8Weight(self.weight, self.weight_scale, self.input_scale)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return fp8_dequantize(self.fp8_weight(), dtype)

    def bind_kernel(self):
        """`x -> self(x)` with the kernel chosen once (the runtime's swap)."""
        from qfid.kernels.dispatch import bind_fp8

        return bind_fp8(self.weight, self.weight_scale, _data(self.bias), self.input_scale, self.quantize_activations)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        from qfid.kernels import fp8_linear

        return fp8_linear(x, self.weight, self.weight_scale, self.bias, self.input_scale, self.quantize_activations)

    def extra_repr(self) -> str:
        scale = "channel" if self.weight_scale.numel() > 1 else "tensor"
        acts = "static" if self.input_scale is not None else "dynamic" if self.quantize_activations else "none"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_scale={scale}, activations={acts}, bias={self.bias is not None}")


def _data(bias: nn.Parameter | None) -> torch.Tensor | None:
    return None if bias is None else bias.data


def _same_optional(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
