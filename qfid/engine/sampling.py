"""What a request wants sampled (`SamplingParams`) and the batched sampler that does it.

The sampler works on the whole batch's last-position logits at once: greedy rows take the
argmax; sampled rows are scaled by temperature, cut by top-k and top-p in one sort, and
drawn by the exponential-race trick (argmax of p / E with E ~ Exp(1)), which needs one noise
vector per row. That is what makes per-request seeds cheap: a seeded row draws its noise
from its own generator, so its tokens do not depend on what else shares the batch. Everything
runs on the logits' device (a seeded request's generator lives there too); `tolist()` at
the end is the step's one wait for the device.
Logprobs are always of the model's raw distribution (before temperature / top-k / top-p),
as in vLLM and the OpenAI API, because the evaluation compares models, not samplers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qfid.errors import QfidError
from qfid.kernels import dispatch

MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    """`temperature=0` is greedy. `top_k=0` (or -1) and `top_p=1` switch those cuts off.
    `logprobs=k` returns, per generated token, its logprob and the k most likely;
    `prompt_logprobs=k` the same for every prompt token from position
    `prompt_logprobs_start` on (default 1: all after the first; 0: the actual token only);
    earlier positions read None and cost no LM-head rows, which is what scoring a short
    continuation after a long context wants. `stop` strings end generation and are cut
    from the text."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] | list[str] | str = ()
    stop_token_ids: tuple[int, ...] | list[int] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    prompt_logprobs_start: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, f"max_tokens must be >= 1; got {self.max_tokens}")
        _check(self.temperature >= 0, f"temperature must be >= 0; got {self.temperature}")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be >= 0 (or -1 for off); got {self.top_k}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1]; got {self.top_p}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        _check(isinstance(self.prompt_logprobs_start, int) and self.prompt_logprobs_start >= 1,
               f"prompt_logprobs_start must be >= 1; got {self.prompt_logprobs_start}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or 0 <= value <= MAX_LOGPROBS, f"{name} must be between 0 and {MAX_LOGPROBS}; got {value}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise QfidError(message)


def sample(logits: torch.Tensor, seqs: list) -> list[int]:
    """One token per row of `logits` [B, V] for the sequences `seqs` (same order)."""
    params = [seq.params for seq in seqs]
    tokens = dispatch.argmax(logits)
    sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
    if sampled_rows:
        rows = torch.tensor(sampled_rows, device=logits.device)
        probs = _filtered_probs(logits[rows].float(), [params[i] for i in sampled_rows])
        noise = _exponential_noise(probs, [seqs[i] for i in sampled_rows])
        tokens[rows] = dispatch.argmax(probs / noise)
    return tokens.tolist()


def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Softmax of logits / T with everything outside each row's top-k and top-p zeroed."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
    sorted_logits, order = (logits / temperature).sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    # a top_k past the vocabulary keeps every token (and may not fit an int64: 2**63 from a client)
    top_k = torch.tensor([min(p.top_k, vocab) if p.top_k else vocab for p in params], device=device).unsqueeze(1)
    rank = torch.arange(vocab, device=device).unsqueeze(0)
    sorted_logits = sorted_logits.masked_fill(rank >= top_k, float("-inf"))
    top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # always keeps rank 0
    return torch.zeros_like(sorted_probs).scatter_(-1, order, sorted_probs)


def _exponential_noise(probs: torch.Tensor, seqs: list) -> torch.Tensor:
    noise = torch.empty_like(probs).exponential_()
    for row, seq in enumerate(seqs):
        generator = generator_of(seq, probs.device)
        if generator is not None:
            noise[row].exponential_(generator=generator)
    return noise


def generator_of(seq, device: torch.device) -> torch.Generator | None:
    """A seeded request's own generator on `device` (created on first use); None unseeded."""
    seed = seq.params.seed
    if seed is None:
        return None
    if seq.generator is None or seq.generator.device != device:
        seq.generator = torch.Generator(device=device).manual_seed(seed)
    return seq.generator


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[N, V] the distributions the sampler draws from for one request's rows (temperature,
    top-k and top-p applied): what speculative verification compares drafts against."""
    return _filtered_probs(logits.float(), [params] * logits.shape[0])


def logprob_entries(logprobs: torch.Tensor, token_ids: list[int], num_top: list[int]) -> list[dict[int, float]]:
    """Per row: the chosen token's logprob plus the row's `num_top` most likely, as
    {token_id: logprob} (the chosen token first). `logprobs` is a [N, V] log_softmax."""
    chosen = logprobs.gather(1, torch.tensor(token_ids, device=logprobs.device).unsqueeze(1)).squeeze(1).tolist()
    top_values, top_ids = logprobs.topk(max(num_top, default=0), dim=-1)
    entries = []
    for token, value, n, ids, values in zip(token_ids, chosen, num_top, top_ids.tolist(), top_values.tolist()):
        entry = {token: value}
        for top_id, top_value in zip(ids[:n], values[:n]):
            entry.setdefault(top_id, top_value)
        entries.append(entry)
    return entries
