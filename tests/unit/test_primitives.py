"""The pure-torch reference quantizers against independent formulas."""
from __future__ import annotations

import pytest
import torch

from qfid.layouts.primitives import (
    FP8_E4M3_MAX,
    default_group_size,
    fp8_dequantize,
    fp8_fake_quantize_activation,
    fp8_quantize,
    int4_dequantize,
    int4_fake_quantize,
    int4_quantize,
)


def autoawq_pseudo_quantize(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """AutoAWQ's pseudo_quantize_tensor (zero point, 4 bits), transcribed independently."""
    shape = w.shape
    w = w.reshape(-1, group_size)
    max_val, min_val = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
    scales = (max_val - min_val).clamp(min=1e-5) / 15
    zeros = (-torch.round(min_val / scales)).clamp_(0, 15)
    return ((torch.clamp(torch.round(w / scales) + zeros, 0, 15) - zeros) * scales).reshape(shape)


@pytest.mark.parametrize("shape,group", [((64, 128), 128), ((96, 384), 64), ((7, 256), 32)])
def test_int4_matches_autoawq_formula(shape, group):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    torch.testing.assert_close(int4_fake_quantize(w, group), autoawq_pseudo_quantize(w, group), rtol=0, atol=1e-6)


def test_int4_codes_in_range_and_error_bounded():
    w = torch.randn(32, 256) * 3
    q = int4_quantize(w, 64)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 15
    assert int(q.zeros.max()) <= 15 and q.scales.shape == (32, 4)
    err = (int4_dequantize(q) - w).abs().reshape(32, 4, 64)
    # round-to-nearest: each weight within half a step of its grid point
    assert bool((err <= q.scales.unsqueeze(2) / 2 + 1e-6).all())


def test_int4_clip_clamps_groups():
    w = torch.randn(4, 64)
    clip = torch.full((4, 1), 0.5)
    deq = int4_dequantize(int4_quantize(w, 64, clip))
    assert float(deq.abs().max()) <= 0.5 + 0.5 / 15 * 2


def test_int4_rejects_non_dividing_group():
    with pytest.raises(ValueError, match="does not divide"):
        int4_quantize(torch.randn(4, 576), 128)


@pytest.mark.parametrize("per_channel", [True, False])
def test_fp8_roundtrip_relative_error(per_channel):
    w = torch.randn(48, 96) * torch.linspace(0.01, 10, 48).unsqueeze(1)
    f = fp8_quantize(w, per_channel)
    assert f.weight.dtype == torch.float8_e4m3fn
    assert f.scale.shape == ((48, 1) if per_channel else (1,))
    deq = fp8_dequantize(f)
    # E4M3 has 3 mantissa bits: relative error per element <= 2^-4 for normal values
    big = w.abs() > (f.scale * 2**-6)
    assert float(((deq - w).abs() / w.abs())[big].max()) <= 2**-4 + 1e-6
    assert float((w / f.scale).abs().max()) <= FP8_E4M3_MAX * (1 + 1e-6)


def test_fp8_activation_dynamic_is_per_token():
    x = torch.tensor([[1.0, 2.0, 1000.0], [0.001, 0.002, 0.003]])
    y = fp8_fake_quantize_activation(x)
    # the small row keeps its precision: it has its own scale
    assert float(((y[1] - x[1]).abs() / x[1]).max()) < 0.07


def test_default_group_size():
    assert default_group_size({4096, 14336}) == 128
    assert default_group_size({576, 1536}) == 64   # SmolLM2-135M: 576 = 64 * 9
    assert default_group_size({256, 384}) == 128
    with pytest.raises(ValueError):
        default_group_size({100})


@pytest.mark.parametrize("clipped", [False, True])
def test_fake_quantizers_equal_quantize_then_dequantize_bit_for_bit(clipped):
    """The searches score with the fake quantizers (the in-place one reuses a buffer across
    grid points); what is written is int4_quantize's. All three must be the same bits."""
    from qfid.layouts.primitives import int4_fake_quantize_

    g = torch.Generator().manual_seed(7)
    w = torch.randn(48, 256, generator=g) * torch.rand(256, generator=g) * 3
    clip = w.abs().reshape(48, 4, 64).amax(-1) * 0.8 if clipped else None
    expected = int4_quantize(w, 64, clip).dequantize()
    buffer = w.clone()
    assert int4_fake_quantize_(buffer, 64, clip) is buffer
    assert torch.equal(buffer, expected)
    assert torch.equal(int4_fake_quantize(w, 64, clip), expected)


def test_int4_dequantize_into_equals_the_whole_dequantize():
    from qfid.layouts.primitives import int4_dequantize, int4_dequantize_into, int4_quantize

    w = torch.randn(37, 128, generator=torch.Generator().manual_seed(5))
    q = int4_quantize(w, 32)
    for out_dtype in (torch.float32, torch.bfloat16):
        out = torch.empty(37, 128, dtype=out_dtype)
        assert int4_dequantize_into(q, out, rows_per_step=5) is out
        assert torch.equal(out, int4_dequantize(q).to(out_dtype))
