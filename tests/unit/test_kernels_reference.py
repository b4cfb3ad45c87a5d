"""Shared cases for the kernel tests, and the torch reference backend checked against them.

Every kernel test compares with a float64 computation from the same (already rounded)
inputs. Tolerances are per output dtype, as a relative Frobenius error: fp32 outputs must
be within 1e-4 (fp32 accumulation; the issue's bar is 1e-3), fp16 outputs within 1e-3 and
bf16 outputs within 4e-3 (one rounding of the output alone costs ~2e-4 / ~1.7e-3).
"""
from __future__ import annotations

import pytest
import torch

from qfid.kernels import reference
from qfid.quant.linear import Fp8Linear, Int4Linear
from qfid.layouts.packing import pack_awq_gemm
from qfid.layouts.primitives import FP8_DTYPE, Fp8Weight, Int4Weight, fp8_quantize

TOL = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 4e-3}
DTYPES = list(TOL)

# (rows M, out N, in K, group G): odd batches; N and K multiples of G (N of 8, for AWQ) but
# not of the kernels' blocks (CPU tiles of 64 rows and 64-wide FP8 slices, Triton test
# blocks of 32, CUDA blocks of 256 outputs).
INT4_CASES = [(1, 80, 96, 32), (3, 200, 160, 32), (17, 72, 192, 64), (1, 136, 384, 128)]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of `y` (on any device) from the reference."""
    return float((y.to(ref.device, torch.float64) - ref).norm() / ref.norm())


def paged_attention_reference(q, k_cache, v_cache, block_tables, lens, scale):
    """Float64 attention per sequence over its context read through the block table, in the
    engine's cache layout [kv_heads, blocks, block_size, d], K/V heads repeated."""
    kv_heads, _, block_size, dim = k_cache.shape
    heads = q.shape[1]
    outs = []
    for b, length in enumerate(lens.tolist()):
        slots = (block_tables[b].long()[:, None] * block_size + torch.arange(block_size)).reshape(-1)[:length]
        k = k_cache.reshape(kv_heads, -1, dim)[:, slots].double().repeat_interleave(heads // kv_heads, 0)
        v = v_cache.reshape(kv_heads, -1, dim)[:, slots].double().repeat_interleave(heads // kv_heads, 0)
        p = (torch.einsum("hd,hld->hl", q[b].double(), k) * scale).softmax(-1)
        outs.append(torch.einsum("hl,hld->hd", p, v))
    return torch.stack(outs)


def random_int4(out_f: int, in_f: int, group_size: int, seed: int = 0) -> Int4Weight:
    """Random codes, zeros and fp16-exact scales, with the edge cases pinned: a row of code
    0 and a row of code 15, zero points 0 and 15 in the first and last group."""
    g = torch.Generator().manual_seed(seed)
    groups = in_f // group_size
    codes = torch.randint(0, 16, (out_f, in_f), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 16, (out_f, groups), generator=g, dtype=torch.uint8)
    codes[0], codes[1] = 0, 15
    zeros[:, 0], zeros[:, -1] = 0, 15
    scales = (torch.rand(out_f, groups, generator=g) * 0.02 + 1e-3).half().float()
    return Int4Weight(codes=codes, scales=scales, zeros=zeros, group_size=group_size)


def awq_case(m: int, n: int, k: int, group: int, dtype: torch.dtype, seed: int = 0):
    """(x, q, (qweight, qzeros, scales), bias, float64 reference output)."""
    q = random_int4(n, k, group, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g)
    ref = x.double() @ q.dequantize(torch.float64).T + bias.double()
    return x, q, pack_awq_gemm(q), bias, ref


def random_fp8(out_f: int, in_f: int, per_channel: bool, seed: int = 0) -> Fp8Weight:
    g = torch.Generator().manual_seed(seed)
    return fp8_quantize(torch.randn(out_f, in_f, generator=g), per_channel=per_channel)


def all_e4m3_codes(rows: int) -> torch.Tensor:
    """[rows, 256] E4M3 weights holding every finite code (zero, subnormals, +-448) in
    every row; the two NaN codes are replaced by zero."""
    codes = torch.arange(256, dtype=torch.uint8).repeat(rows, 1)
    codes[(codes & 0x7F) == 0x7F] = 0
    return codes.view(FP8_DTYPE)


def e4m3_decode(w: torch.Tensor) -> torch.Tensor:
    """E4M3 values from the bit fields (sign, 4-bit exponent biased by 7, 3-bit mantissa),
    written independently of torch's float8 conversion."""
    bits = w.view(torch.uint8).to(torch.int64)
    sign = 1.0 - 2.0 * (bits >> 7).double()
    exp, man = (bits >> 3) & 0xF, (bits & 7).double()
    normal = (1.0 + man / 8) * torch.pow(2.0, (exp - 7).double())
    subnormal = man / 8 * 2.0 ** -6
    return sign * torch.where(exp > 0, normal, subnormal)


@pytest.mark.parametrize("m,n,k,group", INT4_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_int4_matches_float64(m, n, k, group, dtype):
    x, _, (qw, qz, sc), bias, ref = awq_case(m, n, k, group, dtype)
    y = reference.int4_linear(x, reference.prepare_int4(qw, qz, sc, group), bias.to(dtype))
    # the reference rounds the dense weight to x's dtype, so bf16 gets a looser bound
    assert rel_err(y, ref) < TOL[dtype] * (2 if dtype == torch.bfloat16 else 1)


@pytest.mark.usefixtures("reference_kernels")
def test_reference_int4_is_int4linear_path():
    x, q, _, bias, _ = awq_case(3, 80, 96, 32, torch.float32)
    layer = Int4Linear.from_int4(q, bias)
    prepared = reference.prepare_int4(layer.qweight, layer.qzeros, layer.scales, 32)
    assert torch.equal(reference.int4_linear(x, prepared, layer.bias), layer(x))


@pytest.mark.usefixtures("reference_kernels")
@pytest.mark.parametrize("quantize,static", [(False, False), (True, False), (True, True)])
def test_reference_fp8_is_fp8linear_path(quantize, static):
    f = random_fp8(48, 64, per_channel=True)
    x = torch.randn(5, 64)
    if static:
        f.input_scale = (x.abs().amax() / 448).reshape(1)
    layer = Fp8Linear.from_fp8(f, quantize_activations=quantize)
    y = reference.fp8_linear(x, f.weight, f.scale, None, f.input_scale, quantize)
    assert torch.equal(y, layer(x))
    if quantize:  # the rounding is really applied
        assert not torch.equal(y, reference.fp8_linear(x, f.weight, f.scale, None, None, False))


@pytest.mark.parametrize("per_channel", [True, False])
def test_reference_fp8_dequantize_exact(per_channel):
    f = random_fp8(16, 256, per_channel)
    w = all_e4m3_codes(16)
    expected = e4m3_decode(w).float() * f.scale.float().reshape(-1, 1)  # one fp32 rounding
    assert torch.equal(reference.fp8_dequantize(w, f.scale, torch.float32), expected)
