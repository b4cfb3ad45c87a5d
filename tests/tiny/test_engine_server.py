"""`qfid serve` under real clients (the `openai` package and raw httpx) on the tiny Llama:
completions, chat, streaming, 200 concurrent requests, bad requests, a full queue and a
client that disconnects mid-stream."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from qfid.engine.async_engine import AsyncEngine  # noqa: E402
from qfid.engine.llm import LLM  # noqa: E402
from qfid.engine.server import OpenAIServer  # noqa: E402
from tests.tiny.test_engine_greedy import one_thread  # noqa: E402,F401 (autouse: one torch thread here too)

MODEL = "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """uvicorn in a background thread, on a free local port."""

    def __init__(self, llm: LLM, max_pending: int, **server_options):
        import uvicorn

        self.engine = AsyncEngine(llm.engine, max_pending=max_pending)
        self.app = OpenAIServer(self.engine, llm.tokenizer, MODEL, **server_options).app
        self.port = _free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def tiny_llm(model_dir) -> LLM:
    return LLM(model_dir, dtype="float32", num_kv_blocks=256, max_model_len=256)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    """For expected answers; the server owns another engine (one engine, one thread)."""
    return tiny_llm(tiny_llama_dir)


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    running = RunningServer(tiny_llm(tiny_llama_dir), max_pending=256)
    yield running
    running.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_completion_matches_the_python_api(client, llm):
    from qfid import SamplingParams

    response = client.completions.create(model=MODEL, prompt="The tenant shall", max_tokens=8, temperature=0,
                                         extra_body={"ignore_eos": True}, logprobs=2)
    (expected,) = llm.generate(["The tenant shall"], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    choice = response.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8 and response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert len(choice.logprobs.token_logprobs) == 8
    for value, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs):
        assert 1 <= len(top) <= 2 and max(top.values()) >= value  # greedy: the chosen token is the top one


def test_chat_completion_uses_the_chat_template(client, llm):
    messages = [{"role": "user", "content": "What is 1 2 3?"}]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=1)
    template_ids = llm.tokenizer(llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                                 add_special_tokens=False).input_ids
    assert response.usage.prompt_tokens == len(template_ids)
    assert response.choices[0].message.role == "assistant"
    assert 1 <= response.usage.completion_tokens <= 6
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert all(len(item.top_logprobs) == 1 and item.top_logprobs[0].logprob == item.logprob for item in content)


def test_streaming_chunks_add_up_to_the_full_answer(client):
    kwargs = dict(model=MODEL, prompt="The quarterly revenue", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                          temperature=0, stream=True, stream_options={"include_usage": True})
    pieces = list(chat)
    assert pieces[0].choices[0].delta.role == "assistant" and pieces[-1].usage.completion_tokens >= 1


def test_200_concurrent_requests_all_complete_with_their_token_counts(server):
    async def one(http: httpx.AsyncClient, i: int):
        body = {"model": MODEL, "prompt": f"{i} El precio", "max_tokens": 1 + i % 7, "temperature": 0, "ignore_eos": True}
        response = await http.post(f"{server.url}/v1/completions", json=body, timeout=120)
        return i, response

    async def run_all():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as http:
            return await asyncio.gather(*(one(http, i) for i in range(200)))

    for i, response in asyncio.run(run_all()):
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 1 + i % 7


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 257}, 400, "context limit"),
    ({"model": MODEL, "prompt": "x", "logprobs": 21}, 400, "cap of 20"),
    ({"model": MODEL, "prompt": "x", "echo": True, "stream": True}, 400, "echo with stream"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "n": 2}, 400, "n=1"),
    ({"model": MODEL, "prompt": [5] * 300, "max_tokens": 1}, 400, "context limit"),
    ({"model": MODEL, "prompt": [5, 10**9], "max_tokens": 1}, 400, "token ids"),
    ({"model": MODEL, "messages": []}, 400, "prompt"),
    ({"model": "other", "prompt": "x"}, 404, "not served"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, status, fragment):
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    malformed = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_models_health_and_metrics(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == MODEL
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("qfid_requests_waiting", "qfid_requests_running", "qfid_kv_cache_blocks_used",
                 "qfid_generation_tokens_per_second", "qfid_generation_tokens_total"):
        assert f"{name}{{" in metrics


def test_disconnecting_client_frees_its_sequence(server):
    blocks = server.engine.engine.block_manager
    body = {"model": MODEL, "prompt": "The tenant", "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        for _ in zip(range(3), response.iter_lines()):
            pass
    deadline = time.monotonic() + 10
    while (server.engine.num_pending or blocks.num_used_blocks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.engine.num_pending == 0 and blocks.num_used_blocks == 0


def test_a_full_queue_answers_429(tiny_llama_dir):
    slow = tiny_llm(tiny_llama_dir)
    step = slow.engine.step
    slow.engine.step = lambda: (time.sleep(0.05), step())[1]  # a model slow enough to still be busy
    busy = RunningServer(slow, max_pending=1)
    try:
        body = {"prompt": "The tenant", "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{busy.url}/v1/completions", json=body) as first:
            lines = first.iter_lines()
            assert first.status_code == 200 and next(lines).startswith("data:")
            assert busy.engine.num_pending == 1, (busy.engine.num_pending, [next(lines) for _ in range(3)])
            second = httpx.post(f"{busy.url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
            assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
    finally:
        busy.stop()
