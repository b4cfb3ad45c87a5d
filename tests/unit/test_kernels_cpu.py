"""The CPU backend: qfid's AVX-512 BF16 kernels and torch's int4 fallback against float64.

The own-kernel tests skip where the kernels cannot be built (no AVX-512 BF16/VBMI, no
compiler); the tile-layout and torch-fallback tests run everywhere.
"""
from __future__ import annotations

import pytest
import torch

from qfid.kernels import cpu
from qfid.kernels.cpu_build import load_cpu_ops, missing_requirements
from qfid.kernels.cpu_layout import TILE_ROWS, pack_bf16_tiles, pack_int4_tiles, pack_int4_torch, tile_group_bytes
from qfid.layouts.packing import pack_awq_gemm
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


def test_bf16_tile_layout_round_trips():
    """Tile t, pair p, lane r of the packed weight is (w[64t + r, 2p], w[64t + r, 2p + 1])."""
    w = torch.randn(70, 10).bfloat16()
    packed = pack_bf16_tiles(w)
    assert packed.shape == (2, 5, 2 * TILE_ROWS)
    back = packed.view(2, 5, TILE_ROWS, 2).permute(0, 2, 1, 3).reshape(2 * TILE_ROWS, 10)
    assert torch.equal(back[:70], w) and not back[70:].any()


@needs_kernels
@pytest.mark.parametrize("m", [1, 2, 3, 6, 7, 17, 64, 300])
@pytest.mark.parametrize("n,k", [(72, 100), (130, 192), (64, 2), (576, 1536)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_kernel_matches_float64(m, n, k, with_bias):
    """bf16 products are exact in fp32 and summed in fp32: the only visible error is the
    final rounding to bf16 (relative 2^-8 of the largest output)."""
    gen = torch.Generator().manual_seed(m * n + k)
    w = torch.randn(n, k, generator=gen).bfloat16()
    x = torch.randn(m, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen) if with_bias else None
    y = cpu.bf16_linear(x, cpu.pack_bf16(w), bias, n)
    ref = x.double() @ w.double().T + (0 if bias is None else bias.double())
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert cases.rel_err(y, ref) < 2 ** -8


@needs_kernels
def test_bf16_kernel_keeps_leading_dims_and_rejects_other_dtypes():
    w = torch.randn(80, 96).bfloat16()
    x = torch.randn(2, 3, 96).bfloat16()
    y = cpu.bf16_linear(x, cpu.pack_bf16(w), None, 80)
    assert y.shape == (2, 3, 80)
    assert cases.rel_err(y.view(6, 80), x.view(6, 96).double() @ w.double().T) < 2 ** -8
    with pytest.raises(RuntimeError, match="bf16 activations"):
        cpu.bf16_linear(x.float(), cpu.pack_bf16(w), None, 80)


@needs_kernels
@pytest.mark.parametrize("m", [1, 3, 6, 12, 17])   # streamed up to 8 rows, tiles / dequantize + GEMM beyond
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
@pytest.mark.parametrize("batch", [8, 16, 256])   # the streamed path, then dequantize + GEMM / tiles
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_kernel_decodes_every_code_exactly(rows, batch, dtype):
    """x = identity picks out each weight: zero, subnormals and +-448 must come back exact
    (times the scale, rounded once to the activation dtype)."""
    w = cases.all_e4m3_codes(rows)
    scale = torch.rand(rows, 1) + 0.5
    eye = torch.eye(256, dtype=dtype)
    y = torch.cat([cpu.fp8_linear(eye[i: i + batch], w, scale, None, None, quantize_activations=False)
                   for i in range(0, 256, batch)])
    assert torch.equal(y.T, (cases.e4m3_decode(w).float() * scale).to(dtype))


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
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 32), (8, 1, 80), (6, 2, 128)])
@pytest.mark.parametrize("starts,lens", [([0], [1]), ([0, 0], [150, 17]), ([40, 0, 5], [100, 64, 1]), ([63], [65])])
def test_paged_prefill_attention(heads, kv_heads, dim, starts, lens):
    """Chunks with and without cached context, more rows than one 64-query block, single
    rows, over shuffled blocks: each row is a decode query whose context ends at its own
    position, so the float64 decode reference checks it."""
    g = torch.Generator().manual_seed(sum(lens) + dim)
    blocks, block_size = 64, 16
    width = max(-(-(s + n) // block_size) for s, n in zip(starts, lens))
    tables = torch.stack([torch.randperm(blocks, generator=g)[:width] for _ in lens])
    q = torch.randn(sum(lens), heads, dim, generator=g).bfloat16()
    k_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=g).bfloat16()
    v_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=g).bfloat16()
    out = cpu.paged_prefill_attention(q, k_cache, v_cache, tables, torch.tensor(starts), torch.tensor(lens), dim ** -0.5)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    row_tables = torch.cat([tables[c].expand(n, -1) for c, n in enumerate(lens)])
    row_lens = torch.cat([s + torch.arange(1, n + 1) for s, n in zip(starts, lens)])
    ref = cases.paged_attention_reference(q, k_cache, v_cache, row_tables, row_lens, dim ** -0.5)
    assert cases.rel_err(out, ref) < cases.TOL[torch.bfloat16]


@needs_kernels
def test_paged_prefill_attention_rejects_bad_chunks():
    q = torch.randn(10, 4, 32).bfloat16()
    cache = torch.zeros(2, 4, 16, 32).bfloat16()
    tables = torch.tensor([[0, 1]])
    with pytest.raises(RuntimeError, match="past its block table"):
        cpu.paged_prefill_attention(q, cache, cache, tables, torch.tensor([30]), torch.tensor([10]), 1.0)
    with pytest.raises(RuntimeError, match="add up"):
        cpu.paged_prefill_attention(q, cache, cache, tables, torch.tensor([0]), torch.tensor([9]), 1.0)
    with pytest.raises(RuntimeError, match="bfloat16"):
        cpu.paged_prefill_attention(q.float(), cache.float(), cache.float(), tables, torch.tensor([0]), torch.tensor([10]), 1.0)


@needs_kernels
def test_paged_decode_attention_rejects_a_length_past_its_table():
    q, cache = torch.randn(1, 2, 16), torch.randn(2, 4, 16, 16)
    with pytest.raises(RuntimeError, match="context lengths"):
        cpu.paged_decode_attention(q, cache, cache, torch.zeros(1, 1, dtype=torch.int32), torch.tensor([17]), 0.25)


@needs_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 1, 32), (6, 2, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lens", [[64], [100], [250, 33], [31]])
@pytest.mark.parametrize("peaked", [False, True])
def test_paged_decode_attention_splits_the_keys_of_few_pairs(heads, kv_heads, dim, dtype, lens, peaked):
    """Fewer (sequence, KV head) pairs than twice the threads (1-3 here, so at any thread
    count for one KV head): each pair's keys are split into ranges of >= 32 keys (uneven at
    100 and 250) whose partial softmaxes are merged; 31 keys stay one range. Peaked scores
    put each range's maximum far from the others'."""
    g = torch.Generator().manual_seed(len(lens) * heads + dim + lens[0])
    blocks, block_size = 40, 16
    width = -(-max(lens) // block_size)
    tables = torch.stack([torch.randperm(blocks, generator=g)[:width] for _ in lens]).int()
    q = ((40 if peaked else 1) * torch.randn(len(lens), heads, dim, generator=g)).to(dtype)
    k_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=g).to(dtype)
    v_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=g).to(dtype)
    lens = torch.tensor(lens)
    out = cpu.paged_decode_attention(q, k_cache, v_cache, tables, lens, dim ** -0.5)
    ref = cases.paged_attention_reference(q, k_cache, v_cache, tables, lens, dim ** -0.5)
    assert cases.rel_err(out, ref) < cases.TOL[dtype]


@needs_kernels
@pytest.mark.parametrize("lens", [[600] + [1] * 9, [1] * 9 + [600], [1, 600, 1, 600, 1], [300] * 7])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_paged_decode_attention_shares_items_by_keys(lens, threads):
    """Threads take shares of about equal keys (one long sequence among short ones, at
    either end or alternating, and equal lengths): every (sequence, KV head) item computed
    once, and the output the same bits at any thread count (no pair is split here)."""
    g = torch.Generator().manual_seed(len(lens) + lens[0])
    blocks, block_size = 64, 16
    width = -(-max(lens) // block_size)
    tables = torch.stack([torch.randperm(blocks, generator=g)[:width] for _ in lens]).int()
    q = torch.randn(len(lens), 6, 32, generator=g).bfloat16()
    k_cache, v_cache = (torch.randn(3, blocks, block_size, 32, generator=g).bfloat16() for _ in range(2))
    lens = torch.tensor(lens)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = cpu.paged_decode_attention(q, k_cache, v_cache, tables, lens, 32 ** -0.5)
        torch.set_num_threads(threads)
        out = cpu.paged_decode_attention(q, k_cache, v_cache, tables, lens, 32 ** -0.5)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, single)
    ref = cases.paged_attention_reference(q, k_cache, v_cache, tables, lens, 32 ** -0.5)
    assert cases.rel_err(out, ref) < cases.TOL[torch.bfloat16]


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


# The fused elementwise ops keep torch's rounding steps: rotary and the KV store are
# bit-exact; RMSNorm (its mean is summed in another order) and SiLU (its own vectorised
# exp) may differ from torch by one unit in the last place of the output dtype, rarely.
ELEMENTWISE_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def assert_within_one_ulp(y: torch.Tensor, ref: torch.Tensor, max_share: float = 0.02) -> None:
    assert y.dtype == ref.dtype and y.shape == ref.shape
    if y.dtype == torch.float32:
        assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
        return
    ulp = torch.finfo(y.dtype).eps * ref.float().abs().clamp_min(torch.finfo(y.dtype).tiny)
    diff = (y.float() - ref.float()).abs()
    assert bool((diff <= ulp * 1.01).all())
    assert (diff > 0).float().mean().item() <= max_share


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", ELEMENTWISE_DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 300])
def test_rms_norm_and_add_rms_norm_match_torch(dtype, rows):
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 576, generator=gen) * 3).to(dtype)
    residual = torch.randn(rows, 576, generator=gen).to(dtype)
    weight = (torch.rand(576, generator=gen) + 0.5).to(dtype)
    assert_within_one_ulp(torch.ops.qfid_cpu.rms_norm(x, weight, 1e-5), torch_rms_norm(x, weight, 1e-5))
    expected_sum = residual + x
    y = torch.ops.qfid_cpu.add_rms_norm_(x, residual, weight, 1e-5)
    assert torch.equal(residual, expected_sum)
    assert_within_one_ulp(y, torch_rms_norm(expected_sum, weight, 1e-5))


@needs_kernels
@pytest.mark.parametrize("dtype", ELEMENTWISE_DTYPES)
def test_silu_and_mul_matches_torch_on_a_strided_input(dtype):
    gen = torch.Generator().manual_seed(1)
    wide = (torch.randn(37, 3 * 1536, generator=gen) * 4).to(dtype)
    gate_up = wide[:, : 2 * 1536]   # rows strided, as a slice of a wider output
    gate, up = gate_up.chunk(2, dim=-1)
    assert_within_one_ulp(torch.ops.qfid_cpu.silu_and_mul(gate_up), torch.nn.functional.silu(gate) * up)


@needs_kernels
@pytest.mark.parametrize("dtype", ELEMENTWISE_DTYPES)
@pytest.mark.parametrize("dim", [32, 64, 128])
def test_rotary_in_place_is_bit_exact_on_qkv_views(dtype, dim):
    from qfid.layers.rotary import apply_rotary

    tokens, heads, kv_heads = 23, 9, 3
    gen = torch.Generator().manual_seed(dim)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    cos, sin = torch.randn(tokens, dim // 2, generator=gen).to(dtype), torch.randn(tokens, dim // 2, generator=gen).to(dtype)
    q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    expected_q = apply_rotary(q.view(tokens, heads, dim), cos, sin, cpu_ops=False)
    expected_k = apply_rotary(k.view(tokens, kv_heads, dim), cos, sin, cpu_ops=False)
    untouched_v = qkv[:, (heads + kv_heads) * dim:].clone()
    assert torch.equal(apply_rotary(q.view(tokens, heads, dim), cos, sin, cpu_ops=True), expected_q)
    assert torch.equal(apply_rotary(k.view(tokens, kv_heads, dim), cos, sin, cpu_ops=True), expected_k)
    assert torch.equal(qkv[:, (heads + kv_heads) * dim:], untouched_v)


@needs_kernels
@pytest.mark.parametrize("dtype", ELEMENTWISE_DTYPES)
def test_store_kv_matches_the_torch_store(dtype):
    from qfid.layers.attention import store_kv

    kv_heads, blocks, block_size, dim, tokens = 3, 10, 16, 64, 40
    gen = torch.Generator().manual_seed(3)
    kv = torch.randn(tokens, 4 * kv_heads * dim, generator=gen).to(dtype)
    k = kv[:, : kv_heads * dim].view(tokens, kv_heads, dim)
    v = kv[:, kv_heads * dim: 2 * kv_heads * dim].view(tokens, kv_heads, dim)
    slots = torch.randperm(blocks * block_size, generator=gen)[:tokens]
    caches = [torch.zeros(kv_heads, blocks, block_size, dim, dtype=dtype) for _ in range(4)]
    store_kv(caches[0], caches[1], k, v, slots)
    cpu.store_kv(caches[2], caches[3], k, v, slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    with pytest.raises(RuntimeError, match="outside the cache"):
        cpu.store_kv(caches[2], caches[3], k[:1], v[:1], torch.tensor([blocks * block_size]))


def _fake_quant_inputs(rows: int, width: int, group: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Weights with a wide spread of channel magnitudes, the first rows on a quarter grid
    (round-half ties inside the quantizer), an AWQ-like column scale and per-group clips."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, width, generator=gen) * (torch.rand(width, generator=gen) * 3)
    w[:4] = torch.randint(-30, 30, (4, width), generator=gen).float() / 4
    col_scale = torch.rand(width, generator=gen) + 0.2
    clip = w.abs().reshape(rows, -1, group).amax(-1) * (0.5 + 0.5 * torch.rand(rows, width // group, generator=gen))
    return w, col_scale, clip


@needs_kernels
@pytest.mark.parametrize("group", [16, 64, 128, 256])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_int4_fake_quantize_equals_the_torch_passes_bit_for_bit(group, out_dtype):
    """The fused AWQ candidate op against kernels.reference (primitives.int4_fake_quantize_
    and torch's multiply/divide/cast): every combination of column scale and clip, random
    and tie-heavy rows, fp32 and bf16 outputs, and in place."""
    from qfid.kernels import reference

    w, col_scale, clip = _fake_quant_inputs(37, group * 3, group, seed=group)
    for c in (None, clip):
        for s in (None, col_scale):
            expected = reference.int4_fake_quantize(w, group, c, s, torch.empty_like(w, dtype=out_dtype))
            got = cpu.int4_fake_quantize(w, group, c, s, torch.empty_like(w, dtype=out_dtype))
            assert torch.equal(got, expected), (group, c is None, s is None, out_dtype)
    in_place = w.clone()
    cpu.int4_fake_quantize(in_place, group, clip, None, in_place)
    assert torch.equal(in_place, reference.int4_fake_quantize(w, group, clip, None, torch.empty_like(w)))


def test_int4_fake_quantize_dispatch_falls_back_to_the_reference(monkeypatch):
    """Shapes the fused op does not take (a group of 8, a strided view) and a forced
    reference backend all give the reference's result."""
    from qfid.kernels import dispatch, reference

    w, col_scale, clip = _fake_quant_inputs(24, 64, 8, seed=3)
    expected = reference.int4_fake_quantize(w, 8, clip, col_scale, torch.empty_like(w))
    assert torch.equal(dispatch.int4_fake_quantize(w, 8, clip, col_scale), expected)
    view = torch.randn(64, 48)[:, :32].T   # non-contiguous
    assert torch.equal(dispatch.int4_fake_quantize(view, 16), reference.int4_fake_quantize(view, 16, None, None, torch.empty(32, 64)))
    monkeypatch.setenv("QFID_KERNEL", "reference")
    w, col_scale, clip = _fake_quant_inputs(24, 128, 64, seed=4)
    out = torch.empty_like(w, dtype=torch.bfloat16)
    assert torch.equal(dispatch.int4_fake_quantize(w, 64, clip, col_scale, out),
                       reference.int4_fake_quantize(w, 64, clip, col_scale, torch.empty_like(out)))


@needs_kernels
@pytest.mark.parametrize("rows,vocab", [(1, 49152), (3, 17), (5, 1000), (64, 49152), (2, 5)])
def test_argmax_rows_matches_torch(rows, vocab):
    """The greedy pick: random rows, rows whose maximum repeats (the first index wins, also
    across vector lanes and in the tail), rows of -inf, and rows with NaN (torch returns the
    first NaN)."""
    g = torch.Generator().manual_seed(rows * vocab)
    x = torch.randn(rows, vocab, generator=g)
    cases_ = [x, x.round(), torch.full((rows, vocab), float("-inf")), torch.zeros(rows, vocab)]
    tied = x.clone()
    tied[:, vocab // 2:] = tied.max() + 1   # the maximum from the middle on: first index wins
    with_nan = x.clone()
    with_nan[0, vocab - 1] = float("nan")
    with_nan[-1, vocab // 3] = float("nan")
    for logits in cases_ + [tied, with_nan]:
        assert torch.equal(torch.ops.qfid_cpu.argmax_rows(logits), logits.argmax(dim=-1))
