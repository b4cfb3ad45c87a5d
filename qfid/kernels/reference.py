"""The torch reference backend: dequantize, then `F.linear`, on any device.

It computes exactly what `Int4Linear` / `Fp8Linear` computed before kernels existed (an
fp32 dequantization cast to the activation dtype), so forcing `QFID_KERNEL=reference`
reproduces the reference numbers. Slow but dependency-free: the last resort of dispatch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qfid.layouts.packing import unpack_awq_gemm
from qfid.layouts.primitives import fp8_fake_quantize_activation, int4_fake_quantize_


def prepare_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> dict:
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales, "group_size": group_size}


def int4_linear(x: torch.Tensor, tensors: dict, bias: torch.Tensor | None) -> torch.Tensor:
    q = unpack_awq_gemm(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["group_size"])
    w = q.dequantize(torch.float32).to(device=x.device, dtype=x.dtype)
    return F.linear(x, w, bias)


def fp8_dequantize(weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] E4M3 times a [N, 1] or [1] fp32 scale, computed in fp32."""
    return (weight.float() * weight_scale.float().reshape(-1, 1)).to(dtype)


def rounded_activations(x: torch.Tensor, input_scale: torch.Tensor | None, quantize: bool) -> torch.Tensor:
    """x as a W8A8 kernel sees it (rounded through E4M3: static scale, else per token), or
    unchanged for weight-only FP8. Backends without FP8 activations start from this."""
    return fp8_fake_quantize_activation(x, input_scale) if quantize else x


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               input_scale: torch.Tensor | None, quantize_activations: bool) -> torch.Tensor:
    x = rounded_activations(x, input_scale, quantize_activations)
    return F.linear(x, fp8_dequantize(weight, weight_scale, x.dtype), bias)


def int4_fake_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | None, col_scale: torch.Tensor | None,
                       out: torch.Tensor) -> torch.Tensor:
    """The torch passes the fused CPU kernel replaces, in the same order: w * col_scale,
    group quantize-dequantize in place (clipped), / col_scale, cast to out's dtype."""
    buf = out if out.dtype == torch.float32 else torch.empty_like(w, dtype=torch.float32)
    if col_scale is not None:
        torch.mul(w, col_scale, out=buf)
    elif buf.data_ptr() != w.data_ptr():
        buf.copy_(w)
    int4_fake_quantize_(buf, group_size, clip)
    if col_scale is not None:
        buf.div_(col_scale)
    if buf is not out:
        out.copy_(buf)
    return out
