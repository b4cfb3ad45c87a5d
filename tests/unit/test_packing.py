"""INT4 packers: exact round trips for both layouts, and agreement with decoders written
independently of qfid's packer (AutoAWQ's published bit order; compressed-tensors' own
pack/unpack helpers)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfid.errors import QfidError
from qfid.layouts.packing import as_stored, pack_awq_gemm, pack_ct_int4, unpack_awq_gemm, unpack_ct_int4
from qfid.layouts.primitives import Int4Weight, int4_quantize

# AutoAWQ (awq/modules/linear/gemm.py): nibble i of packed column c holds column 8c + ORDER[i];
# vLLM's AWQ dequant reads column j of a word from nibble REVERSE_ORDER[j].
AWQ_PUBLISHED_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_PUBLISHED_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def random_int4(out_f: int, in_f: int, group_size: int, seed: int = 0) -> Int4Weight:
    """Random codes, zeros and fp16-representable scales, so every field round-trips."""
    g = torch.Generator().manual_seed(seed)
    groups = in_f // group_size
    return Int4Weight(
        codes=torch.randint(0, 16, (out_f, in_f), generator=g, dtype=torch.uint8),
        scales=(torch.rand(out_f, groups, generator=g) * 0.1 + 1e-3).half().float(),
        zeros=torch.randint(0, 16, (out_f, groups), generator=g, dtype=torch.uint8),
        group_size=group_size,
    )


def assert_same_int4(a: Int4Weight, b: Int4Weight) -> None:
    assert a.group_size == b.group_size
    assert a.codes.dtype == b.codes.dtype == torch.uint8
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.zeros, b.zeros)
    assert torch.equal(a.scales, b.scales)


def autoawq_pack_reference(values_out_in: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's loop, transcribed: transpose to [in, out], then OR each column's code into
    its nibble of an int32 word."""
    intweight = values_out_in.t().to(torch.int32)
    packed = torch.zeros(intweight.shape[0], intweight.shape[1] // 8, dtype=torch.int32)
    for col in range(intweight.shape[1] // 8):
        for i in range(8):
            packed[:, col] |= intweight[:, col * 8 + AWQ_PUBLISHED_ORDER[i]] << (i * 4)
    return packed


def awq_unpack_reference(words: torch.Tensor) -> torch.Tensor:
    """vLLM's formulation: column j of each word sits at bit 4 * REVERSE_ORDER[j]. Returns
    [out, in] codes (untransposed)."""
    columns = [(words >> (4 * AWQ_PUBLISHED_REVERSE_ORDER[j])) & 0xF for j in range(8)]
    in_out = torch.stack(columns, dim=2).reshape(words.shape[0], -1)
    return in_out.t().to(torch.uint8)


SHAPES = [(640, 384, 128), (128, 640, 128), (256, 1152, 64), (8, 16, 8), (1024, 128, 32)]


@pytest.mark.parametrize("out_f,in_f,group_size", SHAPES)
def test_awq_round_trip_is_exact(out_f, in_f, group_size):
    q = random_int4(out_f, in_f, group_size)
    qweight, qzeros, scales = pack_awq_gemm(q)
    assert qweight.dtype == qzeros.dtype == torch.int32 and scales.dtype == torch.float16
    assert qweight.shape == (in_f, out_f // 8)
    assert qzeros.shape == (in_f // group_size, out_f // 8)
    assert scales.shape == (in_f // group_size, out_f)
    assert_same_int4(unpack_awq_gemm(qweight, qzeros, scales, group_size), q)


@pytest.mark.parametrize("out_f,in_f,group_size", SHAPES + [(36, 72, 8), (20, 48, 16)])
def test_ct_round_trip_is_exact(out_f, in_f, group_size):
    q = random_int4(out_f, in_f, group_size)
    packed = pack_ct_int4(q)
    assert packed["weight_packed"].shape == (out_f, -(-in_f // 8))
    assert packed["weight_zero_point"].shape == (-(-out_f // 8), in_f // group_size)
    assert packed["weight_scale"].shape == (out_f, in_f // group_size)
    assert packed["weight_shape"].tolist() == [out_f, in_f]
    assert_same_int4(unpack_ct_int4(packed, group_size), q)


@settings(max_examples=40, deadline=None)
@given(out_words=st.integers(1, 24), groups=st.integers(1, 6), group_pow=st.integers(3, 7), seed=st.integers(0, 2**16))
def test_round_trips_on_random_shapes(out_words, groups, group_pow, seed):
    group_size = 2**group_pow
    q = random_int4(out_words * 8, groups * group_size, group_size, seed)
    assert_same_int4(unpack_awq_gemm(*pack_awq_gemm(q), group_size), q)
    assert_same_int4(unpack_ct_int4(pack_ct_int4(q), group_size), q)


@pytest.mark.parametrize("code,word", [(0, 0), (15, -1), (8, -2004318072)])
def test_edge_codes_fill_whole_words(code, word):
    """All-15 nibbles are 0xFFFFFFFF (-1 as int32: the sign bit is a data bit); 8s are 0x88888888."""
    q = Int4Weight(torch.full((16, 32), code, dtype=torch.uint8), torch.ones(16, 2),
                   torch.full((16, 2), code, dtype=torch.uint8), 16)
    qweight, qzeros, _ = pack_awq_gemm(q)
    packed = pack_ct_int4(q)
    for words in (qweight, qzeros, packed["weight_packed"], packed["weight_zero_point"]):
        assert torch.all(words == word)
    assert_same_int4(unpack_awq_gemm(*pack_awq_gemm(q), 16), q)
    assert_same_int4(unpack_ct_int4(packed, 16), q)


@pytest.mark.parametrize("out_f,in_f,group_size", [(640, 384, 128), (64, 128, 32)])
def test_awq_matches_the_published_bit_order(out_f, in_f, group_size):
    q = random_int4(out_f, in_f, group_size, seed=3)
    qweight, qzeros, _ = pack_awq_gemm(q)
    assert torch.equal(qweight, autoawq_pack_reference(q.codes))
    assert torch.equal(qzeros, autoawq_pack_reference(q.zeros))
    assert torch.equal(awq_unpack_reference(qweight), q.codes)
    assert torch.equal(awq_unpack_reference(qzeros), q.zeros)


def test_awq_first_word_by_hand():
    """Columns 0..7 = codes 1..8: nibbles hold columns 0,2,4,6,1,3,5,7 = 1,3,5,7,2,4,6,8."""
    codes = torch.arange(1, 9, dtype=torch.uint8).reshape(8, 1).repeat(1, 8)
    q = Int4Weight(codes, torch.ones(8, 1), torch.zeros(8, 1, dtype=torch.uint8), 8)
    qweight, _, _ = pack_awq_gemm(q)
    assert qweight[0, 0].item() == 0x86427531 - 2**32


def test_ct_matches_the_library_packer():
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    for out_f, in_f, group_size in [(640, 384, 128), (36, 72, 8)]:
        q = random_int4(out_f, in_f, group_size, seed=5)
        packed = pack_ct_int4(q)
        signed_codes = (q.codes.to(torch.int16) - 8).to(torch.int8)
        signed_zeros = (q.zeros.to(torch.int16) - 8).to(torch.int8)
        assert torch.equal(packed["weight_packed"], helpers.pack_to_int32(signed_codes, 4))
        assert torch.equal(packed["weight_zero_point"], helpers.pack_to_int32(signed_zeros, 4, packed_dim=0))
        unpacked = helpers.unpack_from_int32(packed["weight_packed"], 4, torch.Size([out_f, in_f]))
        assert torch.equal(unpacked, signed_codes)


def test_ct_symmetric_checkpoint_decodes_with_zero_eight():
    q = random_int4(16, 64, 32)
    packed = pack_ct_int4(q)
    del packed["weight_zero_point"]
    assert torch.all(unpack_ct_int4(packed, 32).zeros == 8)


def test_as_stored_is_what_a_reload_dequantizes():
    q = int4_quantize(torch.randn(64, 128, generator=torch.Generator().manual_seed(1)), 32)
    reloaded = unpack_awq_gemm(*pack_awq_gemm(q), 32)
    assert torch.equal(reloaded.dequantize(), as_stored(q).dequantize())
    assert torch.equal(unpack_ct_int4(pack_ct_int4(q), 32).dequantize(), as_stored(q).dequantize())


def test_bad_shapes_are_one_line_errors():
    q = random_int4(64, 128, 32)
    qweight, qzeros, scales = pack_awq_gemm(q)
    with pytest.raises(QfidError, match="scales has shape"):
        unpack_awq_gemm(qweight, qzeros, scales[:, :-8], 32)
    with pytest.raises(QfidError, match="does not divide"):
        unpack_awq_gemm(qweight, qzeros, scales, 48)
    with pytest.raises(QfidError, match="int32"):
        unpack_awq_gemm(qweight.to(torch.int64), qzeros, scales, 32)
    with pytest.raises(QfidError, match="divisible by 8"):
        pack_awq_gemm(random_int4(12, 32, 16))
    packed = pack_ct_int4(q)
    with pytest.raises(QfidError, match="weight_zero_point has shape"):
        unpack_ct_int4({**packed, "weight_zero_point": packed["weight_zero_point"][:, :1]}, 32)
    with pytest.raises(QfidError, match="lacks weight_shape"):
        unpack_ct_int4({k: v for k, v in packed.items() if k != "weight_shape"}, 32)
