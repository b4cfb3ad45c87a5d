"""Int4Linear / Fp8Linear: the reference path computes F.linear with exactly the weights the
primitives dequantize, and FP8 rounds activations the way the serving kernel would."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qfid.quant.linear import Fp8Linear, Int4Linear
from qfid.layouts.packing import as_stored
from qfid.layouts.primitives import fp8_fake_quantize_activation, fp8_quantize, int4_quantize

pytestmark = pytest.mark.usefixtures("reference_kernels")  # exact decoding: the torch reference path


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(96, 128, generator=g), torch.randn(96, generator=g), torch.randn(2, 5, 128, generator=g)


def test_int4_linear_matches_primitive_dequant():
    w, bias, x = _inputs()
    q = int4_quantize(w, 32)
    layer = Int4Linear.from_int4(q, bias)
    expected_w = as_stored(q).dequantize()
    assert torch.equal(layer.dequantize(), expected_w)
    assert torch.equal(layer(x), F.linear(x, expected_w, bias))
    assert set(layer.state_dict()) == {"qweight", "qzeros", "scales", "bias"}
    assert (layer.in_features, layer.out_features, layer.group_size) == (128, 96, 32)


def test_int4_linear_keeps_fp32_scales_when_asked():
    w, _, x = _inputs(1)
    q = int4_quantize(w, 64)
    layer = Int4Linear.from_int4(q, scale_dtype=torch.float32)
    assert layer.scales.dtype == torch.float32
    assert torch.equal(layer.dequantize(), q.dequantize())
    assert layer.bias is None and torch.equal(layer(x), F.linear(x, q.dequantize()))


def test_fp8_linear_dynamic_rounds_each_token():
    w, bias, x = _inputs(2)
    f = fp8_quantize(w, per_channel=True)
    layer = Fp8Linear.from_fp8(f, bias)
    expected = F.linear(fp8_fake_quantize_activation(x), f.dequantize(), bias)
    assert torch.equal(layer(x), expected)
    assert not torch.equal(layer(x), F.linear(x, f.dequantize(), bias))


def test_fp8_linear_static_and_weight_only():
    w, _, x = _inputs(3)
    f = fp8_quantize(w, per_channel=False)
    f.input_scale = torch.tensor([0.01])
    static = Fp8Linear.from_fp8(f)
    assert torch.equal(static(x), F.linear(fp8_fake_quantize_activation(x, f.input_scale), f.dequantize()))
    weight_only = Fp8Linear.from_fp8(f, quantize_activations=False)
    assert torch.equal(weight_only(x), F.linear(x, f.dequantize()))
    assert set(static.state_dict()) == {"weight", "weight_scale", "input_scale"}


def test_concatenated_int4_layers_decode_to_the_stacked_weights():
    """q/k/v fusion: the concatenated layer's weights are the parts' weights stacked, bit
    for bit, and it refuses parts it cannot hold in one GEMM layout."""
    parts = [Int4Linear.from_int4(int4_quantize(_inputs(seed)[0][:rows], 32), _inputs(seed)[1][:rows])
             for seed, rows in ((0, 96), (1, 32), (2, 64))]
    fused = Int4Linear.concatenated(parts)
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
    assert torch.equal(fused.bias, torch.cat([p.bias for p in parts]))
    x = _inputs()[2]
    assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))
    other_group = Int4Linear.from_int4(int4_quantize(_inputs(3)[0], 64), _inputs(3)[1])
    assert Int4Linear.concatenated([parts[0], other_group]) is None
    unbiased = Int4Linear.from_int4(int4_quantize(_inputs(4)[0], 32))
    assert Int4Linear.concatenated([parts[0], unbiased]) is None


def test_concatenated_fp8_layers_need_per_channel_scales():
    w, bias, x = _inputs()
    per_channel = [Fp8Linear.from_fp8(fp8_quantize(w[i:i + 32], per_channel=True), bias[i:i + 32]) for i in (0, 32, 64)]
    fused = Fp8Linear.concatenated(per_channel)
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in per_channel]))
    assert torch.equal(fused(x), torch.cat([p(x) for p in per_channel], dim=-1))
    per_tensor = Fp8Linear.from_fp8(fp8_quantize(w[:32], per_channel=False), bias[:32])
    assert Fp8Linear.concatenated([per_channel[0], per_tensor]) is None
