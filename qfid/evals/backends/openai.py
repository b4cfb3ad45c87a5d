"""OpenAI-compatible backend (`/v1/completions`): how qfid evaluates a model served by
vLLM or SGLang across many GPUs, when one machine is not enough.

Log-likelihoods use the echo trick (as lm-eval's `local-completions` does): send
context + continuation with `echo`, `logprobs=k` and one new token, then read back the
prompt tokens whose character offset falls inside the continuation. Token ids come from
vLLM's `return_tokens_as_token_ids` ("token_id:123"); a server that returns plain token
strings gets a stable CRC32 of the string instead, which is consistent across runs
against the same server (what compare's KL needs).
"""
from __future__ import annotations

import os
import zlib

from qfid.errors import QfidError
from qfid.evals.backends.base import Loglikelihood, Rolling, TopK, cut_at_stop


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1", api_key: str | None = None,
                 batch_size: int = 8, timeout: float = 300.0, transport=None):
        import httpx

        key = api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
        self.model, self.base_url, self.batch_size = model, base_url.rstrip("/"), batch_size
        self.client = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout, transport=transport)

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url, "batch_size": self.batch_size}

    def _complete(self, body: dict) -> list[dict]:
        """POST /completions; the choices in prompt order, or one clear error line."""
        import httpx

        try:
            response = self.client.post("/completions", json={"model": self.model, "temperature": 0.0, **body})
        except httpx.HTTPError as exc:
            raise QfidError(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise QfidError(f"{self.base_url}/completions answered {response.status_code}: {response.text[:200]}")
        return sorted(response.json()["choices"], key=lambda choice: choice["index"])

    def _batches(self, values: list):
        for start in range(0, len(values), self.batch_size):
            yield values[start:start + self.batch_size]

    def generate(self, prompts: list[str], max_tokens: int, stop: list[str]) -> list[str]:
        texts: list[str] = []
        for batch in self._batches(prompts):
            body = {"prompt": batch, "max_tokens": max_tokens} | ({"stop": list(stop)} if stop else {})
            texts += [cut_at_stop(choice["text"], stop) for choice in self._complete(body)]
        return texts

    def loglikelihood(self, requests: list[tuple[str, str]], top_k: int = 0) -> list[Loglikelihood]:
        results: list[Loglikelihood] = []
        for batch in self._batches(requests):
            choices = self._echo([context + continuation for context, continuation in batch], top_k)
            results += [_continuation_score(choice["logprobs"], len(ctx), len(ctx) + len(cont), top_k) for choice, (ctx, cont) in zip(choices, batch)]
        return results

    def loglikelihood_rolling(self, texts: list[str]) -> list[Rolling]:
        """Every token after the first (the server has no end-of-text prefix to predict it from)."""
        rolled: list[Rolling] = []
        for batch in self._batches(texts):
            for choice, text in zip(self._echo(batch, 0), batch):
                scored = _continuation_score(choice["logprobs"], 0, len(text), 0)
                rolled.append(Rolling(logprob=scored.logprob, n_tokens=scored.n_tokens))
        return rolled

    def _echo(self, prompts: list[str], top_k: int) -> list[dict]:
        body = {"prompt": prompts, "max_tokens": 1, "echo": True, "logprobs": max(1, top_k), "return_tokens_as_token_ids": True}
        return self._complete(body)


def _continuation_score(logprobs: dict, start: int, end: int, top_k: int) -> Loglikelihood:
    """Sum the echoed tokens that start inside [start, end): the continuation, not the one
    generated token after it; greedy when each was its position's top token."""
    total, greedy, ids, values, count = 0.0, True, [], [], 0
    for token, logprob, top, offset in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"] or [], logprobs["text_offset"]):
        if not start <= offset < end or logprob is None:
            continue
        count += 1
        total += logprob
        ranked = sorted((top or {}).items(), key=lambda kv: -kv[1])
        greedy = greedy and bool(ranked) and ranked[0][0] == token
        ids.append([token_id(t) for t, _ in ranked[:top_k]])
        values.append([v for _, v in ranked[:top_k]])
    return Loglikelihood(logprob=total, is_greedy=greedy and count > 0, n_tokens=count, topk=TopK(ids, values) if top_k > 0 else None)


def token_id(token: str) -> int:
    """vLLM's "token_id:123" -> 123; any other token string -> a stable 31-bit hash."""
    if token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return zlib.crc32(token.encode("utf-8")) & 0x7FFFFFFF
