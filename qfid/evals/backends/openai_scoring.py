"""Reading log-likelihoods out of echoed `/v1/completions` answers (the legacy logprobs
shape: parallel `tokens`, `token_logprobs`, `top_logprobs`, `text_offset` lists).

Two ways to find the continuation among the echoed tokens. By token position, when qfid
sent token ids (it has the model's tokenizer): the continuation is the prompt's last n
tokens, exactly the ones the engine and HF backends score. By character offset otherwise:
the tokens whose text starts inside the continuation, which can blur a boundary where a
token merges across it. Either way a generated token after the prompt (servers that need
`max_tokens: 1`) is never counted.

Token ids come from vLLM's `return_tokens_as_token_ids` ("token_id:123"); a server that
returns plain token strings gets a stable CRC32 of the string instead, consistent across
runs against the same server (what compare's KL needs).
"""
from __future__ import annotations

import zlib

from qfid.evals.backends.base import Loglikelihood, TopK


def score_prompt_tail(logprobs: dict, prompt_len: int, n_tokens: int, top_k: int) -> Loglikelihood:
    """The prompt's last `n_tokens` echoed positions."""
    positions = range(prompt_len - n_tokens, prompt_len)
    return _score(logprobs, positions, top_k)


def score_by_offsets(logprobs: dict, start: int, end: int, top_k: int) -> Loglikelihood:
    """The echoed tokens whose text starts inside [start, end) and that have a logprob."""
    positions = [i for i, (offset, value) in enumerate(zip(logprobs["text_offset"], logprobs["token_logprobs"]))
                 if start <= offset < end and value is not None]
    return _score(logprobs, positions, top_k)


def _score(logprobs: dict, positions, top_k: int) -> Loglikelihood:
    """Sum of the positions' logprobs; greedy when each actual token is as likely as its
    position's most likely one (the alternatives hold the actual token too)."""
    total, greedy, ids, values, count = 0.0, True, [], [], 0
    tops = logprobs.get("top_logprobs") or []
    for position in positions:
        value = logprobs["token_logprobs"][position]
        top = (tops[position] if position < len(tops) else None) or {}
        count += 1
        total += value
        greedy = greedy and bool(top) and value >= max(top.values())
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[:top_k]
        ids.append([token_id(t) for t, _ in ranked])
        values.append([v for _, v in ranked])
    topk = TopK(ids, values) if top_k > 0 else None
    return Loglikelihood(logprob=total, is_greedy=greedy and count > 0, n_tokens=count, topk=topk)


def token_id(token: str) -> int:
    """vLLM's "token_id:123" -> 123; any other token string -> a stable 31-bit hash."""
    if token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return zlib.crc32(token.encode("utf-8")) & 0x7FFFFFFF
