"""Speculative decoding: a cheap proposer drafts k tokens, one forward verifies them.

How it runs in this engine (vLLM's scheme, on qfid's existing paths):
- the scheduler asks the proposer for up to k drafts for each decoding sequence, appends
  them to the sequence's tokens and schedules 1 + k tokens: the verify step is a prefill
  chunk over the paged KV cache (causal over the cached context and the drafts), so no new
  attention path exists and CUDA graphs, which capture decode-only steps, are not used for it
  (a verify step runs eager);
- the runner takes logits at all 1 + k rows and `verify` decides how many drafts to keep:
  at temperature 0 the longest prefix equal to the model's argmax (so the output equals
  greedy decoding token for token), else rejection sampling (Leviathan et al. 2023; Chen et
  al. 2023) with the draft distribution q: accept draft d with probability min(1, p(d)/q(d)),
  on rejection draw from normalize(max(p - q, 0)), and after k acceptances draw a bonus token
  from p, so every emitted token is distributed exactly as the model's sampler would draw it;
- the scheduler drops the rejected drafts, counts the accepted ones as computed (their K/V
  was written by the verify step) and frees KV blocks held only for rejected drafts.

Speculation pays while a step is memory-bound (small batches: the weights are read once for
1 + k tokens per sequence); above `max_batch` running sequences the step is compute-bound
and every rejected draft is wasted work, so the scheduler stops proposing.

Proposers share one small interface: `propose(seq, limit) -> drafts` and `release(seq)`
(the sequence finished). `NgramProposer` is prompt lookup decoding (Saxena 2023; vLLM's
`ngram`): the last n tokens are searched for earlier in the sequence and the tokens that
followed are the draft. `DraftModelProposer` (draft_model.py) decodes greedily with a smaller
model that shares the tokenizer, from its own paged KV cache. Both draft greedily, so q is
one-hot at the draft. No torch in this module: the scheduler imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

SPECULATIVE_METHODS = ("ngram", "draft:PATH")
DRAFT_PREFIX = "draft:"


class NgramProposer:
    """Draft by prompt lookup: the longest suffix n-gram (n from `n_max` down to `n_min`)
    that occurred earlier in the sequence, most recent occurrence first, proposes the up to
    k tokens that followed it."""

    def __init__(self, k: int, n_max: int = 3, n_min: int = 1, window: int = 1024):
        self.k, self.n_max, self.n_min, self.window = k, n_max, n_min, window

    def propose(self, seq, limit: int) -> list[int]:
        return self.propose_tokens(seq.token_ids, limit)

    def release(self, seq) -> None:
        """Nothing is held per sequence."""

    def propose_tokens(self, token_ids: list[int], limit: int) -> list[int]:
        k = min(self.k, limit)
        if k <= 0:
            return []
        tokens = token_ids[-self.window:]
        for n in range(min(self.n_max, len(tokens) - 1), self.n_min - 1, -1):
            suffix = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):
                if tokens[start:start + n] == suffix:
                    return tokens[start + n:start + n + k]
        return []


def is_speculative_method(name: str) -> bool:
    return name == "ngram" or (name.startswith(DRAFT_PREFIX) and len(name) > len(DRAFT_PREFIX))


def make_proposer(config, target_model=None, max_model_len: int = 2048):
    """The proposer an EngineConfig asks for (`speculative`), or None."""
    if config.speculative is None:
        return None
    if config.speculative == "ngram":
        return NgramProposer(config.num_speculative_tokens)
    if config.speculative.startswith(DRAFT_PREFIX):
        from qfid.engine.draft_model import DraftModelProposer

        return DraftModelProposer(config.speculative[len(DRAFT_PREFIX):], config, target_model, max_model_len)
    raise ValueError(f"unknown speculative method {config.speculative!r}")   # EngineConfig validates first


@dataclass
class SpecStats:
    """What /metrics and `qfid bench` report: acceptance rate and tokens per verify step."""

    verify_steps: int = 0        # sequence-steps that verified at least one draft
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0             # accepted drafts + the token each verify step adds

    def record(self, drafted: int, emitted: int) -> None:
        self.verify_steps += 1
        self.drafted += drafted
        self.accepted += emitted - 1
        self.emitted += emitted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.emitted / self.verify_steps if self.verify_steps else 0.0

    def to_dict(self) -> dict:
        return {"verify_steps": self.verify_steps, "drafted_tokens": self.drafted, "accepted_tokens": self.accepted,
                "acceptance_rate": self.acceptance_rate, "tokens_per_verify_step": self.tokens_per_step}


def verify_greedy(target_argmax: list[int], drafts: list[int]) -> list[int]:
    """Emitted tokens at temperature 0: drafts while they equal the model's argmax, then the
    model's own token (`target_argmax` has one more entry than `drafts`)."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == target_argmax[accepted]:
        accepted += 1
    return target_argmax[:accepted + 1]


def rejection_sample(probs, drafts: list[int], draft_probs=None, generator=None) -> list[int]:
    """Emitted tokens for temperature > 0. `probs` [k + 1, V]: the model's sampling
    distributions (after temperature / top-k / top-p) at the draft positions and after them;
    `draft_probs` [k, V] the proposer's, None for a one-hot proposer (n-gram). Every draft's
    accept test is one tensor op and one read back to the host (a step's only wait)."""
    import torch

    k = len(drafts)
    uniforms = torch.rand(k, generator=generator, device=probs.device)
    index = torch.tensor(drafts, device=probs.device)
    p_draft = probs[torch.arange(k, device=probs.device), index]
    q_draft = 1.0 if draft_probs is None else draft_probs[torch.arange(k, device=probs.device), index]
    accepted = (uniforms * q_draft < p_draft).tolist()   # accept with probability min(1, p/q)
    kept = next((j for j, ok in enumerate(accepted) if not ok), k)
    if kept == k:
        return drafts + [_draw(probs[k], generator)]
    p = probs[kept]
    if draft_probs is None:
        residual = p.clone()
        residual[drafts[kept]] = 0.0
    else:
        residual = (p - draft_probs[kept]).clamp_min(0.0)
    if float(residual.sum()) <= 0:   # p <= q everywhere means p == q: rounding rejected; draw from p
        residual = p
    return drafts[:kept] + [_draw(residual, generator)]


def _draw(weights, generator) -> int:
    """One index drawn proportionally to non-negative `weights` (not normalized)."""
    import torch

    return int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
