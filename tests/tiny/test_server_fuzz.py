"""Fuzzing `qfid serve` (tiny Llama, loopback) with hypothesis-generated bodies for
/v1/completions and /v1/chat/completions: valid bodies get 200; everything else
(out-of-vocabulary token ids, max_tokens beyond the context, logprobs above the cap,
malformed fields) gets a 4xx in OpenAI's error shape, never a 5xx, and /health keeps
answering. Then the API key: 401 without it, the probes open, and never in the logs."""
from __future__ import annotations

import logging

import httpx
import pytest

pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.tiny.test_engine_greedy import one_thread  # noqa: E402,F401 (autouse)
from tests.tiny.test_engine_server import MODEL, RunningServer, server, tiny_llm  # noqa: E402,F401 (fixture)

VOCAB = 422  # the tiny model's vocabulary (its tokenizer's length)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

words = st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=30).filter(str.strip)
token_lists = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20)
anything = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                     st.lists(st.integers(-10, 10**6), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@st.composite
def valid_completion(draw) -> dict:
    echo = draw(st.booleans())
    body = {"model": draw(st.sampled_from([MODEL, None])), "prompt": draw(st.one_of(words, token_lists, st.lists(token_lists, min_size=1, max_size=3))),
            "max_tokens": draw(st.integers(0 if echo else 1, 6)), "echo": echo, "temperature": draw(st.sampled_from([0, 0.7])),
            "logprobs": draw(st.one_of(st.none(), st.integers(0, 20))), "seed": draw(st.one_of(st.none(), st.integers(0, 2**31))),
            "return_tokens_as_token_ids": draw(st.booleans()), "stop": draw(st.one_of(st.none(), words))}
    return {k: v for k, v in body.items() if v is not None}


@st.composite
def fuzzed(draw, valid) -> dict:
    """A valid body with some fields replaced by arbitrary values or dropped."""
    body = draw(valid)
    for name in draw(st.lists(st.sampled_from(sorted(body) + ["n", "top_p", "top_k", "max_tokens", "logprobs", "top_logprobs",
                                                             "stream", "stop_token_ids", "seed"]), max_size=3)):
        if draw(st.booleans()):
            body[name] = draw(anything)
        else:
            body.pop(name, None)
    return body


@st.composite
def valid_chat(draw) -> dict:
    messages = [{"role": draw(st.sampled_from(["user", "system"])), "content": draw(words)}]
    return {"model": MODEL, "messages": messages + [{"role": "user", "content": draw(words)}],
            "max_tokens": draw(st.integers(1, 6)), "temperature": 0, "logprobs": draw(st.booleans()),
            "top_logprobs": draw(st.integers(0, 20))}


def _post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, timeout=60)


def _assert_client_error_or_ok(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert 400 <= response.status_code < 500
        error = response.json()["error"]
        assert error["message"] and error["type"] and "code" in error


@FUZZ
@given(body=valid_completion())
def test_valid_completion_bodies_get_200(server, body):
    response = _post(server, "completions", body)
    assert response.status_code == 200, (body, response.text)
    assert len(response.json()["choices"]) == (len(body["prompt"]) if isinstance(body["prompt"], list) and isinstance(body["prompt"][0], list) else 1)


@FUZZ
@given(body=valid_chat())
def test_valid_chat_bodies_get_200(server, body):
    response = _post(server, "chat/completions", body)
    assert response.status_code == 200, (body, response.text)


@FUZZ
@given(body=fuzzed(valid_completion()))
def test_fuzzed_completion_bodies_never_get_a_5xx(server, body):
    _assert_client_error_or_ok(_post(server, "completions", body))


@FUZZ
@given(body=fuzzed(valid_chat()))
def test_fuzzed_chat_bodies_never_get_a_5xx(server, body):
    _assert_client_error_or_ok(_post(server, "chat/completions", body))


@pytest.mark.parametrize("body, fragment", [
    ({"prompt": [1, VOCAB + 5], "echo": True, "max_tokens": 0, "logprobs": 1}, "token ids"),
    ({"prompt": [[1, 2], [-1]], "max_tokens": 1}, "token ids"),
    ({"prompt": "x", "max_tokens": 10**6}, "context limit"),
    ({"prompt": "x", "echo": True, "max_tokens": 0, "logprobs": 21}, "cap of 20"),
    ({"prompt": {"a": 1}}, "prompt"),
    ({"prompt": "x", "logprobs": "many"}, "logprobs"),
    ({"prompt": "x", "seed": 2**70, "temperature": 0.5}, "seed"),
])
def test_named_bad_bodies_get_400(server, body, fragment):
    response = _post(server, "completions", {"model": MODEL, **body})
    assert response.status_code == 400 and fragment in response.json()["error"]["message"]
    chat = _post(server, "chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                              "logprobs": True, "top_logprobs": 21})
    assert chat.status_code == 400 and "cap of 20" in chat.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_api_key_is_required_on_v1_and_never_logged(tiny_llama_dir, caplog):
    key = "sk-qfid-test-0123456789"
    caplog.set_level(logging.DEBUG)
    keyed = RunningServer(tiny_llm(tiny_llama_dir), max_pending=8, api_key=key)
    try:
        body = {"model": MODEL, "prompt": "abc", "max_tokens": 1}
        missing = httpx.post(f"{keyed.url}/v1/completions", json=body)
        wrong = httpx.post(f"{keyed.url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        for response in (missing, wrong, httpx.get(f"{keyed.url}/v1/models")):
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        right = httpx.post(f"{keyed.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert right.status_code == 200
        assert httpx.get(f"{keyed.url}/health").status_code == 200
    finally:
        keyed.stop()
    assert key not in caplog.text and caplog.records  # something was logged, and not the key


def test_serve_warns_when_exposed_without_a_key(tiny_llama_dir, monkeypatch, caplog):
    import uvicorn

    from qfid.engine import server as server_module

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.append(kwargs))
    with caplog.at_level(logging.WARNING, logger="qfid.server"):
        server_module.serve(str(tiny_llama_dir), host="0.0.0.0", num_kv_blocks=16, max_model_len=64)
        assert "without an API key" in caplog.text
        caplog.clear()
        server_module.serve(str(tiny_llama_dir), host="0.0.0.0", api_key="k-secret-1", num_kv_blocks=16, max_model_len=64)
        assert "without an API key" not in caplog.text and "k-secret-1" not in caplog.text
    assert [kwargs["host"] for kwargs in ran] == ["0.0.0.0", "0.0.0.0"]


def test_cli_reads_the_key_from_qfid_api_key(monkeypatch, capsys):
    from qfid.engine import server as server_module
    from tests.cli_helpers import run_cli

    seen = {}
    monkeypatch.setattr(server_module, "serve", lambda model, **kwargs: seen.update(kwargs))
    monkeypatch.setenv("QFID_API_KEY", "from-env-key")
    assert run_cli(["serve", "tiny-model-dir"], capsys, monkeypatch).exit_code == 0
    assert seen["api_key"] == "from-env-key" and seen["host"] == "127.0.0.1"
