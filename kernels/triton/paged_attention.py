"""Paged-attention decode: one new query token per sequence against its cached K/V, found
through a block table, split over the KV length (flash-decoding).

KV cache addressed through strides as [num_blocks, block_size, kv_heads, head_dim] (the
vLLM layout, or the qfid engine's [kv_heads, num_blocks, block_size, head_dim] seen through
a permuted view); block_tables [B, max_blocks] int32/int64 (physical block of each logical
block); context_lens [B]. One program per (sequence, KV head, split) handles every query
head that shares that KV head (GQA), so each K/V block is read once per group rather than
once per query head, and the split axis gives a batch of a few long sequences enough
programs to fill the GPU (one program per sequence and KV head left most SMs idle at
batch 1: 0.08-0.69x of a torch gather + SDPA). Softmax is the streaming (online) form in
fp32: running max, running sum, rescaled accumulator, one pass over the split's blocks.

With one split the program normalises and writes the output itself; with several, each
writes its (max, sum, unnormalised accumulator) and `paged_decode_reduce_kernel` combines
them: out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s, M = max_s m_s. A split past a
sequence's end writes m = -inf, l = 0 and drops out of the sum.
"""
import triton
import triton.language as tl


@triton.jit
def paged_decode_kernel(q_ptr, k_ptr, v_ptr, block_tables_ptr, context_lens_ptr, out_ptr, m_ptr, l_ptr, scale,
                        head_dim, blocks_per_split, stride_qb, stride_qh, stride_cb, stride_cs, stride_ch,
                        stride_bt, stride_ob, stride_oh,
                        QUERIES_PER_KV: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                        BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr):
    b, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    slot = tl.arange(0, BLOCK_SIZE)
    heads = kvh * QUERIES_PER_KV + g
    g_mask, d_mask = g < QUERIES_PER_KV, d < head_dim
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32) * scale
    context = tl.load(context_lens_ptr + b)
    first_block = split * blocks_per_split
    last_block = tl.minimum(first_block + blocks_per_split, tl.cdiv(context, BLOCK_SIZE))
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    for blk in range(first_block, last_block):
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
    out_mask = g_mask[:, None] & d_mask[None, :]
    if SPLIT:
        # contiguous fp32 partials: m, l [B, heads, splits]; acc (out_ptr) [B, heads, splits, head_dim]
        num_heads = tl.num_programs(1) * QUERIES_PER_KV
        base = (b * num_heads + heads) * tl.num_programs(2) + split
        tl.store(m_ptr + base, m_i, mask=g_mask)
        tl.store(l_ptr + base, l_i, mask=g_mask)
        tl.store(out_ptr + base[:, None] * head_dim + d[None, :], acc, mask=out_mask)
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def paged_decode_reduce_kernel(acc_ptr, m_ptr, l_ptr, out_ptr, head_dim, num_splits, stride_ob, stride_oh,
                               num_heads, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (sequence, head): combine the splits' partial softmax states."""
    b, h = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask, d_mask = s < num_splits, d < head_dim
    row = b * num_heads + h
    m = tl.load(m_ptr + row * num_splits + s, mask=s_mask, other=float("-inf"))
    l = tl.load(l_ptr + row * num_splits + s, mask=s_mask, other=0.0)
    acc = tl.load(acc_ptr + (row * num_splits + s)[:, None] * head_dim + d[None, :],
                  mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    m_max = tl.max(m, axis=0)
    weight = tl.where(s_mask & (l > 0), tl.exp(m - m_max), 0.0)
    total = tl.sum(weight * l, axis=0)
    out = tl.sum(weight[:, None] * acc, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)
