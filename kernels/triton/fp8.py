"""FP8 E4M3 kernels: dequantize, and a scaled GEMM with per-tensor or per-channel weight
scales.

The GEMM takes either high-precision activations (weight-only FP8: each E4M3 tile is
widened to the activation dtype, which is exact for fp16/bf16/fp32) or E4M3 activations
with one scale per row (W8A8, dynamic per token or a static per-tensor scale broadcast):
then both operands go to the tensor cores as FP8 (sm_89+) and the scales are applied to
the fp32 accumulator once, at the end. A per-tensor scale is a per-channel scale with
stride 0, so one kernel serves both.

Accuracy of the FP8 MMA: on Hopper, tiles of 64+ rows run on wgmma, whose FP8 products are
added in reduced precision: ~1e-4 relative error against float64 on an H100, the same at
K = 96 and K = 14336 (the error does not grow with K). Promoting to fp32 every 32 products
(`max_num_imprecise_acc=32`) cut it to 4.6e-5 but made a 64-row 4096x14336 GEMM 1.8x
slower; E4M3 activations themselves round by up to 2^-4, so the default stays.
"""
import triton
import triton.language as tl


@triton.jit
def fp8_dequant_kernel(w_ptr, scale_ptr, out_ptr, N, K, scale_stride,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """w [N, K] E4M3 times scale [N] (stride 1) or [1] (stride 0) -> out [N, K]."""
    n = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (n[:, None] < N) & (k[None, :] < K)
    w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + n * scale_stride, mask=n < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + n[:, None] * K + k[None, :], (w * s[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fp8_gemm_kernel(x_ptr, x_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, y_ptr,
                    M, N, K, stride_xm, stride_ym, w_scale_stride,
                    X_FP8: tl.constexpr, HAS_BIAS: tl.constexpr, F32_DOT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y [M, N] = (x [M, K] * x_scale[m]) @ (w [N, K] * w_scale[n])^T + bias."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    m_mask, n_mask = m < M, n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        k_mask = k < K
        x = tl.load(x_ptr + m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + n[None, :] * K + k[:, None], mask=n_mask[None, :] & k_mask[:, None], other=0.0)
        if X_FP8:
            acc += tl.dot(x, w)
        elif F32_DOT:  # fp32 activations, or bf16 under the interpreter (see w4a16_gemm.py)
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    acc *= tl.load(w_scale_ptr + n * w_scale_stride, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if X_FP8:
        acc *= tl.load(x_scale_ptr + m, mask=m_mask, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + m[:, None] * stride_ym + n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])
