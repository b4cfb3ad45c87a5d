"""The interface every eval backend implements (the qfid engine, HF transformers, an
OpenAI-compatible server). Three calls, as in lm-eval, so a backend is small:

- `generate(prompts, max_tokens, stop)`: greedy completions, cut at the first stop string;
- `loglikelihood(requests, top_k)`: for each (context, continuation), the summed log-prob
  of the continuation's tokens, whether greedy decoding would have produced it, and (when
  top_k > 0) the top-k next-token log-probs at each continuation position, which `compare`
  uses for the KL divergence between a baseline and a quantized model;
- `loglikelihood_rolling(texts)`: the whole text's log-prob and token count (perplexity).

Backends that run a local model add a fourth, optional call (`evaluate` checks for it):
`expert_routing(requests)`, for each (context, continuation) the router's top-k experts at
every token of context + continuation (`ExpertRouting`), or None for a dense model; `compare`
turns two runs' routing into the per-layer expert-routing agreement of MoE models.

Tokenisation follows lm-eval (context and continuation encoded separately, no special
tokens; rolling scores start from the end-of-text token) so exported suites score alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class TopK:
    """Per continuation position: the k most likely next tokens and their log-probs."""

    ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Loglikelihood:
    logprob: float
    is_greedy: bool
    n_tokens: int
    topk: TopK | None = None


@dataclass(frozen=True, slots=True)
class ExpertRouting:
    """One request's routing: `ids[layer]` holds, for each MoE layer in model order, every
    token's top-k expert ids one token after another (k ids a token, the router's order, most
    probable first). Flat per layer so a run's records stay small; `k` says how to cut it."""

    ids: list[list[int]]
    k: int


@dataclass(frozen=True, slots=True)
class Rolling:
    logprob: float
    n_tokens: int


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], max_tokens: int, stop: list[str]) -> list[str]: ...

    def loglikelihood(self, requests: list[tuple[str, str]], top_k: int = 0) -> list[Loglikelihood]: ...

    def loglikelihood_rolling(self, texts: list[str]) -> list[Rolling]: ...

    def describe(self) -> dict:
        """What the run manifest records about the model and backend."""
        ...


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text up to the first stop string (stop strings themselves are not returned)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text
