"""Text <-> token ids (plain and chat-templated prompts), where a stop string cuts the
output, and what a stream may send so far.

The whole output is decoded each time rather than token by token: byte-level BPE tokens
are not whole characters on their own, and decoding the full list is always right; for the
short outputs this engine serves it costs microseconds.
"""
from __future__ import annotations

from qfid.errors import QfidError


class Detokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt).input_ids

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A conversation through the tokenizer's chat template, ready for the reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise QfidError("this model's tokenizer has no chat template; send a plain prompt instead")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False).input_ids


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
