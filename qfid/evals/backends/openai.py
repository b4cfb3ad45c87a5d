"""OpenAI-compatible backend: how qfid evaluates a model served by vLLM, SGLang or `qfid
serve` across many GPUs, when one machine is not enough.

Requests go out `concurrency` at a time with retries (`openai_http.py`), `batch_size`
prompts a request. Log-likelihoods use the echo request lm-eval's `local-completions`
sends: context + continuation as the prompt, `echo`, `logprobs=k`, `max_tokens: 0` (or 1
for servers that refuse 0; the generated token is ignored). With the model's tokenizer at
hand, prompts go as token ids split the way every qfid backend splits them (TokenScoring:
lm-eval's rules), so the continuation's tokens are exactly those the engine and HF
backends score; without one, by text with character offsets (`openai_scoring.py`).

Under --chat, generation goes through /v1/chat/completions with the suite's messages (the
server applies its template), and log-likelihood items through /v1/completions with the
template applied here: chat answers carry no prompt logprobs. `format_chat` is where the
runner hands over the messages, so it remembers them by the text it returns.
"""
from __future__ import annotations

import os
from pathlib import Path

from qfid.errors import QfidError
from qfid.evals.backends.base import Loglikelihood, Rolling, cut_at_stop
from qfid.evals.backends.openai_http import RetryingClient, RetryPolicy, ServerRefused
from qfid.evals.backends.openai_scoring import score_by_offsets, score_prompt_tail
from qfid.evals.backends.token_scoring import TokenScoring

DEFAULT_MAX_LENGTH = 2048


class OpenAIBackend(TokenScoring):
    name = "openai"

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1", api_key: str | None = None,
                 batch_size: int = 8, concurrency: int = 32, max_retries: int = 5, timeout: float = 300.0,
                 tokenizer=None, retry_delay_s: float = 0.5, transport=None):
        key = api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
        self.model, self.batch_size = model, max(1, batch_size)
        self.http = RetryingClient(base_url, key, concurrency, timeout, RetryPolicy(max_retries, retry_delay_s), transport)
        self.base_url = self.http.base_url
        self.tokenizer = tokenizer
        self.prompt_only = True  # max_tokens 0 with echo, until a server refuses it
        self._max_length: int | None = None
        self._chat: dict[str, list[dict]] = {}

    @property
    def stats(self):
        return self.http.stats

    @property
    def max_length(self) -> int:
        """The server's context limit (vLLM and qfid list it in /models), else 2048."""
        self._read_models()
        return self._max_length

    def _read_models(self) -> None:
        """Once: which of the server's models is ours (the name as given, the folder's name,
        or the only one served: a local path is rarely the served name) and its context."""
        if self._max_length is not None:
            return
        self._max_length = DEFAULT_MAX_LENGTH
        try:
            cards = self.http.get("/models").get("data") or []
        except Exception:  # optional facts: a server that cannot say keeps the given name and 2048
            return
        by_id = {card.get("id"): card for card in cards}
        card = by_id.get(self.model) or by_id.get(Path(self.model).name) or (cards[0] if len(cards) == 1 else None)
        if card:
            self.model = card.get("id") or self.model
            self._max_length = int(card.get("max_model_len") or DEFAULT_MAX_LENGTH)

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url, "batch_size": self.batch_size,
                "concurrency": self.http.concurrency, "token_ids": self.tokenizer is not None}

    # -- generation -----------------------------------------------------------------------

    def generate(self, prompts: list[str], max_tokens: int, stop: list[str]) -> list[str]:
        """Greedy completions, cut at the first stop string, in prompt order."""
        self._read_models()
        extra = {"max_tokens": max_tokens, "temperature": 0.0} | ({"stop": list(stop)} if stop else {})
        chats = [i for i, p in enumerate(prompts) if p in self._chat]
        plain = [i for i, p in enumerate(prompts) if p not in self._chat]
        texts: dict[int, str] = {}
        if chats:
            bodies = [{"model": self.model, "messages": self._chat[prompts[i]], **extra} for i in chats]
            for i, answer in zip(chats, self.http.post_all("/chat/completions", bodies)):
                texts[i] = answer["choices"][0]["message"]["content"] or ""
        if plain:
            sent = [self._generation_prompt(prompts[i], max_tokens) for i in plain]
            for i, text in zip(plain, self._completion_texts(sent, extra)):
                texts[i] = text
        return [cut_at_stop(texts[i], stop) for i in range(len(prompts))]

    def _generation_prompt(self, prompt: str, max_tokens: int) -> str | list[int]:
        """Token ids as the engine backend feeds them (no special tokens, cut to leave room
        for the answer), or the text when there is no local tokenizer."""
        if self.tokenizer is None:
            return prompt
        return self.encode(prompt)[-max(1, self.max_length - max_tokens):]

    def _completion_texts(self, prompts: list, extra: dict) -> list[str]:
        batches = [prompts[i:i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        bodies = [{"model": self.model, "prompt": batch, **extra} for batch in batches]
        return [choice["text"] for answer in self.http.post_all("/completions", bodies) for choice in _choices(answer)]

    def format_chat(self, messages: list[dict]) -> str:
        """The chat template applied here (log-likelihood items need the text); generation
        sends the remembered messages to /chat/completions instead."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise QfidError("--chat with the openai backend needs the model's tokenizer with a chat template "
                            "(pass --tokenizer PATH)")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        self._chat[text] = messages
        return text

    # -- log-likelihoods ------------------------------------------------------------------

    def loglikelihood(self, requests: list[tuple[str, str]], top_k: int = 0) -> list[Loglikelihood]:
        if self.tokenizer is not None:
            return super().loglikelihood(requests, top_k)
        choices = self._echo([context + continuation for context, continuation in requests], top_k)
        return [score_by_offsets(choice["logprobs"], len(ctx), len(ctx) + len(cont), top_k)
                for choice, (ctx, cont) in zip(choices, requests)]

    def loglikelihood_rolling(self, texts: list[str]) -> list[Rolling]:
        """With a tokenizer, TokenScoring's windows from the end-of-text token; without one,
        every token after the first (there is no end-of-text prefix to predict it from)."""
        if self.tokenizer is not None:
            return super().loglikelihood_rolling(texts)
        scored = [score_by_offsets(choice["logprobs"], 0, len(text), 0) for choice, text in zip(self._echo(texts, 0), texts)]
        return [Rolling(logprob=s.logprob, n_tokens=s.n_tokens) for s in scored]

    def score_token_pairs(self, pairs: list[tuple[list[int], list[int]]], top_k: int) -> list[Loglikelihood]:
        prompts = [(ctx + cont)[-self.max_length:] for ctx, cont in pairs]
        choices = self._echo(prompts, top_k)
        return [score_prompt_tail(choice["logprobs"], len(prompt), len(cont), top_k)
                for choice, prompt, (_, cont) in zip(choices, prompts, pairs)]

    def _echo(self, prompts: list, top_k: int) -> list[dict]:
        """Echoed choices in prompt order; falls back to max_tokens 1 once if 0 is refused."""
        self._read_models()
        try:
            return self._echo_with(prompts, top_k, 0 if self.prompt_only else 1)
        except ServerRefused as exc:
            if not self.prompt_only or exc.status != 400:
                raise
            self.prompt_only = False
            return self._echo_with(prompts, top_k, 1)

    def _echo_with(self, prompts: list, top_k: int, max_tokens: int) -> list[dict]:
        batches = [prompts[i:i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        common = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0, "echo": True,
                  "logprobs": max(1, top_k)}
        if self.tokenizer is not None:  # vLLM's text_offset counts "token_id:N" strings: only by position
            common["return_tokens_as_token_ids"] = True
        return [choice for answer in self.http.post_all("/completions", [{"prompt": b, **common} for b in batches])
                for choice in _choices(answer)]


def _choices(answer: dict) -> list[dict]:
    return sorted(answer["choices"], key=lambda choice: choice["index"])


def local_tokenizer(model: str, tokenizer: str | None):
    """The tokenizer for token-id prompts: `--tokenizer`, else the model argument when it is
    a local folder or a default model; None (text prompts) when neither is."""
    from qfid.models.default import ensure_default_model, is_default_model

    source = tokenizer or model
    if is_default_model(source):
        path = ensure_default_model(source)
    elif Path(source).expanduser().is_dir():
        path = Path(source).expanduser()
    elif tokenizer:
        raise QfidError(f"--tokenizer {tokenizer}: not a local folder or a default model")
    else:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        if tokenizer:
            raise QfidError(f"--tokenizer {tokenizer}: cannot load a tokenizer from {path}: {exc}") from None
        return None
