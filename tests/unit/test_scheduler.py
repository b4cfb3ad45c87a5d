"""Scheduler + BlockManager without a model.

`FakeRunner` stands in for the model: it writes each computed token into a simulated KV
cache at the slots the block tables give, checks that every context slot a sequence reads
holds that sequence's own token, and 'samples' a next token from what it read. A block
leaked, shared wrongly or overwritten therefore changes the output or trips an assert.
"""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfid.engine.block_manager import BlockManager
from qfid.engine.scheduler import Scheduler
from qfid.engine.sequence import Sequence, SequenceStatus
from qfid.errors import QfidError

VOCAB = 50


def params(max_tokens=4, **overrides):
    base = dict(max_tokens=max_tokens, ignore_eos=True, stop_token_ids=(), prompt_logprobs=None)
    return SimpleNamespace(**{**base, **overrides})


def next_token(context: list[int]) -> int:
    return (sum((i + 1) * t for i, t in enumerate(context)) + 7) % VOCAB


class FakeRunner:
    def __init__(self, manager: BlockManager):
        self.manager = manager
        self.cache: dict[int, int] = {}

    def slot(self, seq: Sequence, position: int) -> int:
        size = self.manager.block_size
        return seq.block_table[position // size] * size + position % size

    def run(self, batch) -> list[int | None]:
        sampled = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            for position in range(start):
                assert self.cache[self.slot(seq, position)] == seq.token_ids[position], f"{seq} read a foreign slot"
            for position in range(start, start + num_new):
                self.cache[self.slot(seq, position)] = seq.token_ids[position]
            done = start + num_new == seq.num_tokens
            read = [self.cache[self.slot(seq, p)] for p in range(start + num_new)]
            sampled.append(next_token(read) if done else None)
        return sampled


def reference_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(prompt):]


def make(num_blocks=64, block_size=4, budget=64, max_seqs=8, **kw):
    manager = BlockManager(num_blocks, block_size)
    return manager, Scheduler(manager, max_num_seqs=max_seqs, max_num_batched_tokens=budget, **kw), FakeRunner(manager)


def step(scheduler: Scheduler, runner: FakeRunner):
    batch = scheduler.schedule()
    assert batch.num_tokens <= scheduler.max_num_batched_tokens
    scheduler.postprocess(batch, runner.run(batch))
    return batch


def run_all(scheduler, runner, max_steps=10_000):
    for _ in range(max_steps):
        if not scheduler.has_unfinished():
            return
        step(scheduler, runner)
    raise AssertionError("scheduler made no progress")


def test_scheduler_and_block_manager_import_no_torch():
    code = "import sys, qfid.engine.scheduler, qfid.engine.block_manager; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_single_request_prefills_then_decodes_and_frees():
    manager, scheduler, runner = make()
    seq = Sequence(list(range(10)), params(max_tokens=3))
    scheduler.add(seq)
    first = step(scheduler, runner)
    assert first.num_new_tokens == [10] and seq.num_output_tokens == 1
    assert step(scheduler, runner).num_new_tokens == [1]
    step(scheduler, runner)
    assert seq.is_finished and seq.finish_reason == "length"
    assert seq.output_token_ids == reference_output(list(range(10)), 3)
    assert manager.num_free_blocks == manager.num_blocks and not scheduler.has_unfinished()


def test_chunked_prefill_samples_only_after_the_last_chunk():
    _, scheduler, runner = make(budget=16)
    seq = Sequence(list(range(40)), params(max_tokens=2))
    scheduler.add(seq)
    chunks = [step(scheduler, runner).num_new_tokens[0] for _ in range(3)]
    assert chunks == [16, 16, 8]
    assert seq.num_output_tokens == 1 and seq.num_computed_tokens == 40


def test_decodes_go_first_and_prefill_takes_the_remaining_budget():
    _, scheduler, runner = make(budget=10)
    old = Sequence([1, 2, 3], params(max_tokens=5))
    scheduler.add(old)
    step(scheduler, runner)
    scheduler.add(Sequence(list(range(30)), params()))
    batch = step(scheduler, runner)
    assert batch.seqs[0] is old and batch.num_new_tokens == [1, 9]


def test_max_num_seqs_caps_the_running_set():
    _, scheduler, runner = make(max_seqs=2)
    for i in range(3):
        scheduler.add(Sequence([i + 1] * 3, params()))
    assert len(step(scheduler, runner)) == 2 and len(scheduler.waiting) == 1


def test_fifo_head_of_line_is_not_overtaken():
    manager, scheduler, runner = make(num_blocks=6, block_size=4, budget=64)
    scheduler.add(Sequence(list(range(12)), params(max_tokens=4)))  # 3 blocks, grows to 4
    step(scheduler, runner)
    big, small = Sequence(list(range(20, 36)), params(max_tokens=1)), Sequence([1], params(max_tokens=1))
    scheduler.add(big)
    scheduler.add(small)
    step(scheduler, runner)
    assert list(scheduler.waiting) == [big, small]  # small would fit, but waits its turn
    run_all(scheduler, runner)
    assert big.output_token_ids == reference_output(list(range(20, 36)), 1)


def test_preemption_recomputes_the_newest_and_it_resumes_correctly():
    manager, scheduler, runner = make(num_blocks=4, block_size=4, budget=64)
    old, new = Sequence([1, 2, 3, 4, 5, 6, 7], params(max_tokens=8)), Sequence([9, 8, 7, 6, 5, 4], params(max_tokens=8))
    scheduler.add(old)
    scheduler.add(new)
    preempted_at = None
    for i in range(40):
        if not scheduler.has_unfinished():
            break
        step(scheduler, runner)
        if preempted_at is None and new.status is SequenceStatus.WAITING:
            preempted_at = i
            assert scheduler.waiting[0] is new and new.block_table == [] and new.num_computed_tokens == 0
            assert new.num_output_tokens > 0  # its generated tokens are kept, to be recomputed
    assert preempted_at is not None and scheduler.num_preemptions >= 1 and old.num_preemptions == 0
    assert old.output_token_ids == reference_output([1, 2, 3, 4, 5, 6, 7], 8)
    assert new.output_token_ids == reference_output([9, 8, 7, 6, 5, 4], 8)
    assert manager.num_free_blocks == 4


def test_resumed_sequence_hits_its_own_cached_prefix():
    manager, scheduler, runner = make(num_blocks=6, block_size=4, budget=64)
    old = Sequence(list(range(1, 9)), params(max_tokens=12))
    new = Sequence(list(range(20, 29)), params(max_tokens=12))
    scheduler.add(old)
    scheduler.add(new)
    hits_before = None
    while new.status is not SequenceStatus.WAITING or hits_before is None:
        hits_before = manager.prefix_hits
        step(scheduler, runner)
    run_all(scheduler, runner)
    assert manager.prefix_hits > hits_before
    assert new.output_token_ids == reference_output(list(range(20, 29)), 12)


def test_prefix_hit_skips_computing_shared_blocks():
    _, scheduler, runner = make(block_size=4)
    scheduler.add(Sequence(list(range(10)), params(max_tokens=1)))
    run_all(scheduler, runner)
    again = Sequence(list(range(8)) + [40, 41, 42], params(max_tokens=1))
    scheduler.add(again)
    assert step(scheduler, runner).num_new_tokens == [3]
    assert again.output_token_ids == reference_output(list(range(8)) + [40, 41, 42], 1)


def test_eos_and_stop_token_ids_finish_with_stop():
    eos = next_token([5, 6])
    _, scheduler, runner = make(eos_token_ids=frozenset({eos}))
    by_eos = Sequence([5, 6], params(max_tokens=9, ignore_eos=False))
    ignoring = Sequence([5, 6], params(max_tokens=3, ignore_eos=True))
    by_stop_id = Sequence([5, 6], params(max_tokens=9, stop_token_ids=(eos,)))
    for seq in (by_eos, ignoring, by_stop_id):
        scheduler.add(seq)
    run_all(scheduler, runner)
    assert (by_eos.finish_reason, by_eos.num_output_tokens) == ("stop", 1)
    assert (ignoring.finish_reason, ignoring.num_output_tokens) == ("length", 3)
    assert (by_stop_id.finish_reason, by_stop_id.num_output_tokens) == ("stop", 1)


def test_context_limit_finishes_with_length():
    _, scheduler, runner = make(max_model_len=6)
    seq = Sequence([1, 2, 3, 4], params(max_tokens=100))
    scheduler.add(seq)
    run_all(scheduler, runner)
    assert seq.num_tokens == 6 and seq.finish_reason == "length"


def test_finish_frees_running_and_waiting_sequences():
    manager, scheduler, runner = make(max_seqs=1)
    running, waiting = Sequence([1, 2, 3], params(max_tokens=50)), Sequence([4], params())
    scheduler.add(running)
    scheduler.add(waiting)
    step(scheduler, runner)
    scheduler.finish(running, "abort")
    scheduler.finish(waiting, "abort")
    scheduler.finish(waiting, "abort")  # idempotent
    assert not scheduler.has_unfinished() and manager.num_free_blocks == manager.num_blocks
    assert running.finish_reason == waiting.finish_reason == "abort"


def test_requests_that_can_never_fit_are_refused():
    _, scheduler, _ = make(num_blocks=2, block_size=4, max_model_len=100)
    with pytest.raises(QfidError, match="does not fit in the KV cache"):
        scheduler.add(Sequence([1] * 6, params(max_tokens=4)))
    with pytest.raises(QfidError, match="context limit"):
        scheduler.add(Sequence([1] * 100, params(max_tokens=1)))


def check_invariants(manager: BlockManager, scheduler: Scheduler) -> None:
    """Reference counts equal holders; free list = unreferenced blocks; a block shared by
    several sequences is a full, computed block holding the same tokens for each."""
    holders: dict[int, list[tuple[Sequence, int]]] = {}
    for seq in scheduler.running:
        assert len(set(seq.block_table)) == len(seq.block_table)
        assert len(seq.block_table) * manager.block_size >= seq.num_computed_tokens
        for index, block_id in enumerate(seq.block_table):
            holders.setdefault(block_id, []).append((seq, index))
    for seq in scheduler.waiting:
        assert seq.block_table == [] and seq.num_computed_tokens == 0
    for block in manager.blocks:
        assert block.ref_count == len(holders.get(block.block_id, []))
    assert manager.num_free_blocks == sum(1 for b in manager.blocks if b.ref_count == 0)
    size = manager.block_size
    for block_id, users in holders.items():
        if len(users) > 1:
            contents = {seq.block_tokens(index, size) for seq, index in users}
            assert len(contents) == 1 and len(next(iter(contents))) == size
            assert all((index + 1) * size <= seq.num_computed_tokens for seq, index in users)


request = st.tuples(
    st.sampled_from([(), (1, 2, 3, 4, 5, 6, 7, 8), (9, 9, 9, 9, 1, 2)]),  # shared prefixes
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20),
    st.integers(1, 10),  # max_tokens
    st.integers(0, 3),  # arrives after this many steps
    st.booleans(),  # asks for prompt logprobs (no prefix cache)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(request, min_size=1, max_size=12),
    num_blocks=st.integers(8, 24),
    block_size=st.sampled_from([1, 2, 4, 8]),
    budget=st.integers(1, 48),
    max_seqs=st.integers(1, 6),
)
def test_random_streams_never_leak_or_share_blocks_wrongly(requests, num_blocks, block_size, budget, max_seqs):
    manager = BlockManager(num_blocks, block_size)
    scheduler = Scheduler(manager, max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=10_000)
    runner = FakeRunner(manager)
    pending = sorted(enumerate(requests), key=lambda item: item[1][3])
    seqs = []
    for tick in range(5_000):
        while pending and pending[0][1][3] <= tick:
            _, (prefix, body, max_tokens, _, logprobs) = pending.pop(0)
            seq = Sequence(list(prefix) + body, params(max_tokens=max_tokens, prompt_logprobs=1 if logprobs else None))
            try:
                scheduler.add(seq)
            except QfidError:
                continue  # larger than the whole cache: refused up front
            seqs.append(seq)
        if not pending and not scheduler.has_unfinished():
            break
        step(scheduler, runner)
        check_invariants(manager, scheduler)
    assert not scheduler.has_unfinished(), "stalled"
    assert manager.num_free_blocks == num_blocks
    for seq in seqs:
        prompt = seq.token_ids[:seq.num_prompt_tokens]
        assert seq.output_token_ids == reference_output(prompt, seq.params.max_tokens)
