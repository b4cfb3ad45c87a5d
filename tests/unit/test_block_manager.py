"""BlockManager without a model: allocation, freeing, reference counts, prefix caching."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from qfid.engine.block_manager import BlockManager
from qfid.engine.sequence import Sequence


def params(**overrides):
    base = dict(max_tokens=16, ignore_eos=False, stop_token_ids=(), prompt_logprobs=None)
    return SimpleNamespace(**{**base, **overrides})


def seq_of(tokens, **overrides) -> Sequence:
    return Sequence(list(tokens), params(**overrides))


def computed(manager: BlockManager, seq: Sequence) -> Sequence:
    """Allocate and 'compute' the whole sequence, publishing its full blocks."""
    manager.allocate(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    manager.cache_computed_blocks(seq)
    return seq


def test_allocation_covers_tokens_and_free_returns_blocks():
    manager = BlockManager(num_blocks=8, block_size=4)
    seq = seq_of(range(10))
    assert manager.num_new_blocks(seq, 10) == 3
    manager.allocate(seq, 10)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert manager.num_free_blocks == 5
    assert all(manager.blocks[b].ref_count == 1 for b in seq.block_table)
    seq.num_computed_tokens = 10
    assert manager.num_new_blocks(seq, 1) == 0  # slot 11 is in block 3
    assert manager.num_new_blocks(seq, 3) == 1
    manager.free(seq)
    assert manager.num_free_blocks == 8 and seq.block_table == [] and seq.num_computed_tokens == 0


def test_cannot_allocate_past_the_free_list():
    manager = BlockManager(num_blocks=2, block_size=4)
    seq = seq_of(range(9))
    assert not manager.can_allocate(seq, 9)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        manager.allocate(seq, 9)
    assert manager.num_free_blocks == 2 and seq.block_table == []


def test_prefix_hit_shares_full_blocks_and_counts_references():
    manager = BlockManager(num_blocks=16, block_size=4)
    first = computed(manager, seq_of(range(11)))  # blocks: [0..3] [4..7] [8,9,10]
    second = seq_of(list(range(8)) + [99, 98, 97])
    assert manager.match_prefix(second) == 8
    assert second.block_table == first.block_table[:2]
    assert [manager.blocks[b].ref_count for b in first.block_table] == [2, 2, 1]
    manager.allocate(second, second.num_uncomputed_tokens)
    assert second.block_table[2] != first.block_table[2]
    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 16


def test_prefix_survives_its_owner_until_evicted():
    manager = BlockManager(num_blocks=4, block_size=4)
    manager.free(computed(manager, seq_of(range(9))))
    again = seq_of(list(range(8)) + [50])
    assert manager.match_prefix(again) == 8
    manager.free(again)
    hog = seq_of([7] * 16)
    manager.allocate(hog, 16)  # takes every block, evicting the cached prefix
    manager.free(hog)
    assert manager.match_prefix(seq_of(list(range(8)) + [50])) == 0


def test_last_prompt_token_is_never_served_from_cache():
    manager = BlockManager(num_blocks=8, block_size=4)
    manager.free(computed(manager, seq_of(range(8))))
    same = seq_of(range(8))
    assert manager.match_prefix(same) == 4  # the second block holds the last token: recompute it
    assert same.num_uncomputed_tokens == 4


def test_hash_chain_needs_the_whole_prefix_to_match():
    manager = BlockManager(num_blocks=8, block_size=4)
    computed(manager, seq_of([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert manager.match_prefix(seq_of([0, 2, 3, 4, 5, 6, 7, 8, 9])) == 0  # same 2nd block, other parent


def test_prompt_logprob_requests_compute_everything():
    manager = BlockManager(num_blocks=8, block_size=4)
    computed(manager, seq_of(range(9)))
    assert manager.match_prefix(seq_of(range(9), prompt_logprobs=0)) == 0  # 0: the actual token only


def test_prefix_caching_can_be_switched_off():
    manager = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    computed(manager, seq_of(range(9)))
    assert manager.match_prefix(seq_of(range(9))) == 0


def test_concurrent_duplicates_keep_private_blocks_and_free_cleanly():
    manager = BlockManager(num_blocks=8, block_size=4)
    a = computed(manager, seq_of(range(8)))
    b = computed(manager, seq_of(range(8)))  # computed at the same time, before any hit
    assert set(a.block_table).isdisjoint(b.block_table)
    published = a.block_table[0]
    manager.free(a)
    manager.free(b)
    assert manager.num_free_blocks == 8
    hit = seq_of(list(range(4)) + [9])
    assert manager.match_prefix(hit) == 4 and hit.block_table == [published]


def test_free_list_hands_out_least_recently_freed_cached_blocks_first():
    manager = BlockManager(num_blocks=4, block_size=2)
    old, new = computed(manager, seq_of(range(4))), computed(manager, seq_of(range(10, 14)))
    old_blocks = list(old.block_table)
    manager.free(old)
    manager.free(new)
    taker = seq_of(range(20, 24))
    manager.allocate(taker, 4)
    assert taker.block_table == old_blocks[::-1]  # the old sequence's blocks, tail first


def test_blocks_holding_nothing_findable_are_reused_before_fresh_and_cached_ones():
    """A freed block with no hash is handed out next (its pages are mapped; a fresh block's
    fault on first touch); cached blocks still wait behind the never-used ones."""
    for caching in (True, False):
        manager = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=caching)
        cached = computed(manager, seq_of(range(4)))            # two full blocks, hashed when caching
        partial = seq_of(range(10, 13))
        manager.allocate(partial, 3)                              # never computed: no hashes
        cached_blocks, partial_blocks = list(cached.block_table), list(partial.block_table)
        manager.free(cached)
        manager.free(partial)
        taker = seq_of(range(20, 36))
        manager.allocate(taker, 16)
        first = taker.block_table[:2]
        assert sorted(first) == sorted(partial_blocks)
        rest = taker.block_table[2:]
        if caching:   # the never-used blocks, then the cached ones, least recently freed first
            assert rest[-2:] == cached_blocks[::-1] and set(rest[:-2]).isdisjoint(cached_blocks)
        else:         # nothing is findable: every freed block comes before the never-used ones
            assert sorted(rest[:2]) == sorted(cached_blocks)


def test_double_free_is_detected():
    manager = BlockManager(num_blocks=2, block_size=2)
    seq = seq_of([1, 2])
    manager.allocate(seq, 2)
    table = list(seq.block_table)
    manager.free(seq)
    seq.block_table = table
    with pytest.raises(RuntimeError, match="freed more often"):
        manager.free(seq)


def test_trim_releases_blocks_taken_for_rejected_drafts():
    """A decode step with 6 drafts takes blocks for positions 8..14 (4 blocks of 4); when
    verification leaves the sequence 11 tokens long, the block past the 11th token goes back."""
    manager = BlockManager(num_blocks=8, block_size=4)
    seq = computed(manager, seq_of(range(9)))
    seq.num_computed_tokens = 8                     # the last prompt token is still to compute
    manager.allocate(seq, 1 + 6)                    # last token + 6 drafts: positions 8..14
    assert len(seq.block_table) == 4 and manager.num_free_blocks == 4
    seq.token_ids += [50, 51]                       # one accepted draft and the model's token: 11 tokens
    seq.num_computed_tokens = 10
    manager.trim(seq)
    assert len(seq.block_table) == 3 and manager.num_free_blocks == 5
    manager.free(seq)
    assert manager.num_free_blocks == 8
