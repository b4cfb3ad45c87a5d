"""`qfid serve` answers scoring requests as vLLM does (echo + logprobs, `max_tokens: 0`,
token-id prompts, `return_tokens_as_token_ids`), on a real loopback server over the tiny
Llama; the echoed logprobs are checked against a plain HF transformers forward (fp32, 1e-4)."""
from __future__ import annotations

import httpx
import pytest

pytest.importorskip("fastapi")

from tests.tiny.test_engine_server import MODEL, server, tiny_llm  # noqa: E402,F401 (fixture)
from tests.tiny.test_engine_greedy import one_thread  # noqa: E402,F401 (autouse)

TOL = 1e-4


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    """log_softmax of the HF model's logits for a token list: the simple reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)

    def logprobs(ids: list[int]):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)

    logprobs.tokenizer = tokenizer
    return logprobs


def _complete(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "temperature": 0, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_echo_returns_the_prompts_tokens_with_reference_logprobs(server, reference):
    prompt = "The tenant shall pay rent"
    body = _complete(server, prompt=prompt, echo=True, logprobs=3, max_tokens=1)
    ids = reference.tokenizer(prompt).input_ids
    expected = reference(ids)
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"].startswith(prompt)
    assert len(logprobs["tokens"]) == len(ids) + 1 == len(logprobs["text_offset"])
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    for position in range(1, len(ids)):
        assert logprobs["token_logprobs"][position] == pytest.approx(expected[position - 1, ids[position]].item(), abs=TOL)
        top = logprobs["top_logprobs"][position]
        assert 3 <= len(top) <= 4  # the 3 most likely, plus the actual token when it is not one of them
        assert max(top.values()) == pytest.approx(expected[position - 1].max().item(), abs=TOL)
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"]) and logprobs["text_offset"][0] == 0
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}


def test_max_tokens_zero_scores_the_prompt_alone_and_twice_alike(server):
    """The second request finds the prompt in the prefix cache: scored positions are recomputed."""
    body = dict(prompt="Interest of 5% on 200 dollars", echo=True, logprobs=1, max_tokens=0)
    first, second = _complete(server, **body), _complete(server, **body)
    assert first["choices"][0]["text"] == body["prompt"] and first["choices"][0]["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == 0
    assert first["choices"][0]["logprobs"]["token_logprobs"] == second["choices"][0]["logprobs"]["token_logprobs"]
    assert len(first["choices"][0]["logprobs"]["tokens"]) == first["usage"]["prompt_tokens"]


def test_batched_token_id_prompts_with_tokens_as_ids(server, reference):
    prompts = [[5, 17, 42, 99, 3], [7, 8, 9]]
    body = _complete(server, prompt=prompts, echo=True, logprobs=2, max_tokens=0, return_tokens_as_token_ids=True)
    for choice, ids in zip(sorted(body["choices"], key=lambda c: c["index"]), prompts):
        logprobs = choice["logprobs"]
        assert logprobs["tokens"] == [f"token_id:{t}" for t in ids]
        expected = reference(ids)
        for position in range(1, len(ids)):
            assert logprobs["token_logprobs"][position] == pytest.approx(expected[position - 1, ids[position]].item(), abs=TOL)
            top_ids = {int(key.split(":")[1]) for key in logprobs["top_logprobs"][position]}
            assert set(expected[position - 1].topk(2).indices.tolist()) <= top_ids


def test_echo_without_logprobs_returns_text_only(server):
    choice = _complete(server, prompt="abc", echo=True, max_tokens=2, ignore_eos=True)["choices"][0]
    assert choice["text"].startswith("abc") and choice["logprobs"] is None


def test_prompt_logprobs_in_chunks_equal_one_pass(tiny_llama_dir, monkeypatch):
    """A long prompt scored with the LM head 7 rows at a time gives the same logprobs."""
    from qfid import SamplingParams
    from qfid.engine import model_runner

    llm = tiny_llm(tiny_llama_dir)
    prompt = list(range(3, 120))
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2)
    (whole,) = llm.generate([prompt], params)
    monkeypatch.setattr(model_runner, "PROMPT_LOGITS_ROWS", 7)
    (chunked,) = llm.generate([prompt], params)
    assert len(whole.prompt_logprobs) == len(prompt)
    for a, b in zip(whole.prompt_logprobs[1:], chunked.prompt_logprobs[1:]):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= TOL for k in a)
