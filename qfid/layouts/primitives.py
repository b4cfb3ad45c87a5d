"""Pure-torch reference quantizers: the ground truth every scheme, packer and kernel is
checked against.

Conventions: weights are nn.Linear layout `[out_features, in_features]`; INT4 groups run
along the input dimension (`group_size` consecutive input columns share a scale and zero).
INT4 is asymmetric with a zero point, exactly as AutoAWQ's `pseudo_quantize_tensor`:
`s = (max - min) / 15`, `z = clamp(round(-min / s), 0, 15)`, `q = clamp(round(w / s) + z, 0, 15)`,
`w' = (q - z) * s`. FP8 is E4M3 (`torch.float8_e4m3fn`, max 448) with a per-tensor or
per-output-channel scale `amax / 448`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_MAX = 15
FP8_E4M3_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
_MIN_SCALE = 1e-5


@dataclass
class Int4Weight:
    """A group-quantized INT4 weight, unpacked: what every layout packs and unpacks.

    codes  uint8  [out, in]       values 0..15
    scales fp32   [out, in / G]
    zeros  uint8  [out, in / G]   values 0..15
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return int4_dequantize(self, dtype)


@dataclass
class Fp8Weight:
    """An FP8 E4M3 weight: `weight` float8 [out, in]; `scale` fp32 [out, 1] (per channel) or
    [1] (per tensor); `input_scale` fp32 [1] when activations are static, else None."""

    weight: torch.Tensor
    scale: torch.Tensor
    input_scale: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def per_channel(self) -> bool:
        return self.scale.numel() > 1

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return fp8_dequantize(self, dtype)


def _check_groups(w: torch.Tensor, group_size: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if w.shape[1] % group_size:
        raise ValueError(f"group size {group_size} does not divide input width {w.shape[1]}")


def _scales_zeros(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale and zero point [out, in/G, 1] of grouped fp32 weights [out, in/G, G]."""
    w_max = g.amax(dim=2, keepdim=True)
    w_min = g.amin(dim=2, keepdim=True)
    scales = ((w_max - w_min).clamp(min=_MIN_SCALE) / INT4_MAX)
    zeros = torch.clamp(torch.round(-w_min / scales), 0, INT4_MAX)
    return scales, zeros


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    _check_groups(w, group_size)
    out_f, in_f = w.shape
    return w.reshape(out_f, in_f // group_size, group_size)


def _int4_groups(w: torch.Tensor, group_size: int, clip: torch.Tensor | None):
    """(scales, zeros, codes) per group [out, in/G, 1 or G], fp32: the arithmetic shared by
    int4_quantize and the fake quantizers, so they all agree bit for bit."""
    g = _grouped(w.detach().float(), group_size)
    if clip is not None:
        c = clip.float().reshape(g.shape[0], g.shape[1], 1)
        g = torch.clamp(g, -c, c)
    scales, zeros = _scales_zeros(g)
    codes = torch.clamp(torch.round(g / scales) + zeros, 0, INT4_MAX)
    return scales, zeros, codes


def int4_fake_quantize_(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """`int4_fake_quantize` in place on an fp32 tensor, with no temporary of w's size: the
    AWQ searches call it 20 times per candidate weight, and on an 8B's 14336x4096 layers
    each fresh 235 MB temporary cost a trip through mmap and page faults (40% of the search
    was system time). Same operations in the same order, so the same bits."""
    g = _grouped(w, group_size)
    if clip is not None:
        c = clip.float().reshape(g.shape[0], g.shape[1], 1)
        torch.clamp(g, -c, c, out=g)
    scales, zeros = _scales_zeros(g)
    g.div_(scales).round_().add_(zeros).clamp_(0, INT4_MAX).sub_(zeros).mul_(scales)
    return w


def int4_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> Int4Weight:
    """Asymmetric group INT4. `clip` [out, in/G] optionally clamps each group to
    [-clip, clip] first (the result of AWQ's clip search)."""
    out_f, in_f = w.shape
    scales, zeros, codes = _int4_groups(w, group_size, clip)
    return Int4Weight(
        codes=codes.reshape(out_f, in_f).to(torch.uint8),
        scales=scales.squeeze(2),
        zeros=zeros.squeeze(2).to(torch.uint8),
        group_size=group_size,
    )


def int4_dequantize(q: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out_f, in_f = q.codes.shape
    n_groups = in_f // q.group_size
    codes = q.codes.reshape(out_f, n_groups, q.group_size).float()
    w = (codes - q.zeros.float().unsqueeze(2)) * q.scales.float().unsqueeze(2)
    return w.reshape(out_f, in_f).to(dtype)


def int4_dequantize_into(q: Int4Weight, out: torch.Tensor, rows_per_step: int = 1024) -> torch.Tensor:
    """`int4_dequantize(q)` written into `out` [out, in] (any float dtype) `rows_per_step`
    rows at a time: the same values (every step is row-wise), with temporaries of a few
    rows instead of several of the weight's size (1 GB per 8B block, page-faulted afresh)."""
    for start in range(0, q.codes.shape[0], rows_per_step):
        part = Int4Weight(q.codes[start:start + rows_per_step], q.scales[start:start + rows_per_step],
                          q.zeros[start:start + rows_per_step], q.group_size)
        out[start:start + rows_per_step].copy_(int4_dequantize(part))
    return out


def int4_fake_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize then dequantize, in w's dtype: what the search loops score. Equal bit for bit
    to `int4_quantize(...).dequantize()`, without the uint8 round trip (half the cost in
    AWQ's inner loops)."""
    return int4_fake_quantize_(w.detach().float().clone(), group_size, clip).to(w.dtype)


def fp8_quantize(w: torch.Tensor, per_channel: bool = True) -> Fp8Weight:
    """E4M3 with scale = amax / 448 per output row (per_channel) or over the whole tensor."""
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1, keepdim=True) if per_channel else wf.abs().amax().reshape(1)
    scale = (amax / FP8_E4M3_MAX).clamp(min=1e-12)
    q = torch.clamp(wf / scale, -FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)
    return Fp8Weight(weight=q, scale=scale)


def fp8_dequantize(f: Fp8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (f.weight.float() * f.scale.float()).to(dtype)


def fp8_fake_quantize_activation(x: torch.Tensor, input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Round activations through E4M3: per token (dynamic) when `input_scale` is None, else
    with the static per-tensor scale from calibration."""
    xf = x.float()
    if input_scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_E4M3_MAX).clamp(min=1e-12)
    else:
        scale = input_scale.float()
    q = torch.clamp(xf / scale, -FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)
    return (q.float() * scale).to(x.dtype)


def default_group_size(widths: list[int] | set[int], preferred: int = 128) -> int:
    """128 where it divides every quantized input width, else the largest power of two that
    does (SmolLM2's hidden width 576 = 64 * 9 gives 64)."""
    g = preferred
    while g > 1 and any(w % g for w in widths):
        g //= 2
    if g < 8:
        raise ValueError(f"no power-of-two group size >= 8 divides the widths {sorted(widths)}")
    return g
