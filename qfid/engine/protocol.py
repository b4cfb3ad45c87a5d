"""OpenAI request bodies as pydantic models, and their translation into SamplingParams.

Unknown fields are ignored (clients send `user`, penalties and the like); fields we cannot
honour (`n` > 1, `best_of`, `echo` with `stream`) are refused with a 400 rather than
silently dropped, since a silently different answer is worse than an error.

Scoring requests are vLLM's: `echo` returns the prompt's tokens with their logprobs, and
`max_tokens: 0` (with echo) scores the prompt alone. The engine always samples at least one
token, so such a request runs with one and the server drops it from the answer.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qfid.engine.sampling import SamplingParams
from qfid.errors import QfidError



class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(default=None, ge=-2**63, lt=2**64)  # what a torch.Generator takes
    ignore_eos: bool = False

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def sampling_params(self, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None = None) -> SamplingParams:
        if self.n != 1:
            raise QfidError("only n=1 is supported")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=self.seed,
            stop=self.stop or (),
            stop_token_ids=self.stop_token_ids or (),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0)
    echo: bool = False
    return_tokens_as_token_ids: bool = False

    @property
    def scores_prompt_only(self) -> bool:
        """`max_tokens: 0` with echo: the prompt's logprobs and nothing generated."""
        return self.echo and self.max_tokens == 0

    def engine_max_tokens(self) -> int:
        if self.max_tokens == 0 and not self.echo:
            raise QfidError("max_tokens must be >= 1 (0 is allowed only with echo, to score the prompt)")
        if self.echo and self.stream:
            raise QfidError("echo with stream is not supported; send the scoring request without stream")
        return max(1, 16 if self.max_tokens is None else self.max_tokens)

    def prompts(self) -> list[str | list[int]]:
        """A string, a list of strings, a token list or a list of token lists."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt or any(len(p) == 0 for p in prompt):
            raise QfidError("prompt must not be empty")
        return list(prompt)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        """Plain content, or the text parts of a multi-part content list."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
