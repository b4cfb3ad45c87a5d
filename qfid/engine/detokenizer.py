"""Text <-> token ids (plain and chat-templated prompts), where a stop string cuts the
output, and what a stream may send so far.

A running request's text grows a token at a time (`OutputText`): decoding its whole output
every step cost O(n) per step, O(n^2) per request (SmolLM2's tokenizer: 348 us per decode
at 2,048 tokens, i.e. 22 ms per step for 64 such requests). A finished request's text is
the whole output decoded once, so what a client finally gets is exactly `decode(ids)`.
"""
from __future__ import annotations

from qfid.errors import QfidError


class Detokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def output_text(self) -> "OutputText":
        """The text of one request's output as it grows."""
        return OutputText(self)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt).input_ids

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A conversation through the tokenizer's chat template, ready for the reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise QfidError("this model's tokenizer has no chat template; send a plain prompt instead")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False).input_ids


class OutputText:
    """The text of a growing list of token ids, decoded only where it grew: through the fast
    tokenizer's `DecodeStream` (tokenizers' own incremental decoder: a character split over
    several byte-level tokens comes out once it is whole, so the text lacks the trailing
    replacement character a full decode shows until then). Where that would not equal
    transformers' `decode` (a slow tokenizer, or one that cleans up tokenization spaces
    after decoding), the whole list is decoded instead; a list shorter than last time, or
    whose last token seen has changed, starts the stream again."""

    def __init__(self, detokenizer: Detokenizer):
        self.detokenizer = detokenizer
        tokenizer = detokenizer.tokenizer
        backend = getattr(tokenizer, "_tokenizer", None)
        exact = backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self.backend = backend if exact else None
        self._restart()

    def update(self, token_ids: list[int]) -> str:
        """The text of `token_ids` (the same list as last time, possibly grown)."""
        if self.backend is None:
            return self.detokenizer.text(token_ids)
        if len(token_ids) < self.seen or (self.seen and token_ids[self.seen - 1] != self.last):
            self._restart()
        for token in token_ids[self.seen:]:   # one at a time: stepping a list returns one chunk only
            self.text += self.stream.step(self.backend, token) or ""
        if len(token_ids) > self.seen:
            self.seen, self.last = len(token_ids), token_ids[-1]
        return self.text

    def _restart(self) -> None:
        from tokenizers.decoders import DecodeStream

        self.stream = DecodeStream(skip_special_tokens=True)
        self.seen, self.last, self.text = 0, None, ""


def stop_string_cut(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts, or None."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else None


class TextDeltas:
    """What to send a streaming client each step: text that later tokens cannot change.
    Holds back a trailing replacement character (a multi-byte character still incomplete)
    and, when stop strings are set, the last len(longest stop) - 1 characters, which could
    still turn out to be the start of a stop string that must not be shown."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.sent = 0
        self.hold = max((len(stop) for stop in stops), default=1) - 1

    def delta(self, text: str, finished: bool) -> str:
        if not finished:
            text = text[:-1] if text.endswith("\ufffd") else text
            text = text[:max(self.sent, len(text) - self.hold)]
        piece = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return piece
