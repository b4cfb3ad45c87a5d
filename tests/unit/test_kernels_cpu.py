"""The CPU backend: qfid's AVX-512 BF16 kernels and torch's int4 fallback against float64.

The own-kernel tests skip where the kernels cannot be built (no AVX-512 BF16/VBMI, no
compiler); the tile-layout and torch-fallback tests run everywhere.
"""
from __future__ import annotations

import pytest
import torch

from qfid.kernels import cpu
from qfid.kernels.cpu_build import load_cpu_ops, missing_requirements
from qfid.kernels.cpu_layout import TILE_ROWS, pack_int4_tiles, pack_int4_torch, tile_group_bytes
from qfid.quant.packing import pack_awq_gemm
from tests.unit import test_kernels_reference as cases

@pytest.fixture(scope="module")
def built():
    """Builds the kernels on first use (tens of seconds, once per machine) or skips."""
    if missing_requirements() or not load_cpu_ops():
        pytest.skip(f"qfid CPU kernels unavailable here: {missing_requirements() or 'build failed'}")


needs_kernels = pytest.mark.usefixtures("built")


def decode_tiles(packed: torch.Tensor, out_f: int, in_f: int, group: int) -> tuple[torch.Tensor, ...]:
    """Codes, scales and zeros read back from the tile layout by its documented rule."""
    codes = torch.zeros(packed.shape[0] * TILE_ROWS, in_f, dtype=torch.uint8)
    scales = torch.zeros(packed.shape[0] * TILE_ROWS, in_f // group)
    zeros = torch.zeros_like(scales, dtype=torch.uint8)
    for t in range(packed.shape[0]):
        for g in range(in_f // group):
            rec = packed[t, g]
            nib = rec[: group * 32].view(group // 4, 4, 32)          # chunk, sub-block, byte
            for j in range(32):
                rows = t * TILE_ROWS + torch.arange(4) * 16 + j // 2
                for c in range(group // 4):
                    k = g * group + 4 * c + j % 2
                    codes[rows, k] = nib[c, :, j] & 0xF
                    codes[rows, k + 2] = nib[c, :, j] >> 4
            rows = slice(t * TILE_ROWS, (t + 1) * TILE_ROWS)
            scales[rows, g] = rec[group * 32: group * 32 + 128].view(torch.float16).float()
            zeros[rows, g] = rec[group * 32 + 128:]
    return codes[:out_f], scales[:out_f], zeros[:out_f]


def test_tile_layout_round_trips():
    q = cases.random_int4(72, 64, 32)
    packed = pack_int4_tiles(q.codes, q.scales, q.zeros, 32)
    assert packed.shape == (2, 2, tile_group_bytes(32))
    codes, scales, zeros = decode_tiles(packed, 72, 64, 32)
    assert torch.equal(codes, q.codes) and torch.equal(zeros, q.zeros) and torch.equal(scales, q.scales)


@pytest.mark.parametrize("m,n,k,group", cases.INT4_CASES)
def test_torch_int4pack_zero_point_mapping(m, n, k, group):
    """torch computes (q - 8) * s + offset; offset = (8 - z) * s reproduces AWQ's (q - z) * s."""
    x, q, _, bias, ref = cases.awq_case(m, n, k, group, torch.float32)
    packed, scale_and_offset = pack_int4_torch(q.codes, q.scales, q.zeros, group, torch.float32)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scale_and_offset)[:, :n] + bias
    assert cases.rel_err(y, ref) < cases.TOL[torch.float32]


def test_torch_fallback_path(monkeypatch):
    """Without qfid's kernels the backend repacks for torch's op and still matches."""
    monkeypatch.setattr(cpu, "load_cpu_ops", lambda: False)
    x, _, (qw, qz, sc), bias, ref = cases.awq_case(3, 200, 160, 32, torch.bfloat16)
    prepared = cpu.prepare_int4(qw, qz, sc, 32)
    assert prepared["kind"] == "torch"
    # torch keeps scale and offset in bf16 here, which costs more than the output rounding
    assert cases.rel_err(cpu.int4_linear(x, prepared, bias.bfloat16()), ref) < 2e-2


@needs_kernels
def test_scales_fp16_cannot_hold_go_to_torch():
    x, q, _, bias, _ = cases.awq_case(3, 80, 96, 32, torch.float32)
    q.scales[0, 0] = 1e-6   # an fp16 subnormal: not exact
    qw, qz, sc = pack_awq_gemm(q, scale_dtype=torch.float32)
    prepared = cpu.prepare_int4(qw, qz, sc, 32)
    assert prepared["kind"] == "torch"
    ref = x.double() @ q.dequantize(torch.float64).T + bias.double()
    assert cases.rel_err(cpu.int4_linear(x, prepared, bias), ref) < cases.TOL[torch.float32]


@needs_kernels
@pytest.mark.parametrize("m,n,k,group", cases.INT4_CASES + [(64, 136, 256, 128), (5, 64, 64, 64)])
@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_int4_kernel_matches_float64(m, n, k, group, dtype):
    x, _, (qw, qz, sc), bias, ref = cases.awq_case(m, n, k, group, dtype, seed=m + n)
    prepared = cpu.prepare_int4(qw, qz, sc, group)
    assert prepared["kind"] == "qfid"
    y = cpu.int4_linear(x, prepared, bias.to(dtype))
    assert y.dtype == dtype and y.shape == (m, n)
    assert cases.rel_err(y, ref) < cases.TOL[dtype]


@needs_kernels
def test_int4_kernel_keeps_leading_dims_and_no_bias():
    x, q, (qw, qz, sc), _, _ = cases.awq_case(6, 80, 96, 32, torch.float32)
    y = cpu.int4_linear(x.view(2, 3, 96), cpu.prepare_int4(qw, qz, sc, 32), None)
    assert y.shape == (2, 3, 80)
    assert cases.rel_err(y.view(6, 80), x.double() @ q.dequantize(torch.float64).T) < cases.TOL[torch.float32]


@needs_kernels
@pytest.mark.parametrize("m", [1, 3, 6, 17])
@pytest.mark.parametrize("n,k", [(72, 100), (130, 192)])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_fp8_kernel_matches_float64(m, n, k, per_channel, dtype):
    f = cases.random_fp8(n, k, per_channel, seed=m)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n)
    y = cpu.fp8_linear(x, f.weight, f.scale, bias.to(dtype), None, quantize_activations=False)
    ref = x.double() @ f.dequantize(torch.float64).T + bias.double()
    assert y.dtype == dtype and cases.rel_err(y, ref) < cases.TOL[dtype]


@needs_kernels
@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("batch", [8, 256])   # the streamed path, the dequantize + GEMM path
def test_fp8_kernel_decodes_every_code_exactly(rows, batch):
    """x = identity picks out each weight: zero, subnormals and +-448 must come back exact."""
    w = cases.all_e4m3_codes(rows)
    scale = torch.rand(rows, 1) + 0.5
    eye = torch.eye(256)
    y = torch.cat([cpu.fp8_linear(eye[i: i + batch], w, scale, None, None, quantize_activations=False)
                   for i in range(0, 256, batch)])
    assert torch.equal(y.T, cases.e4m3_decode(w).float() * scale)


@needs_kernels
@pytest.mark.parametrize("batch", [4, 300])   # the streamed path and the threaded dequantize + GEMM path
@pytest.mark.parametrize("mode", ["inference", "grad"])
def test_kernels_run_under_inference_mode_and_grad_mode(batch, mode):
    """Models run under torch.inference_mode() (evals) or with grad on (a plain forward on
    parameters that require grad): the kernels' worker threads inherit neither mode and must
    work in both; the ops are inference-only."""
    f = cases.random_fp8(192, 256, True, seed=batch)
    q = cases.random_int4(192, 256, 64, seed=batch)
    prepared = cpu.prepare_int4(*pack_awq_gemm(q), 64)
    context = torch.inference_mode() if mode == "inference" else torch.enable_grad()
    with context:
        x = torch.randn(batch, 256, requires_grad=mode == "grad")
        y = cpu.fp8_linear(x, f.weight, f.scale, None, None, quantize_activations=False)
        y4 = cpu.int4_linear(x, prepared, None)
    ref_x = x.detach().double()
    assert cases.rel_err(y.detach(), ref_x @ f.dequantize(torch.float64).T) < cases.TOL[torch.float32]
    assert cases.rel_err(y4.detach(), ref_x @ q.dequantize(torch.float64).T) < cases.TOL[torch.float32]


@needs_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 32), (8, 1, 16), (6, 2, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seqs", [1, 3, 17])
def test_paged_decode_attention(heads, kv_heads, dim, dtype, seqs):
    """Lengths 1, a block edge + 1, partial blocks and full tables, over shuffled blocks."""
    g = torch.Generator().manual_seed(seqs * heads + dim)
    blocks, block_size, width = 40, 16, 4
    lens = torch.tensor([[1, 17, 40, 64, 3][i % 5] for i in range(seqs)])
    tables = torch.stack([torch.randperm(blocks, generator=g)[:width] for _ in range(seqs)]).int()
    q = torch.randn(seqs, heads, dim, generator=g).to(dtype)
    k_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=g).to(dtype)
    v_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=g).to(dtype)
    out = cpu.paged_decode_attention(q, k_cache, v_cache, tables, lens, dim ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape
    ref = cases.paged_attention_reference(q, k_cache, v_cache, tables, lens, dim ** -0.5)
    assert cases.rel_err(out, ref) < cases.TOL[dtype]
    assert torch.equal(out, cpu.paged_decode_attention(q, k_cache, v_cache, tables.long(), lens, dim ** -0.5))


@needs_kernels
def test_paged_decode_attention_rejects_a_length_past_its_table():
    q, cache = torch.randn(1, 2, 16), torch.randn(2, 4, 16, 16)
    with pytest.raises(RuntimeError, match="context lengths"):
        cpu.paged_decode_attention(q, cache, cache, torch.zeros(1, 1, dtype=torch.int32), torch.tensor([17]), 0.25)


@needs_kernels
def test_paged_decode_attention_with_peaked_scores():
    """Scores spanning hundreds of nats: the vectorised exp underflows to 0 where expf does."""
    g = torch.Generator().manual_seed(7)
    q = 40 * torch.randn(5, 4, 32, generator=g)
    k_cache, v_cache = torch.randn(2, 12, 16, 32, generator=g), torch.randn(2, 12, 16, 32, generator=g)
    tables = torch.stack([torch.randperm(12, generator=g)[:4] for _ in range(5)]).int()
    lens = torch.tensor([1, 16, 33, 50, 64])
    out = cpu.paged_decode_attention(q, k_cache, v_cache, tables, lens, 32 ** -0.5)
    assert cases.rel_err(out, cases.paged_attention_reference(q, k_cache, v_cache, tables, lens, 32 ** -0.5)) < cases.TOL[torch.float32]
