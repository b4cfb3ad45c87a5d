"""Continuous batching: which sequences compute how many tokens in the next step.

Each step has a token budget (`max_num_batched_tokens`) and a cap on running sequences.
Running sequences go first, oldest first: a decoding sequence costs one token, a sequence
still in prefill takes the next chunk of its prompt that fits (chunked prefill, so one long
prompt cannot stall everyone's decode). Waiting sequences are admitted strictly in arrival
order (fair FIFO: a big request at the head is never overtaken) while budget, sequence slots
and KV blocks for their whole remaining prompt last. When a running sequence needs a block
and none is free, the newest running sequence is preempted by recompute: its blocks are
freed and it goes back to the head of the queue, to recompute its tokens later (often from
the prefix cache). With a speculative proposer, a decoding sequence also carries up to k
drafted tokens into the step (verified by one forward, see speculative.py) while no more than
`speculative_max_batch` sequences run. No torch here.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from qfid.engine.block_manager import BlockManager
from qfid.engine.sequence import Sequence, SequenceStatus
from qfid.engine.speculative import SpecStats
from qfid.errors import QfidError


@dataclass
class ScheduledBatch:
    """The sequences of one step and how many new tokens each computes; a sequence whose
    chunk reaches its last token gets a sampled token back."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 256, max_num_batched_tokens: int = 2048,
                 max_model_len: int = 8192, eos_token_ids: frozenset[int] = frozenset(), proposer=None,
                 speculative_max_batch: int = 8):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise QfidError("max_num_seqs and max_num_batched_tokens must be at least 1")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.proposer = proposer
        self.speculative_max_batch = speculative_max_batch
        self.spec_stats = SpecStats()

    def add(self, seq: Sequence) -> None:
        """Queue a request, refusing one that could never fit even with the cache to itself."""
        longest = min(seq.num_prompt_tokens + seq.params.max_tokens, self.max_model_len)
        if seq.num_prompt_tokens >= self.max_model_len:
            raise QfidError(f"prompt has {seq.num_prompt_tokens} tokens; the context limit is {self.max_model_len}")
        if self.block_manager.blocks_for(longest) > self.block_manager.num_blocks:
            raise QfidError(f"prompt + max_tokens = {longest} tokens does not fit in the KV cache "
                            f"({self.block_manager.num_blocks} blocks of {self.block_manager.block_size})")
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Admission waits while anyone was preempted this step: memory is short."""
        batch = ScheduledBatch()
        preemptions_before = self.num_preemptions
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        if self.num_preemptions == preemptions_before:
            self._admit_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        """Oldest first; frees blocks by preempting the newest when one is short."""
        speculate = self.proposer is not None and len(self.running) <= self.speculative_max_batch
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget)
            while not self.block_manager.can_allocate(seq, num_new):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    return budget
            self.block_manager.allocate(seq, num_new)
            if speculate and seq.num_uncomputed_tokens == 1:
                num_new += self._add_drafts(seq, budget - num_new)
            batch.add(seq, num_new)
            budget -= num_new
            index += 1
        return budget

    def _add_drafts(self, seq: Sequence, budget: int) -> int:
        """Append the proposer's drafts to a decoding sequence when their KV slots are free
        (drafts never preempt anyone); at most as many as its remaining output and context
        allow, since every draft may be emitted along with one more token."""
        limit = min(budget, seq.params.max_tokens - seq.num_output_tokens - 1, self.max_model_len - seq.num_tokens - 1)
        drafts = self.proposer.propose(seq, limit) if limit > 0 else []
        if not drafts or not self.block_manager.can_allocate(seq, 1 + len(drafts)):
            return 0
        self.block_manager.allocate(seq, 1 + len(drafts))
        seq.token_ids.extend(drafts)
        seq.num_draft_tokens = len(drafts)
        return len(drafts)

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        """FIFO: stop at the first request that does not fit. Blocks for its whole remaining
        prompt are taken up front so an admitted prefill is never preempted by its own chunks."""
        manager = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            manager.match_prefix(seq)
            if not manager.can_allocate(seq, seq.num_uncomputed_tokens):
                manager.free(seq)
                return
            manager.allocate(seq, seq.num_uncomputed_tokens)
            num_new = min(seq.num_uncomputed_tokens, budget)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, num_new)
            budget -= num_new

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def postprocess(self, batch: ScheduledBatch, sampled: list) -> list[Sequence]:
        """Advance each sequence by its chunk; append the sampled token where the chunk
        reached the end (a list of tokens where drafts were verified). Returns the sequences
        that finished."""
        finished = []
        for seq, num_new, token in zip(batch.seqs, batch.num_new_tokens, sampled):
            if seq.is_finished:  # aborted while the step ran
                self._drop_drafts(seq)
                continue
            if seq.num_draft_tokens:
                if self._accept(seq, token):
                    finished.append(seq)
                continue
            seq.num_computed_tokens += num_new
            self.block_manager.cache_computed_blocks(seq, seq.num_computed_tokens - num_new)
            if seq.num_uncomputed_tokens:
                continue
            seq.append_token(token)
            reason = seq.stop_reason(self.eos_token_ids, self.max_model_len)
            if reason:
                self.finish(seq, reason)
                finished.append(seq)
        return finished

    def _drop_drafts(self, seq: Sequence) -> int:
        drafts, seq.num_draft_tokens = seq.num_draft_tokens, 0
        if drafts:
            del seq.token_ids[-drafts:]
        return drafts

    def _accept(self, seq: Sequence, emitted: list[int]) -> bool:
        """Replace the drafts by the verified tokens: K/V is valid for the last real token
        and every accepted draft (those emitted before the last), so they count as computed;
        blocks held only for rejected drafts are released. True when the sequence finished
        (a stop condition can fall on an accepted draft: later tokens are dropped)."""
        before = seq.num_computed_tokens
        drafted = self._drop_drafts(seq)
        self.spec_stats.record(drafted, len(emitted))
        reason = None
        for appended, token in enumerate(emitted, 1):
            seq.append_token(token)
            reason = seq.stop_reason(self.eos_token_ids, self.max_model_len)
            if reason:
                break
        seq.num_computed_tokens = before + appended
        self.block_manager.cache_computed_blocks(seq, before)
        self.block_manager.trim(seq)
        if reason:
            self.finish(seq, reason)
        return reason is not None

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a sequence for any reason (stop, length, a stop string, abort) and free its blocks."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if self.proposer is not None:
            self.proposer.release(seq)
