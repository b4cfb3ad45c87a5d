"""Speculative decoding (n-gram prompt lookup) in the engine, fp32, tiny Llama and Mixtral:
greedy outputs with speculation equal those without token for token (and their logprobs
within 1e-4), for 32 concurrent mixed requests under chunked prefill, forced preemption and
prefix caching; both the accept and the reject path run (acceptance strictly between 0 and
1, above a floor); every KV block is free again at the end; stop conditions that fall on
an accepted draft end the request there."""
from __future__ import annotations

import pytest
import torch

from qfid import LLM, SamplingParams
from tests.tiny.test_engine_greedy import model_dir, one_thread  # noqa: F401 - shared fixtures (llama, mixtral; one thread)

ACCEPTANCE_FLOOR = 0.2
LOGPROB_TOLERANCE = 1e-4


def repeating_prompts(vocab: int, count: int, seed: int) -> list[list[int]]:
    """Prompts made of a short random phrase repeated (what prompt lookup can draft from),
    some with a shared 48-token prefix (prefix caching), of mixed lengths."""
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(count):
        phrase = torch.randint(3, vocab, (3 + i % 6,), generator=g).tolist()
        body = (phrase * (2 + (5 * i) % 9))[: 6 + (13 * i) % 90]
        prompts.append(body)
    shared = prompts[3] * 4
    return [shared[:48] + p if i % 4 == 1 else p for i, p in enumerate(prompts)]


def _run(model_dir, prompts, params, **options):
    llm = LLM(model_dir, dtype="float32", num_kv_blocks=24, max_num_batched_tokens=64, **options)
    return llm, llm.generate(prompts, params)


def test_greedy_with_speculation_equals_greedy_without(model_dir):
    vocab = 200
    prompts = repeating_prompts(vocab, 32, seed=4)
    params = [SamplingParams(max_tokens=10 + (7 * i) % 23, temperature=0.0, ignore_eos=True, logprobs=1) for i in range(32)]
    plain_llm, plain = _run(model_dir, prompts, params)
    llm, spec = _run(model_dir, prompts, params, speculative="ngram", num_speculative_tokens=4, speculative_max_batch=64)
    scheduler, blocks = llm.engine.scheduler, llm.engine.block_manager
    stats = scheduler.spec_stats
    assert scheduler.num_preemptions > 0 and blocks.prefix_hits > 0
    assert ACCEPTANCE_FLOOR < stats.acceptance_rate < 1.0 and stats.accepted < stats.drafted
    assert blocks.num_free_blocks == blocks.num_blocks
    for a, b in zip(plain, spec):
        assert b.token_ids == a.token_ids
        assert len(b.logprobs) == len(b.token_ids)
        for token, ea, eb in zip(b.token_ids, a.logprobs, b.logprobs):
            assert abs(ea[token] - eb[token]) < LOGPROB_TOLERANCE


def test_a_stop_token_on_an_accepted_draft_ends_the_request_there(tiny_llama_dir):
    """Greedy continuation of a repeated phrase: find the output of a plain run, make its
    5th token a stop token, and the speculative run stops at the same place."""
    prompt = repeating_prompts(200, 8, seed=9)[5]
    plain_llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=16)
    (free,) = plain_llm.generate([prompt], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    stop = free.token_ids[4]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, stop_token_ids=[stop])
    (expected,) = plain_llm.generate([prompt], params)
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=16, speculative="ngram", num_speculative_tokens=6)
    (got,) = llm.generate([prompt], params)
    assert got.token_ids == expected.token_ids and got.finish_reason == "stop"
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_speculation_switches_off_above_the_batch_limit(tiny_llama_dir):
    prompts = repeating_prompts(200, 12, seed=2)
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, speculative="ngram", speculative_max_batch=4)
    llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    few = llm.engine.scheduler.spec_stats.verify_steps
    llm2 = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, speculative="ngram", speculative_max_batch=64)
    llm2.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    assert few < llm2.engine.scheduler.spec_stats.verify_steps


def test_served_with_speculation_streams_the_same_text_and_reports_acceptance(tiny_llama_dir):
    import httpx

    from tests.tiny.test_engine_server import RunningServer

    prompt = repeating_prompts(200, 8, seed=9)[5]
    plain = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64)
    (expected,) = plain.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, max_model_len=256, speculative="ngram")
    server = RunningServer(llm, max_pending=8)
    try:
        body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "stream": True}
        text = ""
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    import json

                    text += json.loads(line[6:])["choices"][0]["text"]
        assert text == expected.text
        metrics = httpx.get(f"{server.url}/metrics").text
        accepted = next(float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith("qfid_spec_decode_accepted_tokens_total{"))
        assert accepted > 0 and "qfid_spec_decode_acceptance_rate{" in metrics
        total = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("qfid_generation_tokens_total{"))
        assert total == 24   # every emitted token counted once, several per verify step
    finally:
        server.stop()


@pytest.fixture(scope="module")
def other_tiny_llama(tmp_path_factory):
    """Same tokenizer and shapes as the tiny Llama, other weights: a draft that often disagrees."""
    from qfid.testing.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("other-llama"), seed=7)


@pytest.mark.parametrize("draft", ["self", "other"])
def test_draft_model_speculation_equals_greedy_without(tiny_llama_dir, other_tiny_llama, draft):
    """32 concurrent requests under preemption and prefix caching with a draft model: the
    model drafting for itself accepts every draft; another model with the same tokenizer is
    mostly rejected. Outputs equal plain greedy either way; both caches end empty."""
    draft_dir = tiny_llama_dir if draft == "self" else other_tiny_llama
    prompts = repeating_prompts(200, 32, seed=4)
    params = [SamplingParams(max_tokens=10 + (7 * i) % 23, temperature=0.0, ignore_eos=True) for i in range(32)]
    _, plain = _run(tiny_llama_dir, prompts, params)
    llm, spec = _run(tiny_llama_dir, prompts, params, speculative=f"draft:{draft_dir}", num_speculative_tokens=3,
                     speculative_max_batch=64)
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    scheduler, blocks = llm.engine.scheduler, llm.engine.block_manager
    stats, proposer = scheduler.spec_stats, scheduler.proposer
    assert scheduler.num_preemptions > 0 and blocks.prefix_hits > 0 and stats.drafted > 100
    if draft == "self":
        assert stats.acceptance_rate == 1.0
    else:
        assert stats.acceptance_rate < 0.5
    assert blocks.num_free_blocks == blocks.num_blocks
    assert not proposer.mirrors and proposer.block_manager.num_free_blocks == proposer.block_manager.num_blocks


def test_a_draft_model_with_another_vocabulary_is_refused(tiny_llama_dir, tiny_mixtral_dir, tmp_path):
    from qfid.errors import QfidError
    from qfid.testing.tiny import make_tiny_llama

    other = make_tiny_llama(tmp_path / "v", vocab_size=300)
    with pytest.raises(QfidError, match="must share the tokenizer"):
        LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=16, speculative=f"draft:{other}")
    with pytest.raises(QfidError, match="speculative must be"):
        LLM(tiny_llama_dir, dtype="float32", speculative="eagle")
