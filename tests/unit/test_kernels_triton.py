"""The Triton kernels against float64: compiled on the GPU where torch sees CUDA, else
under TRITON_INTERPRET=1 on CPU tensors (how CI proves them without a GPU).

The interpreter runs each program in numpy, so shapes stay small; the interpreter's own
launch table (kernels/triton/configs.py) uses 16/32-wide blocks so these shapes still
cover several programs, partial blocks and the split-K path. On a GPU the same shapes run
with the Hopper/Ampere tables (one program per layer, mostly): what they prove there is
that the compiled code computes what the interpreter does, in every dtype; bench/
kernels_gpu.py checks the model-sized layers. Skipped without triton.
"""
from __future__ import annotations

import os

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before triton is imported anywhere
# (the jit decorator reads it); set by hand it keeps the interpreter on a GPU machine too.
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

pytest.importorskip("triton")

from qfid.kernels import dispatch, reference, triton_ops  # noqa: E402
from qfid.layouts.packing import pack_ct_int4  # noqa: E402
from tests.unit import test_kernels_reference as cases  # noqa: E402

# Hopper's FP8 MMA for tiles of 64+ rows (wgmma) adds products in reduced precision: 1.05e-4
# relative error at K=96 and ~1.3e-4 from K=1024 to 14336 on an H100, flat in K (see
# kernels/triton/fp8.py); the interpreter and mma.sync tiles accumulate in fp32.
FP8_MMA_TOL = 3e-4 if ON_GPU else cases.TOL[torch.float32]


def on_device(*tensors):
    """The tensors on the device the kernels run on (None stays None)."""
    return tuple(None if t is None else t.to(DEVICE) for t in tensors)


@pytest.mark.parametrize("n,k,group", [(80, 96, 32), (72, 192, 64)])
def test_awq_dequantize_exact(n, k, group):
    _, q, (qw, qz, sc), _, _ = cases.awq_case(1, n, k, group, torch.float32)
    w = triton_ops.awq_dequantize(*on_device(qw, qz, sc), group, torch.float32)
    assert torch.equal(w.cpu(), q.dequantize(torch.float32))


@pytest.mark.parametrize("n,k,group", [(80, 96, 32), (77, 192, 64)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ct_dequantize_exact(n, k, group, symmetric):
    q = cases.random_int4(n, k, group)
    t = pack_ct_int4(q)
    if symmetric:  # no zero point stored: code 8 is zero
        q.zeros.fill_(8)
        t.pop("weight_zero_point")
    w = triton_ops.ct_dequantize(*on_device(t["weight_packed"], t.get("weight_zero_point"), t["weight_scale"]),
                                 group, (n, k), torch.float32)
    assert torch.equal(w.cpu(), q.dequantize(torch.float32))


@pytest.mark.parametrize("m,n,k,group", cases.INT4_CASES)
@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_w4a16_gemm_matches_float64(m, n, k, group, dtype):
    x, _, (qw, qz, sc), bias, ref = cases.awq_case(m, n, k, group, dtype, seed=m)
    y = triton_ops.w4a16_gemm(*on_device(x, qw, qz, sc), group, *on_device(bias.to(dtype)))
    assert y.dtype == dtype and y.shape == (m, n)
    assert cases.rel_err(y, ref) < cases.TOL[dtype]


@pytest.mark.parametrize("per_channel", [True, False])
def test_fp8_dequantize_every_code(per_channel):
    w = cases.all_e4m3_codes(8)
    scale = torch.rand(8, 1) + 0.5 if per_channel else torch.rand(1) + 0.5
    out = triton_ops.fp8_dequantize(*on_device(w, scale), torch.float32)
    assert torch.equal(out.cpu(), cases.e4m3_decode(w).float() * scale)


@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_fp8_gemm_weight_only(m, per_channel, dtype):
    f = cases.random_fp8(72, 100, per_channel, seed=m)   # K = 100: a partial K block
    x, bias = torch.randn(m, 100).to(dtype), torch.randn(72)
    y = triton_ops.fp8_gemm(*on_device(x, f.weight, f.scale, bias.to(dtype)))
    ref = x.double() @ f.dequantize(torch.float64).T + bias.double()
    assert y.dtype == dtype and cases.rel_err(y, ref) < cases.TOL[dtype]


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("k", [96, 4096])   # a long K: an error that grew with K would show
def test_fp8_gemm_with_fp8_activations(static, k):
    f = cases.random_fp8(80, k, per_channel=True)
    x = torch.randn(17, k)
    input_scale = (x.abs().amax() / 448).reshape(1) if static else None
    xq, x_scale = triton_ops.quantize_rows_fp8(*on_device(x, input_scale))
    y = triton_ops.fp8_gemm(xq, *on_device(f.weight, f.scale), None, x_scale, out_dtype=torch.float32)
    ref = (xq.cpu().double() * x_scale.cpu().double()[:, None]) @ f.dequantize(torch.float64).T
    assert cases.rel_err(y, ref) < FP8_MMA_TOL


@pytest.mark.parametrize("heads,kv_heads,dim", [(6, 2, 24), (4, 4, 32), (8, 1, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("blocks_per_split", [None, 1, 3])
def test_paged_attention_decode(heads, kv_heads, dim, dtype, blocks_per_split):
    """One split, and the KV length cut into splits of 1 and 3 blocks (a sequence shorter
    than some splits, a split ending mid-sequence) reduced by the second kernel."""
    g = torch.Generator().manual_seed(heads)
    blocks, block_size = 12, 16
    lens = torch.tensor([1, 17, 40, 64], dtype=torch.int32)   # one slot, a block edge + 1, partial, full
    tables = torch.stack([torch.randperm(blocks, generator=g)[:4] for _ in lens]).int()
    q = torch.randn(4, heads, dim, generator=g).to(dtype)
    k_cache = torch.randn(blocks, block_size, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(blocks, block_size, kv_heads, dim, generator=g).to(dtype)
    out = triton_ops.paged_attention_decode(*on_device(q, k_cache, v_cache, tables, lens), dim ** -0.5,
                                            blocks_per_split)
    assert out.dtype == dtype
    engine_layout = k_cache.permute(2, 0, 1, 3), v_cache.permute(2, 0, 1, 3)   # [kv_heads, blocks, block_size, d]
    ref = cases.paged_attention_reference(q, *engine_layout, tables, lens, dim ** -0.5)
    assert cases.rel_err(out, ref) < cases.TOL[dtype]


def test_paged_attention_decode_reads_the_engine_layout():
    """The engine's [kv_heads, blocks, block_size, d] cache through a permuted view (no copy)."""
    g = torch.Generator().manual_seed(5)
    kv_heads, heads, dim, blocks, block_size = 2, 4, 16, 6, 8
    engine_k = torch.randn(kv_heads, blocks, block_size, dim, generator=g)
    engine_v = torch.randn(kv_heads, blocks, block_size, dim, generator=g)
    tables = torch.tensor([[3, 1, 5], [0, 2, 4]])
    lens = torch.tensor([20, 9])
    q = torch.randn(2, heads, dim, generator=g)
    k, v = on_device(engine_k, engine_v)
    out = triton_ops.paged_attention_decode(*on_device(q), k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3),
                                            *on_device(tables, lens), 0.25, 1)
    ref = cases.paged_attention_reference(q, engine_k, engine_v, tables, lens, 0.25)
    assert cases.rel_err(out, ref) < cases.TOL[torch.float32]


def test_dispatch_forced_to_triton(monkeypatch):
    monkeypatch.setenv("QFID_KERNEL", "triton")
    x, _, (qw, qz, sc), bias, ref = cases.awq_case(3, 80, 96, 32, torch.float16)
    qw, qz, sc = on_device(qw, qz, sc)
    prepared = dispatch.prepare_int4(qw, qz, sc, 32)
    assert prepared.backend == "triton"
    y = dispatch.int4_linear(*on_device(x), qw, qz, sc, 32, *on_device(bias.half()), prepacked=prepared)
    assert cases.rel_err(y, ref) < cases.TOL[torch.float16]
    f = cases.random_fp8(72, 96, per_channel=False)
    weight, scale = on_device(f.weight, f.scale)
    y8 = dispatch.fp8_linear(*on_device(x), weight, scale, quantize_activations=False)
    assert cases.rel_err(y8, x.double() @ f.dequantize(torch.float64).T) < cases.TOL[torch.float16]
    xf = x.float()  # W8A8: E4M3 activations on the FP8 MMA (emulated on CPU), per-token scales
    w8a8 = reference.fp8_linear(xf, f.weight, f.scale, None, None, True)
    y8a8 = dispatch.fp8_linear(*on_device(xf), weight, scale)
    assert cases.rel_err(y8a8, w8a8.double()) < cases.TOL[torch.float32]
