"""The OpenAI-compatible backend against a fake /v1/completions (httpx MockTransport): the
echo trick picks exactly the continuation's tokens, greedy and top-k are read right,
choices come back in prompt order, and server errors become one clear line."""
from __future__ import annotations

import json
import re

import pytest

httpx = pytest.importorskip("httpx")

from qfid.errors import QfidError  # noqa: E402
from qfid.evals.backends.openai import OpenAIBackend  # noqa: E402
from qfid.evals.backends.openai_scoring import token_id  # noqa: E402


def _tokens(text: str) -> list[tuple[str, int]]:
    return [(m.group(), m.start()) for m in re.finditer(r"\s*\S+", text)]


def _echo_choice(index: int, prompt: str, k: int) -> dict:
    """Each word is a token with log-prob -1 (the first one None, as servers do); the top
    alternative is the token itself unless the word is "wrong"; one generated token follows."""
    tokens = _tokens(prompt) + [(" NEXT", len(prompt))]
    top = [None] + [{tok: -1.0, " other": -2.0} if "wrong" not in tok else {" other": -0.5, tok: -1.0} for tok, _ in tokens[1:]]
    return {"index": index, "text": prompt + " NEXT", "logprobs": {
        "tokens": [t for t, _ in tokens], "token_logprobs": [None] + [-1.0] * (len(tokens) - 1),
        "top_logprobs": [None if t is None else dict(list(t.items())[:k]) for t in top], "text_offset": [o for _, o in tokens]}}


def _server(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body["model"] == "broken":
        return httpx.Response(500, text="out of memory")
    prompts = body["prompt"]
    if body.get("echo"):
        choices = [_echo_choice(i, p, body["logprobs"]) for i, p in enumerate(prompts)]
    else:
        choices = [{"index": i, "text": f" answer {i}\n\nQuestion: more"} for i in range(len(prompts))]
    return httpx.Response(200, json={"choices": list(reversed(choices))})


@pytest.fixture
def backend():
    return OpenAIBackend(model="m", base_url="http://fake/v1", batch_size=2, transport=httpx.MockTransport(_server))


def test_loglikelihood_scores_only_the_continuation(backend):
    results = backend.loglikelihood([("The tenant shall", " pay rent"), ("Answer:", " wrong yes"), ("a b c", " d")], top_k=2)
    assert [r.n_tokens for r in results] == [2, 2, 1]
    assert [r.logprob for r in results] == [-2.0, -2.0, -1.0]
    assert [r.is_greedy for r in results] == [True, False, True]
    assert results[0].topk.ids[0] == [token_id(" pay"), token_id(" other")]
    assert results[0].topk.logprobs[0] == [-1.0, -2.0]


def test_generate_keeps_prompt_order_and_cuts_at_stop(backend):
    assert backend.generate(["p0", "p1", "p2"], max_tokens=8, stop=["\n\n"]) == [" answer 0", " answer 1", " answer 0"]


def test_rolling_skips_the_unpredictable_first_token(backend):
    rolled = backend.loglikelihood_rolling(["one two three four"])[0]
    assert (rolled.n_tokens, rolled.logprob) == (3, -3.0)


def test_token_ids_from_vllm_and_plain_strings():
    assert token_id("token_id:1234") == 1234
    assert token_id(" pay") == token_id(" pay") != token_id(" Pay")


def test_server_errors_are_one_line():
    broken = OpenAIBackend(model="broken", base_url="http://fake/v1", max_retries=2, retry_delay_s=0,
                           transport=httpx.MockTransport(_server))
    with pytest.raises(QfidError, match=r"http://fake/v1/completions failed after 2 retries; the server's last answer: 500 out of memory"):
        broken.generate(["x"], 4, [])
