"""Load-time repacks from the unpacked INT4 form (codes/scales/zeros, `[out, in]`) into the
layouts the CPU kernels stream.

Why repack at all: the AWQ checkpoint layout interleaves output columns inside an int32
for GPU tensor-core loads; a CPU GEMV wants one sequential stream per block of output rows
with the nibbles already in the order the SIMD instruction consumes them. Repacking once
at load time costs a few milliseconds per layer and nothing per token.
"""
from __future__ import annotations

import torch

TILE_ROWS = 64      # output rows per tile of the qfid CPU layout (4 x 16 fp32 lanes)
_CHUNK_INPUTS = 4   # inputs per 128-byte chunk: two bf16 pairs per 16-row sub-block
_TORCH_ROW_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu needs N % 16 == 0


def tile_group_bytes(group_size: int) -> int:
    """Bytes of one (tile, group) record: nibbles, then fp16 scales, then uint8 zeros."""
    return group_size * TILE_ROWS // 2 + TILE_ROWS * 2 + TILE_ROWS


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad the output dimension to whole tiles with zeros (zero scale -> zero output)."""
    extra = rows - t.shape[0]
    return t if extra == 0 else torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])


def pack_int4_tiles(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """codes uint8 [N, K], scales [N, K/G], zeros uint8 [N, K/G] -> uint8 [T, K/G, bytes].

    Byte j of sub-block b in chunk c holds row 16b + j//2: input 4c + j%2 in the low
    nibble, 4c + 2 + j%2 in the high one (see kernels/cpu/int4_gemm.cpp). Scales are
    stored as fp16: the AWQ format's own precision, so nothing is lost.
    """
    n, k = codes.shape
    if group_size % _CHUNK_INPUTS or k % group_size:
        raise ValueError(f"group size {group_size} must divide K={k} and be a multiple of 4")
    tiles = -(-n // TILE_ROWS)
    rows = tiles * TILE_ROWS
    groups = k // group_size
    c = _pad_rows(codes.to(torch.uint8), rows).view(tiles, 4, 16, k // 4, 2, 2)  # t b r chunk half e
    nib = c[..., 0, :] | (c[..., 1, :] << 4)                                     # t b r chunk e
    nib = nib.permute(0, 3, 1, 2, 4).reshape(tiles, groups, group_size * TILE_ROWS // 2)
    sc = _pad_rows(scales.to(torch.float16), rows).view(tiles, TILE_ROWS, groups).transpose(1, 2)
    zp = _pad_rows(zeros.to(torch.uint8), rows).view(tiles, TILE_ROWS, groups).transpose(1, 2)
    sc_bytes = sc.contiguous().view(torch.uint8)
    return torch.cat([nib, sc_bytes, zp.contiguous()], dim=2).contiguous()


def pack_int4_torch(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The operands of torch's `_weight_int4pack_mm_for_cpu`.

    torch dequantizes `(q - 8) * scale + offset`; AWQ is `(q - z) * scale`, so
    `offset = (8 - z) * scale`. Both live in the activation dtype, which rounds them when
    that is bf16 (the fp32 path is exact). torch wants N divisible by 16: extra rows get
    scale 0 and offset 0, and the caller drops their outputs.
    """
    rows = -(-codes.shape[0] // _TORCH_ROW_MULTIPLE) * _TORCH_ROW_MULTIPLE
    codes = _pad_rows(codes.to(torch.int32), rows).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    s = _pad_rows(scales.float(), rows)
    offset = (8.0 - _pad_rows(zeros.float(), rows)) * s
    scale_and_offset = torch.stack([s.t(), offset.t()], dim=-1).to(dtype).contiguous()
    return packed, scale_and_offset


def pack_bf16_tiles(weight: torch.Tensor) -> torch.Tensor:
    """bf16 [N, K] (K even) -> bf16 [T, K/2, 128]: per tile of 64 output rows and input
    pair p, the 64 rows' (w[r, 2p], w[r, 2p+1]) side by side, the operand order of
    `vdpbf16ps` (see kernels/cpu/bf16_gemm.cpp). Padding rows are zero."""
    n, k = weight.shape
    if k % 2:
        raise ValueError(f"the bf16 tile layout needs an even number of inputs, got {k}")
    tiles = -(-n // TILE_ROWS)
    w = _pad_rows(weight.to(torch.bfloat16), tiles * TILE_ROWS).view(tiles, TILE_ROWS, k // 2, 2)
    return w.permute(0, 2, 1, 3).reshape(tiles, k // 2, 2 * TILE_ROWS).contiguous()
