"""The engine backend scores exactly what the HF backend scores: same token ids (shared
lm-eval tokenisation), log-likelihoods within 1e-4 in fp32, same greedy flags, same top-k,
same greedy generations."""
from __future__ import annotations

import numpy as np
import pytest

REQUESTS = [
    ("The tenant shall pay rent", " on the first day"),
    ("Revenue rose 12.5% to", " $1,234,567"),
    ("", "question answer: yes"),
    ("El precio subió un ", "3,5 por ciento"),
]


@pytest.fixture(scope="module")
def backends(tiny_llama_dir):
    from qfid.evals.backends import make_backend

    return (make_backend("hf", str(tiny_llama_dir), batch_size=3, dtype="float32"),
            make_backend("engine", str(tiny_llama_dir), batch_size=3, dtype="float32"))


def test_loglikelihood_matches_hf(backends):
    hf, engine = backends
    expected, got = hf.loglikelihood(REQUESTS, top_k=5), engine.loglikelihood(REQUESTS, top_k=5)
    for e, g in zip(expected, got):
        assert g.n_tokens == e.n_tokens and g.is_greedy == e.is_greedy
        assert g.logprob == pytest.approx(e.logprob, abs=1e-4)
        assert g.topk.ids == e.topk.ids
        np.testing.assert_allclose(g.topk.logprobs, e.topk.logprobs, atol=1e-4)


def test_rolling_matches_hf(backends):
    hf, engine = backends
    texts = ["The quarterly revenue rose while costs fell.", "1 2 3 4 5 6 7 8 9 10"]
    for e, g in zip(hf.loglikelihood_rolling(texts), engine.loglikelihood_rolling(texts)):
        assert g.n_tokens == e.n_tokens and g.logprob == pytest.approx(e.logprob, abs=1e-4)


def test_greedy_generation_matches_hf(backends):
    hf, engine = backends
    prompts = ["The tenant shall", "Der Vertrag endet am", "1 2 3"]
    assert engine.generate(prompts, 12, ["\n\n"]) == hf.generate(prompts, 12, ["\n\n"])


def test_choices_sharing_a_long_context_reuse_it_and_match_hf(backends):
    """Four choices after one long context: the second wave finds the context in the prefix
    cache (hits counted) and every score still equals HF's."""
    hf, engine = backends
    context = "The lease between the parties states that the tenant shall pay rent monthly. " * 3 + "Question: when is rent due?"
    requests = [(context, choice) for choice in (" monthly", " weekly", " yearly", " never")]
    hits_before = engine.llm.engine.block_manager.prefix_hits
    got, expected = engine.loglikelihood(requests, top_k=2), hf.loglikelihood(requests, top_k=2)
    assert engine.llm.engine.block_manager.prefix_hits - hits_before == 3
    for e, g in zip(expected, got):
        assert g.logprob == pytest.approx(e.logprob, abs=1e-4) and g.is_greedy == e.is_greedy


def test_a_dense_model_records_no_expert_routing(backends):
    hf, engine = backends
    assert hf.expert_routing(REQUESTS) is None and engine.expert_routing(REQUESTS) is None
