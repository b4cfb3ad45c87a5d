"""One request as the scheduler sees it: its tokens, how many of them already have K/V in
the cache, and which cache blocks hold them.

`num_computed_tokens` is the single progress counter that makes chunked prefill, decode,
prefix-cache hits and preemption-by-recompute the same thing: each step computes the next
`num_tokens - num_computed_tokens` tokens (or a chunk of them), and a token is sampled only
when that counter reaches the end. No torch here: the scheduler and block manager import it.
"""
from __future__ import annotations

from enum import Enum
from itertools import count


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = count()


class Sequence:
    """A request's token stream and its place in the KV cache.

    `params` is the request's SamplingParams; only `max_tokens`, `ignore_eos`,
    `stop_token_ids` and `prompt_logprobs` are read here (duck-typed so this module stays
    torch-free).
    `generator` belongs to the sampler (a per-request seeded RNG, created lazily)."""

    def __init__(self, prompt_token_ids: list[int], params, seq_id: int | None = None):
        if not prompt_token_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.seq_id = next(_ids) if seq_id is None else seq_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.finish_reason: str | None = None
        self.output_logprobs: list[dict[int, float]] = []
        self.prompt_logprobs: list[dict[int, float] | None] = [None]  # the first token has no context
        self.num_preemptions = 0
        self.generator = None
        self.num_draft_tokens = 0   # speculative drafts at the end of token_ids, pending verification

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
                f"blocks={self.block_table}, {self.status.value})")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def cacheable_tokens(self) -> int:
        """How many leading tokens may be served from the prefix cache: all but the last
        (its logits are needed to sample); with prompt logprobs, only those before the first
        position whose logits are needed (`prompt_logprobs_start - 1`)."""
        limit = self.num_tokens - 1
        if getattr(self.params, "prompt_logprobs", None) is not None:
            limit = min(limit, getattr(self.params, "prompt_logprobs_start", 1) - 1)
        return max(0, limit)

    def block_tokens(self, index: int, block_size: int) -> tuple[int, ...]:
        return tuple(self.token_ids[index * block_size:(index + 1) * block_size])

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def stop_reason(self, eos_token_ids: frozenset[int], max_model_len: int) -> str | None:
        """Why generation ends after the token just appended, or None to go on.
        'stop' for EOS or a stop token id, 'length' for max_tokens or the context limit."""
        last = self.token_ids[-1]
        params = self.params
        if not params.ignore_eos and last in eos_token_ids:
            return "stop"
        if last in params.stop_token_ids:
            return "stop"
        if self.num_output_tokens >= params.max_tokens or self.num_tokens >= max_model_len:
            return "length"
        return None
