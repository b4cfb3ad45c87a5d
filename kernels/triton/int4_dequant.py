"""INT4 -> dense weight, for both checkpoint layouts, into nn.Linear's [out, in] layout.

Why a kernel for a plain dequantize: prefill-sized batches run best as dequantize + the
vendor GEMM (cuBLAS), and the compressed-tensors layout has no fused GEMM here; both need
the dense weight produced on the GPU rather than round-tripping through the host.
Values are (code - zero) * scale computed in fp32, then cast: exact for fp16/fp32 scales.
"""
import triton
import triton.language as tl

from qfid.kernels.sources import load_source_module

_layouts = load_source_module("triton", "int4_layouts")
awq_codes = _layouts.awq_codes
sequential_nibbles = _layouts.sequential_nibbles


@triton.jit
def awq_dequant_kernel(qweight_ptr, qzeros_ptr, scales_ptr, out_ptr, K, N, group_size,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """AWQ GEMM tensors (qweight [K, N/8], qzeros [K/G, N/8], scales [K/G, N]) -> out [N, K].
    Program (i, j) covers inputs i*BLOCK_R.. and outputs j*BLOCK_C.. (words j*BLOCK_C/8..)."""
    k = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    w = tl.program_id(1) * (BLOCK_C // 8) + tl.arange(0, BLOCK_C // 8)
    mask = (k[:, None] < K) & (n[None, :] < N)
    w_mask = (k[:, None] < K) & (w[None, :] < N // 8)
    g = k // group_size
    q = awq_codes(qweight_ptr, k, w, N // 8, w_mask, BLOCK_C)
    z = awq_codes(qzeros_ptr, g, w, N // 8, w_mask, BLOCK_C)
    s = tl.load(scales_ptr + g[:, None] * N + n[None, :], mask=mask, other=0.0).to(tl.float32)
    w = (q - z).to(tl.float32) * s
    tl.store(out_ptr + n[None, :] * K + k[:, None], w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ct_dequant_kernel(packed_ptr, zero_ptr, scale_ptr, out_ptr, N, K, group_size,
                      HAS_ZERO: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """compressed-tensors pack-quantized (weight_packed [N, ceil(K/8)], weight_zero_point
    [ceil(N/8), K/G] packed along N, weight_scale [N, K/G]) -> out [N, K]. Without a zero
    point the checkpoint is symmetric: code 8 is zero."""
    n = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (n[:, None] < N) & (k[None, :] < K)
    groups = K // group_size
    g = k // group_size
    q = sequential_nibbles(packed_ptr, n, k, (K + 7) // 8, mask)
    if HAS_ZERO:
        # zero points are packed along the output dimension: row n is nibble n % 8 of word n // 8
        words = tl.load(zero_ptr + (n // 8)[:, None] * groups + g[None, :], mask=mask, other=0)
        z = (words >> ((n % 8) * 4)[:, None]) & 0xF
    else:
        z = tl.full(q.shape, 8, tl.int32)
    s = tl.load(scale_ptr + n[:, None] * groups + g[None, :], mask=mask, other=0.0).to(tl.float32)
    w = (q - z).to(tl.float32) * s
    tl.store(out_ptr + n[:, None] * K + k[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)
