"""Paged-attention decode: one new query token per sequence against its cached K/V,
found through a block table (the vLLM layout).

KV cache [num_blocks, block_size, kv_heads, head_dim]; block_tables [B, max_blocks] int32
(physical block of each logical block); context_lens [B] int32. One program per (sequence,
KV head) handles every query head that shares that KV head (GQA), so each K/V block is
read once per group rather than once per query head. Softmax is the streaming (online)
form in fp32: running max, running sum, rescaled accumulator, one pass over the blocks.
"""
import triton
import triton.language as tl


@triton.jit
def paged_decode_kernel(q_ptr, k_ptr, v_ptr, block_tables_ptr, context_lens_ptr, out_ptr, scale,
                        head_dim, stride_qb, stride_qh, stride_cb, stride_cs, stride_ch,
                        stride_bt, stride_ob, stride_oh,
                        QUERIES_PER_KV: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                        BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    b, kvh = tl.program_id(0), tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    slot = tl.arange(0, BLOCK_SIZE)
    heads = kvh * QUERIES_PER_KV + g
    g_mask, d_mask = g < QUERIES_PER_KV, d < head_dim
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32) * scale
    context = tl.load(context_lens_ptr + b)
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    for blk in range(0, tl.cdiv(context, BLOCK_SIZE)):
        physical = tl.load(block_tables_ptr + b * stride_bt + blk).to(tl.int64)
        s_mask = blk * BLOCK_SIZE + slot < context
        offs = physical * stride_cb + slot[:, None] * stride_cs + kvh * stride_ch + d[None, :]
        kv_mask = s_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2)
        scores = tl.where(s_mask[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
