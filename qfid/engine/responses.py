"""OpenAI response bodies (completions, chat, their streaming chunks, logprobs, usage) built
from RequestOutputs. Plain dicts: the wire format is the contract, not a class."""
from __future__ import annotations

import time
import uuid

from qfid.engine.outputs import RequestOutput


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(response_id: str, kind: str, model: str, choices: list[dict], usage_: dict | None = None) -> dict:
    body = {"id": response_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def token_text(tokenizer, token_id: int) -> str:
    """A token as text; a piece of a multi-byte character has no text of its own, so it is
    shown as its vocabulary entry instead (also keeping such tokens apart as dict keys)."""
    text = tokenizer.decode([token_id])
    return tokenizer.convert_ids_to_tokens(token_id) if "\ufffd" in text else text


def top_k(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
    """An entry holds the chosen token and the k most likely, which may include it: the k
    highest of its values are the top k."""
    return sorted(entry.items(), key=lambda item: -item[1])[:k]


def completion_logprobs(tokenizer, token_ids: list[int], entries: list[dict[int, float] | None], k: int,
                        offset: int = 0, as_ids: bool = False) -> dict:
    """The legacy completions shape: parallel lists, top alternatives as {token text: logprob}
    (tokens that decode to the same text share a key, as in OpenAI's format). As in vLLM,
    a position's alternatives are its k most likely plus the actual token; an echoed first
    prompt token has no context, so its logprob and alternatives are None. `as_ids` names
    tokens "token_id:N" (vLLM's `return_tokens_as_token_ids`), exact where text is not;
    `text_offset` counts the tokens' text either way, so it indexes the prompt's text."""
    def name(token_id: int) -> str:
        return f"token_id:{token_id}" if as_ids else token_text(tokenizer, token_id)

    offsets = []
    for token_id in token_ids:
        offsets.append(offset)
        offset += len(token_text(tokenizer, token_id))
    return {
        "tokens": [name(t) for t in token_ids],
        "token_logprobs": [None if entry is None else entry[t] for t, entry in zip(token_ids, entries)],
        "top_logprobs": [None if entry is None else _alternatives(entry, t, k, name) for t, entry in zip(token_ids, entries)],
        "text_offset": offsets,
    }


def _alternatives(entry: dict[int, float], token_id: int, k: int, name) -> dict[str, float]:
    chosen = top_k(entry, k)
    if all(t != token_id for t, _ in chosen):
        chosen.append((token_id, entry[token_id]))
    return {name(t): v for t, v in chosen}


def chat_logprobs(tokenizer, token_ids: list[int], entries: list[dict[int, float]], k: int) -> dict:
    def item(token_id: int, value: float) -> dict:
        token = token_text(tokenizer, token_id)
        return {"token": token, "logprob": value, "bytes": list(token.encode("utf-8"))}

    return {"content": [
        {**item(t, entry[t]), "top_logprobs": [item(top, v) for top, v in top_k(entry, k)]}
        for t, entry in zip(token_ids, entries)
    ]}


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_choice(index: int, output: RequestOutput, logprobs: dict | None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": output.text},
            "logprobs": logprobs, "finish_reason": output.finish_reason}


def chat_chunk_choice(index: int, delta: dict, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def error_body(message: str, kind: str = "invalid_request_error", code: int | str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
