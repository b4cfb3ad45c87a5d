"""Which KV-cache block holds which tokens: fixed-size blocks, a free list, reference counts,
and prefix caching by a hash chain over full blocks.

A full block's hash covers its own tokens *and* the hash of the block before it, so equal
hashes mean equal prefixes, not just equal 16-token windows. A block whose last user
finished keeps its hash and stays findable until the free list hands it out again; the
free list is ordered least-recently-freed first, so popular prefixes survive longest.
A freed block that holds nothing findable (no hash: a partial last block, or any block
with prefix caching off) goes to the front instead and is handed out next: its memory is
already mapped and likely in cache, where a never-used block's pages fault on first touch
(the CPU cache is zeros the OS maps lazily, engine/kv_cache.py: with the old order a run
walked the whole cache once before reusing a block, a page fault per block and head).
No torch here: this is bookkeeping over integers, unit-tested without a model.
"""
from __future__ import annotations

from collections import OrderedDict

from qfid.engine.sequence import Sequence

_NO_PARENT = -1


def chain_hash(parent: int, tokens: tuple[int, ...]) -> int:
    """Hash of a full block given its predecessor's hash (ints hash deterministically)."""
    return hash((parent, tokens))


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"Block({self.block_id}, refs={self.ref_count}, hashed={self.hash is not None})"


class BlockManager:
    """Allocates cache blocks to sequences; `seq.block_table[i]` holds tokens
    [i*block_size, (i+1)*block_size) of that sequence."""

    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token; got {num_blocks} x {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}
        self.prefix_hits = 0
        self.prefix_queries = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks the sequence still lacks to hold its computed tokens plus `num_new_tokens`."""
        return max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.num_new_blocks(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow the block table so the next `num_new_tokens` tokens have slots."""
        needed = self.num_new_blocks(seq, num_new_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {needed}, {len(self._free)} free")
        seq.block_table.extend(self._take_free_block() for _ in range(needed))

    def match_prefix(self, seq: Sequence) -> int:
        """Reuse cached blocks for the longest cached prefix of a sequence that holds no
        blocks yet; returns the number of tokens that need no computing. Only whole blocks
        within `seq.cacheable_tokens` qualify (never the last prompt token, whose logits are
        needed to sample, nor positions whose prompt logprobs were asked for)."""
        if seq.block_table or seq.num_computed_tokens:
            raise RuntimeError(f"prefix matching needs a fresh sequence; got {seq}")
        cacheable_blocks = seq.cacheable_tokens // self.block_size
        if not (self.enable_prefix_caching and cacheable_blocks):
            return 0
        self._extend_hashes(seq, cacheable_blocks)
        self.prefix_queries += 1
        for index, block_hash in enumerate(seq.block_hashes[:cacheable_blocks]):
            block_id = self._cached.get(block_hash)
            if block_id is None or self.blocks[block_id].token_ids != seq.block_tokens(index, self.block_size):
                break
            self._take_block(block_id)
            seq.block_table.append(block_id)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        self.prefix_hits += bool(seq.block_table)
        return seq.num_computed_tokens

    def cache_computed_blocks(self, seq: Sequence, num_previously_computed: int = 0) -> None:
        """Publish the hashes of blocks that are full and whose K/V is now written, so later
        requests with the same prefix can share them; blocks full before
        `num_previously_computed` were already offered. A block whose hash another block
        already holds stays private (two requests computed the same prefix at once)."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        self._extend_hashes(seq, num_full)
        for index in range(num_previously_computed // self.block_size, num_full):
            block = self.blocks[seq.block_table[index]]
            block_hash = seq.block_hashes[index]
            if block.hash is None and block_hash not in self._cached:
                block.hash = block_hash
                block.token_ids = seq.block_tokens(index, self.block_size)
                self._cached[block_hash] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; blocks nobody holds go to the free list, last
        block first, so a prefix's tail is evicted before its head."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def trim(self, seq: Sequence) -> None:
        """Release the blocks past those the sequence's tokens need: after speculative
        verification, blocks taken for drafts that were rejected."""
        keep = self.blocks_for(seq.num_tokens)
        for block_id in reversed(seq.block_table[keep:]):
            self._release(block_id)
        del seq.block_table[keep:]

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self._free[block_id] = None
            if block.hash is None:   # nothing to keep findable: reuse it first
                self._free.move_to_end(block_id, last=False)
        elif block.ref_count < 0:
            raise RuntimeError(f"block {block_id} freed more often than allocated")

    def _extend_hashes(self, seq: Sequence, num_full_blocks: int) -> None:
        """Hashes are a function of the tokens only, so they survive preemption."""
        hashes = seq.block_hashes
        while len(hashes) < num_full_blocks:
            parent = hashes[-1] if hashes else _NO_PARENT
            hashes.append(chain_hash(parent, seq.block_tokens(len(hashes), self.block_size)))

    def _take_free_block(self) -> int:
        """The front of the free list (see the module docstring); it forgets any prefix it cached."""
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            del self._cached[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id

    def _take_block(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1
