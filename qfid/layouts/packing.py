"""Exact bit packers for the two on-disk INT4 layouts, pure torch.

Both layouts store eight 4-bit values per int32, nibble i in bits 4i..4i+3; they differ in
*which* values share a word and in orientation:

- AutoAWQ GEMM (what vLLM's `awq` / `awq_marlin` read): tensors are transposed to
  `[in, out]`; nibble i of packed column c holds output column `8c + AWQ_ORDER[i]`.
  `qweight` int32 `[in, out/8]`, `qzeros` int32 `[in/G, out/8]`, `scales` fp16 `[in/G, out]`.
- compressed-tensors `pack-quantized` (0.20): nn.Linear orientation `[out, in]`; nibble i of
  word k holds column `8k + i` (zero-padded to a whole word); the library stores int4 as
  signed `value - 8` and adds the 8 back before packing, so the nibble holds our 0..15 code
  unchanged. Zero points are packed the same way but along the output dimension
  (`[ceil(out/8), in/G]`); `weight_scale` is `[out, in/G]`; `weight_shape` is int64 `[2]`.

Scales are stored as fp16 in both layouts (AutoAWQ requires it; using it for
compressed-tensors too makes the two layouts of one quantized weight decode to the same
dense weight). `as_stored` rounds an Int4Weight's scales the same way, so callers can
compare against exactly what a checkpoint holds.

Words are assembled with integer arithmetic (no byte views), so the result does not
depend on the host's byte order.
"""
from __future__ import annotations

import torch

from qfid.errors import QfidError
from qfid.layouts.primitives import Int4Weight

NIBBLES_PER_WORD = 8
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SCALE_DTYPE = torch.float16


def as_stored(q: Int4Weight, scale_dtype: torch.dtype = SCALE_DTYPE) -> Int4Weight:
    """The same weight with scales rounded to the checkpoint's scale dtype: what a reload
    will dequantize."""
    return Int4Weight(q.codes, q.scales.to(scale_dtype).float(), q.zeros, q.group_size)


# -- word packing: sequential nibbles ------------------------------------------------------

def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(NIBBLES_PER_WORD, dtype=torch.int64, device=device) * 4


def words_for(n_values: int) -> int:
    """int32 words needed for `n_values` nibbles."""
    return -(-n_values // NIBBLES_PER_WORD)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """uint8 codes `[R, C]` (0..15) -> int32 `[R, ceil(C/8)]`, column 8k+i in nibble i of
    word k; a partial last word is padded with zero nibbles."""
    rows, cols = values.shape
    words = words_for(cols)
    padded = torch.zeros(rows, words * NIBBLES_PER_WORD, dtype=torch.int64, device=values.device)
    padded[:, :cols] = values.to(torch.int64)
    unsigned = (padded.reshape(rows, words, NIBBLES_PER_WORD) << _shifts(values.device)).sum(dim=2)
    signed = torch.where(unsigned >= 2**31, unsigned - 2**32, unsigned)
    return signed.to(torch.int32)


def unpack_rows(words: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of `pack_rows`: int32 `[R, W]` -> uint8 `[R, cols]` (the shift is arithmetic on
    negative words; the mask drops the copied sign bits)."""
    nibbles = (words.unsqueeze(2) >> _shifts(words.device).to(torch.int32)) & 0xF
    return nibbles.reshape(words.shape[0], -1)[:, :cols].to(torch.uint8)


# -- AutoAWQ GEMM ---------------------------------------------------------------------------

def _awq_permutation(out_features: int, device: torch.device) -> torch.Tensor:
    """Column index that lands in sequential slot 8c+i: `8c + AWQ_ORDER[i]`."""
    base = torch.arange(0, out_features, NIBBLES_PER_WORD, device=device).unsqueeze(1)
    return (base + torch.tensor(AWQ_ORDER, device=device)).reshape(-1)


def _awq_pack(values_in_out: torch.Tensor) -> torch.Tensor:
    return pack_rows(values_in_out[:, _awq_permutation(values_in_out.shape[1], values_in_out.device)])


def _awq_unpack(words: torch.Tensor) -> torch.Tensor:
    out_features = words.shape[1] * NIBBLES_PER_WORD
    inverse = torch.argsort(_awq_permutation(out_features, words.device))
    return unpack_rows(words, out_features)[:, inverse]


def pack_awq_gemm(q: Int4Weight,
                  scale_dtype: torch.dtype = SCALE_DTYPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight, qzeros, scales) in AutoAWQ GEMM layout from an `[out, in]` Int4Weight."""
    out_features, _ = q.shape
    if out_features % NIBBLES_PER_WORD:
        raise QfidError(f"the AutoAWQ layout needs out_features divisible by 8; got {out_features}")
    qweight = _awq_pack(q.codes.t())
    qzeros = _awq_pack(q.zeros.t())
    scales = q.scales.t().contiguous().to(scale_dtype)
    return qweight, qzeros, scales


def unpack_awq_gemm(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> Int4Weight:
    """Int4Weight from AutoAWQ GEMM tensors; scales come back as fp32 (exact upcast)."""
    _check_awq_shapes(qweight, qzeros, scales, group_size)
    return Int4Weight(
        codes=_awq_unpack(qweight).t().contiguous(),
        scales=scales.t().float().contiguous(),
        zeros=_awq_unpack(qzeros).t().contiguous(),
        group_size=group_size,
    )


def _check_awq_shapes(qweight, qzeros, scales, group_size: int) -> None:
    for label, t in (("qweight", qweight), ("qzeros", qzeros)):
        if t.dtype != torch.int32 or t.dim() != 2:
            raise QfidError(f"AWQ {label} must be a 2-D int32 tensor; got {t.dtype} {tuple(t.shape)}")
    in_features, words = qweight.shape
    out_features = words * NIBBLES_PER_WORD
    if group_size <= 0 or in_features % group_size:
        raise QfidError(f"AWQ group size {group_size} does not divide in_features {in_features}")
    groups = in_features // group_size
    expected = {"qzeros": (groups, words), "scales": (groups, out_features)}
    for label, t in (("qzeros", qzeros), ("scales", scales)):
        if tuple(t.shape) != expected[label]:
            raise QfidError(f"AWQ {label} has shape {tuple(t.shape)}; expected {expected[label]} "
                            f"for qweight {tuple(qweight.shape)}")


# -- compressed-tensors pack-quantized ------------------------------------------------------

def pack_ct_int4(q: Int4Weight, scale_dtype: torch.dtype = SCALE_DTYPE) -> dict[str, torch.Tensor]:
    """`weight_packed`, `weight_scale`, `weight_zero_point`, `weight_shape` as
    compressed-tensors' PackedQuantizationCompressor writes them for asymmetric group int4."""
    return {
        "weight_packed": pack_rows(q.codes),
        "weight_scale": q.scales.to(scale_dtype).contiguous(),
        "weight_zero_point": pack_rows(q.zeros.t()).t().contiguous(),
        "weight_shape": torch.tensor(q.shape, dtype=torch.int64),
    }


def unpack_ct_int4(tensors: dict[str, torch.Tensor], group_size: int) -> Int4Weight:
    """Int4Weight from one module's pack-quantized tensors. A missing `weight_zero_point`
    means a symmetric checkpoint: signed zero 0, i.e. code 8."""
    missing = {"weight_packed", "weight_scale", "weight_shape"} - tensors.keys()
    if missing:
        raise QfidError(f"compressed-tensors int4 module lacks {', '.join(sorted(missing))}")
    out_features, in_features = (int(d) for d in tensors["weight_shape"].tolist())
    scale = tensors["weight_scale"]
    _check_ct_shapes(tensors, out_features, in_features, group_size)
    zero_words = tensors.get("weight_zero_point")
    if zero_words is None:
        zeros = torch.full(tuple(scale.shape), 8, dtype=torch.uint8, device=scale.device)
    else:
        zeros = unpack_rows(zero_words.t(), out_features).t().contiguous()
    return Int4Weight(
        codes=unpack_rows(tensors["weight_packed"], in_features),
        scales=scale.float().contiguous(),
        zeros=zeros,
        group_size=group_size,
    )


def _check_ct_shapes(tensors: dict[str, torch.Tensor], out_features: int, in_features: int, group_size: int) -> None:
    if group_size <= 0 or in_features % group_size:
        raise QfidError(f"compressed-tensors group size {group_size} does not divide in_features {in_features}")
    groups = in_features // group_size
    expected = {
        "weight_packed": (out_features, words_for(in_features)),
        "weight_scale": (out_features, groups),
        "weight_zero_point": (words_for(out_features), groups),
    }
    for label, shape in expected.items():
        t = tensors.get(label)
        if t is not None and tuple(t.shape) != shape:
            raise QfidError(f"compressed-tensors {label} has shape {tuple(t.shape)}; expected {shape} "
                            f"for a [{out_features}, {in_features}] weight in groups of {group_size}")
    for label in ("weight_packed", "weight_zero_point"):
        t = tensors.get(label)
        if t is not None and t.dtype != torch.int32:
            raise QfidError(f"compressed-tensors {label} must be int32; got {t.dtype}")
