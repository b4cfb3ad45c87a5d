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
def awq_codes(ptr, rows, words, n_words, mask, COLS: tl.constexpr):
    """Codes [len(rows), COLS] of AWQ-packed words laid out [*, n_words], for the COLS =
    8 * len(words) output columns that the words `words` hold (column 8w + j of the result
    is nibble j of words[w], in output order). Each word is loaded once, as a contiguous
    run along the row, and fanned out to its 8 columns in registers: loading it once per
    column instead costs 8x the load instructions and, in a pipelined GEMM, 8x the shared
    memory per stage (measured on an H100: a decode GEMM 10x slower than fp16 cuBLAS)."""
    packed = tl.load(ptr + rows[:, None] * n_words + words[None, :], mask=mask, other=0)
    packed = tl.interleave(packed, packed)   # each word twice, side by side
    packed = tl.interleave(packed, packed)   # four times
    packed = tl.interleave(packed, packed)   # eight times: result column c holds word c // 8
    j = tl.arange(0, COLS) % 8
    shift = ((j // 2) + (j % 2) * 4) * 4
    return (packed >> shift[None, :]) & 0xF


@triton.jit
def sequential_nibbles(ptr, rows, cols, words_per_row, mask):
    """Codes [len(rows), len(cols)] of sequentially packed words laid out [*, words_per_row]."""
    shift = (cols % 8) * 4
    words = tl.load(ptr + rows[:, None] * words_per_row + (cols // 8)[None, :], mask=mask, other=0)
    return (words >> shift[None, :]) & 0xF
