"""Nibble extraction for the two INT4 checkpoint layouts, shared by the dequantize and
GEMM kernels so that the bit order is written exactly once.

AutoAWQ GEMM: int32 words [rows, N/8]; output column 8c + j sits in nibble
(j // 2) + 4 * (j % 2) of word c (the inverse of AWQ's order [0, 2, 4, 6, 1, 3, 5, 7]).
compressed-tensors pack-quantized: int32 words [rows, ceil(cols/8)]; column 8c + i sits
in nibble i (sequential).
"""
import triton
import triton.language as tl


@triton.jit
def awq_nibbles(ptr, rows, cols, n_cols, mask):
    """Codes [len(rows), len(cols)] of AWQ-packed words laid out [*, n_cols / 8]."""
    j = cols % 8
    shift = ((j // 2) + (j % 2) * 4) * 4
    words = tl.load(ptr + rows[:, None] * (n_cols // 8) + (cols // 8)[None, :], mask=mask, other=0)
    return (words >> shift[None, :]) & 0xF


@triton.jit
def sequential_nibbles(ptr, rows, cols, words_per_row, mask):
    """Codes [len(rows), len(cols)] of sequentially packed words laid out [*, words_per_row]."""
    shift = (cols % 8) * 4
    words = tl.load(ptr + rows[:, None] * words_per_row + (cols // 8)[None, :], mask=mask, other=0)
    return (words >> shift[None, :]) & 0xF
