"""Paged attention over the engine's KV cache, behind one backend object per model.

One layer's cache is a pair of `[kv_heads, num_blocks, block_size, head_dim]` tensors, so
gathering a sequence's context is one `index_select` of whole blocks (2 KiB rows in bf16)
that lands directly in the `[kv_heads, seqs, tokens, head_dim]` shape a batched matmul
wants: no transpose copy after the gather. Memory traffic, not arithmetic, is what decode
attention costs on a CPU, so this layout is the main speed decision here; the Triton
kernel reads the same layout through strides.

A step's tokens arrive flat: one-token rows (decodes) first, then prefill chunks. The
backend (chosen once per model by `kernels.dispatch.attention_backend`) says which layout
of each part it wants built (`decode_tables`, `prefill_tables`), stores new K/V, and runs:
- `torch` (any device; `QFID_KERNEL=reference` on a CPU): decodes by one gather and two
  batched matmuls per group of similar context length (a few groups per step, sorted by
  length, so padding stays small), the query heads that share a KV head folded into the
  matmul's row axis (grouped-query attention without repeating K/V), softmax in fp32 with
  a precomputed 0/-inf padding bias; prefill chunks by one SDPA call each.
- `cpu` (qfid's AVX-512 kernels): decodes by `qfid_cpu::paged_decode_attention`, which reads
  each sequence's K/V once straight from its blocks (a gather materialises K/V and the
  matmuls read them again, so at a few hundred tokens of context the kernel is several
  times faster); bf16 prefill chunks by `qfid_cpu::paged_prefill_attention`, one call for
  all of a step's chunks (~3x torch's CPU flash attention at these sizes); K/V stored by
  `qfid_cpu::store_kv_`.
- `triton` (CUDA; CPU tensors under TRITON_INTERPRET=1): decodes by the Triton paged
  kernel split over the KV length (kernels/triton/paged_attention.py); prefill chunks by
  SDPA, which on CUDA is flash attention.
Every backend runs the torch layouts too (a caller that builds prefill chunks itself, as
the routing eval does, works with any backend).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qfid.kernels import dispatch


@dataclass
class PrefillChunk:
    """One sequence's prefill rows (relative to the step's first prefill row). When it has
    cached context: `blocks` to gather and `mask` [queries, context] (query i sees keys
    up to start + i)."""

    rows: slice
    blocks: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class DecodeGroup:
    """Decode rows of similar context length: their block tables cut to the group's
    longest and flattened (padding points at block 0), and a [1, rows, 1, keys] fp32 bias,
    0 inside each row's context and -inf after it."""

    rows: slice
    blocks: torch.Tensor
    bias: torch.Tensor


@dataclass
class AttentionMetadata:
    """Built once per step by the model runner, shared by every layer.

    slot_mapping: [T] cache slot (block * block_size + offset) of each new token.
    num_decode_tokens: rows [0, D) are one-token sequences; the rest are prefill chunks.
    Decode rows come either as `decode_tables` [D, blocks] + `decode_lens` [D] or as
    `decode_groups`; prefill rows as `prefill_chunks` (SDPA per chunk) or as
    `prefill_tables` [chunks, blocks] + `prefill_starts` + `prefill_lens` (one kernel
    call): whichever the backend asked for.
    """

    slot_mapping: torch.Tensor
    num_decode_tokens: int
    decode_tables: torch.Tensor | None = None
    decode_lens: torch.Tensor | None = None
    decode_groups: list[DecodeGroup] = field(default_factory=list)
    prefill_chunks: list[PrefillChunk] = field(default_factory=list)
    prefill_tables: torch.Tensor | None = None
    prefill_starts: torch.Tensor | None = None
    prefill_lens: torch.Tensor | None = None


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write [T, kv_heads, d] keys and values into their slots."""
    heads, dim = k_cache.shape[0], k_cache.shape[-1]
    k_cache.view(heads, -1, dim).index_copy_(1, slot_mapping, k.transpose(0, 1))
    v_cache.view(heads, -1, dim).index_copy_(1, slot_mapping, v.transpose(0, 1))


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, rows: int) -> torch.Tensor:
    """[kv_heads, rows, tokens, d] context of `rows` sequences whose block ids are `blocks`."""
    heads, _, block_size, dim = cache.shape
    return cache.index_select(1, blocks).view(heads, rows, -1, dim)


def _decode_group(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: DecodeGroup,
                  scale: float) -> torch.Tensor:
    rows, heads, dim = q.shape
    kv_heads = k_cache.shape[0]
    k = gather_blocks(k_cache, group.blocks, rows)
    v = gather_blocks(v_cache, group.blocks, rows)
    grouped = q.view(rows, kv_heads, heads // kv_heads, dim).transpose(0, 1)  # [kv_heads, rows, group, d]
    scores = torch.matmul(grouped, k.transpose(-1, -2)).float().mul_(scale).add_(group.bias)
    out = torch.matmul(scores.softmax(dim=-1).to(q.dtype), v)  # [kv_heads, rows, group, d]
    return out.transpose(0, 1).reshape(rows, heads, dim)


def prefill_chunks_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                             v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """One SDPA call per prefill chunk (a Python loop over *sequences*, at most a few per
    step). A chunk with no cached context attends causally over its own new K/V with no
    gather at all; a later chunk, or one after a prefix-cache hit, gathers its blocks."""
    heads = q.shape[1]
    outputs = []
    for chunk in meta.prefill_chunks:
        query = q[chunk.rows].transpose(0, 1).unsqueeze(0)  # [1, heads, Q, d]
        if chunk.blocks is None:
            keys, values = k[chunk.rows].transpose(0, 1).unsqueeze(0), v[chunk.rows].transpose(0, 1).unsqueeze(0)
            out = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale,
                                                 enable_gqa=heads != keys.shape[1])
        else:
            keys = gather_blocks(k_cache, chunk.blocks, 1).transpose(0, 1)
            values = gather_blocks(v_cache, chunk.blocks, 1).transpose(0, 1)
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=chunk.mask, scale=scale,
                                                 enable_gqa=heads != keys.shape[1])
        outputs.append(out.squeeze(0).transpose(0, 1))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def decode_groups_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            meta: AttentionMetadata, scale: float) -> torch.Tensor:
    outputs = [_decode_group(q[group.rows], k_cache, v_cache, group, scale) for group in meta.decode_groups]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class AttentionBackend:
    """The torch backend, and the frame the others fill in: `forward` stores this step's
    K/V and runs the decode rows and the prefill rows in whatever layout `meta` holds."""

    name = "torch"
    decode_tables = False     # lay decode rows out as block tables + lengths (else length groups)
    prefill_tables = False    # lay prefill chunks out as block tables + starts + lengths (else chunks)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Store this step's k, v [T, kv_heads, d]; return attention output [T, heads, d]."""
        self.store(k_cache, v_cache, k, v, meta.slot_mapping)
        num_decode = meta.num_decode_tokens
        parts = []
        if num_decode:
            parts.append(self.decode(q[:num_decode], k_cache, v_cache, meta, scale))
        if num_decode < q.shape[0]:
            parts.append(self.prefill(q[num_decode:], k[num_decode:], v[num_decode:], k_cache, v_cache, meta, scale))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def plan(self, max_blocks: int) -> None:
        """Told once by the runner: the most blocks a sequence's table can hold."""

    def store(self, k_cache, v_cache, k, v, slot_mapping) -> None:
        store_kv(k_cache, v_cache, k, v, slot_mapping)

    def decode(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.decode_tables is not None:
            return self.decode_from_tables(q, k_cache, v_cache, meta, scale)
        return decode_groups_attention(q, k_cache, v_cache, meta, scale)

    def decode_from_tables(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        raise NotImplementedError(f"the {self.name} attention backend builds no decode tables")

    def prefill(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.prefill_tables is not None:
            return self.prefill_from_tables(q, k_cache, v_cache, meta, scale)
        return prefill_chunks_attention(q, k, v, k_cache, v_cache, meta, scale)

    def prefill_from_tables(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        raise NotImplementedError(f"the {self.name} attention backend builds no prefill tables")


class CpuAttention(AttentionBackend):
    """qfid's CPU kernels; the prefill kernel reads bf16 only, so other dtypes keep SDPA chunks."""

    name = "cpu"
    decode_tables = True

    def __init__(self, dtype: torch.dtype):
        from qfid.kernels import cpu

        self.ops = cpu
        self.prefill_tables = dtype == torch.bfloat16

    def store(self, k_cache, v_cache, k, v, slot_mapping) -> None:
        self.ops.store_kv(k_cache, v_cache, k, v, slot_mapping)

    def decode_from_tables(self, q, k_cache, v_cache, meta, scale):
        return self.ops.paged_decode_attention(q, k_cache, v_cache, meta.decode_tables, meta.decode_lens, scale)

    def prefill_from_tables(self, q, k_cache, v_cache, meta, scale):
        return self.ops.paged_prefill_attention(q, k_cache, v_cache, meta.prefill_tables, meta.prefill_starts,
                                                meta.prefill_lens, scale)


class TritonAttention(AttentionBackend):
    """The Triton paged decode kernel over the engine's own cache layout (a strided view
    [blocks, block_size, kv_heads, d], no copy), split over the KV length so a few long
    sequences still fill the GPU. The split size is fixed per engine (from the longest
    table a sequence can have, `max_blocks`, set by the runner), not per step: every step,
    eager or a CUDA-graph replay of any bucket, then cuts a sequence at the same blocks and
    reduces in the same order, so the two agree bit for bit. `blocks_per_split` overrides it
    (tests force small splits). Prefill stays on SDPA chunks (flash attention on CUDA)."""

    name = "triton"
    decode_tables = True

    def __init__(self, blocks_per_split: int | None = None, max_blocks: int | None = None):
        from qfid.kernels import triton_ops

        self.ops = triton_ops
        self.blocks_per_split = blocks_per_split
        self.max_blocks = max_blocks

    def plan(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks

    def split_blocks(self, device: torch.device, kv_heads: int, width: int) -> int:
        if self.blocks_per_split:
            return self.blocks_per_split
        return self.ops.decode_split_blocks(device, kv_heads, self.max_blocks or width)

    def decode_from_tables(self, q, k_cache, v_cache, meta, scale):
        per_split = self.split_blocks(q.device, k_cache.shape[0], meta.decode_tables.shape[1])
        return self.ops.paged_attention_decode(q.contiguous(), k_cache.permute(1, 2, 0, 3), v_cache.permute(1, 2, 0, 3),
                                               meta.decode_tables, meta.decode_lens, scale, per_split)


def select_attention_backend(device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int,
                             requested: str | None = None) -> AttentionBackend:
    """The backend object for a model (see `kernels.dispatch.attention_backend`)."""
    name = dispatch.attention_backend(device, dtype, heads, kv_heads, head_dim, requested)
    if name == "cpu":
        return CpuAttention(dtype)
    if name == "triton":
        return TritonAttention()
    return AttentionBackend()
