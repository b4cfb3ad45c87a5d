"""What a caller gets back for a request: tokens, text and the logprobs it asked for."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestOutput:
    """`logprobs[i]` maps the i-th generated token (first key) and the top-k alternatives to
    their logprobs; `prompt_logprobs[0]` is None (the first prompt token has no context).
    Both are None when not requested. `finish_reason` is None while generation goes on,
    then 'stop' (EOS, a stop token or string), 'length' or 'abort'."""

    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[dict[int, float]] | None = None
    prompt_logprobs: list[dict[int, float] | None] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
