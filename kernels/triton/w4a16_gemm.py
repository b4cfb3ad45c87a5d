"""Fused W4A16 GEMM over the AutoAWQ GEMM layout: y = x @ W^T (+ bias).

The K loop steps inside one quantization group at a time (BLOCK_K divides the group size),
so the MMA runs on the exact small integers (q - z), which fp16/bf16 hold without error,
and the group's scale is applied once to the fp32 partial product:
    acc += dot(x, q - z) * s
That keeps the result at fp32-accumulate accuracy instead of rounding every dequantized
weight to fp16. With SPLIT_K > 1 (decode shapes) programs split the groups among them
and add their partials atomically into an fp32 buffer; the launcher adds bias and casts.
"""
import triton
import triton.language as tl

from qfid.kernels.sources import load_source_module

awq_codes = load_source_module("triton", "int4_layouts").awq_codes


@triton.jit
def _dot(x, w_int, F32_DOT: tl.constexpr):
    # F32_DOT: IEEE fp32 products, for fp32 activations (TF32 would cost ~1e-3 relative
    # error) and for bf16 under TRITON_INTERPRET, whose numpy emulation of bf16 is broken.
    if F32_DOT:
        return tl.dot(x.to(tl.float32), w_int.to(tl.float32), input_precision="ieee")
    return tl.dot(x, w_int.to(x.dtype))


@triton.jit
def w4a16_gemm_kernel(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, bias_ptr, y_ptr,
                      M, N, K, group_size, stride_xm, stride_ym,
                      HAS_BIAS: tl.constexpr, F32_DOT: tl.constexpr, SPLIT_K: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    words = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)   # the packed words of columns n
    kk = tl.arange(0, BLOCK_K)
    m_mask, n_mask, w_mask = m < M, n < N, words < N // 8
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    steps = K // BLOCK_K
    per_split = tl.cdiv(steps, SPLIT_K)
    for step in range(pid_k * per_split, tl.minimum(steps, (pid_k + 1) * per_split)):
        k = step * BLOCK_K + kk
        x = tl.load(x_ptr + m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None], other=0.0)
        q = awq_codes(qweight_ptr, k, words, N // 8, w_mask[None, :], BLOCK_N)
        g = (step * BLOCK_K) // group_size
        z = awq_codes(qzeros_ptr, g + tl.zeros((1,), tl.int32), words, N // 8, w_mask[None, :], BLOCK_N)
        s = tl.load(scales_ptr + g * N + n, mask=n_mask, other=0.0).to(tl.float32)
        acc += _dot(x, q - z, F32_DOT) * s[None, :]
    out = y_ptr + m[:, None] * stride_ym + n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)
