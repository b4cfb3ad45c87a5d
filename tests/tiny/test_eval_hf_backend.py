"""The HF backend on the tiny random Llama: batching and padding never change a score, the
greedy flag and rolling log-likelihood agree with a plain forward pass."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
    from qfid.evals.backends.hf import HFBackend

    return HFBackend.from_model(str(tiny_llama_dir), batch_size=4, dtype="float32")


def _reference_logprob(backend, context_ids, continuation_ids):
    """One unpadded forward pass, summed log-probs of the continuation."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.inference_mode():
        logprobs = backend.model(input_ids=ids).logits[0].float().log_softmax(-1)
    start = len(context_ids) - 1
    return sum(float(logprobs[start + i, t]) for i, t in enumerate(continuation_ids))


REQUESTS = [
    ("The tenant shall pay rent", " on the first day"),
    ("Revenue rose 12.5% to", " $1,234,567"),
    ("Question: yes or no?\nAnswer:", " no"),
    ("A much longer context about the landlord and the tenant and the quarterly revenue of the company", " yes"),
    ("", "The quarterly revenue rose."),
]


def test_batched_loglikelihood_matches_unpadded_forward(backend):
    results = backend.loglikelihood(REQUESTS, top_k=3)
    for (context, continuation), result in zip(REQUESTS, results):
        ctx_ids, cont_ids = backend._encode_pair(context, continuation)
        assert result.n_tokens == len(cont_ids) > 0
        assert result.logprob == pytest.approx(_reference_logprob(backend, ctx_ids, cont_ids), abs=1e-4)
        assert len(result.topk.ids) == len(cont_ids) and all(len(row) == 3 for row in result.topk.ids)
        assert result.topk.logprobs[0][0] >= result.topk.logprobs[0][-1]


def test_trailing_space_moves_to_the_continuation(backend):
    assert backend._encode_pair("Answer: ", "yes") == backend._encode_pair("Answer:", " yes")


def test_greedy_flag_is_true_exactly_for_the_argmax_continuation(backend):
    context = backend.encode("The tenant shall pay")
    ids, greedy = list(context), []
    with torch.inference_mode():
        for _ in range(3):
            next_id = int(backend.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(next_id)
            greedy.append(next_id)
    other = [(greedy[0] + 1) % backend.model.config.vocab_size, *greedy[1:]]
    first, second = backend.score_token_pairs([(context, greedy), (context, other)], top_k=1)
    assert first.is_greedy and not second.is_greedy
    assert [row[0] for row in first.topk.ids] == greedy


def test_rolling_loglikelihood_covers_every_token_and_windows_add_up(backend):
    text = "The quarterly revenue rose 12.5% to $1,234,567 while costs fell. " * 3
    tokens = backend.encode(text)
    whole = backend.loglikelihood_rolling([text])[0]
    assert whole.n_tokens == len(tokens)
    assert whole.logprob == pytest.approx(_reference_logprob(backend, [backend._prefix_id()], tokens), abs=1e-3)
    saved, backend.max_length = backend.max_length, 16
    try:
        windowed = backend.loglikelihood_rolling([text])[0]
    finally:
        backend.max_length = saved
    assert windowed.n_tokens == len(tokens)
    expected = sum(_reference_logprob(backend, [([backend._prefix_id()] + tokens)[s]], tokens[s:s + 16]) for s in range(0, len(tokens), 16))
    assert windowed.logprob == pytest.approx(expected, abs=1e-3)


def test_batched_generation_equals_one_at_a_time(backend):
    prompts = ["The tenant shall", "Revenue rose 12.5% to $1,234,567 while", "yes no"]
    together = backend.generate(prompts, max_tokens=4, stop=[])
    backend.batch_size = 1
    try:
        alone = [backend.generate([p], max_tokens=4, stop=[])[0] for p in prompts]
    finally:
        backend.batch_size = 4
    assert together == alone
    assert all(isinstance(t, str) for t in together)


def test_generation_cuts_at_the_stop_string(backend):
    full = backend.generate(["The tenant shall"], max_tokens=6, stop=[])[0]
    assert len(full) > 2, full
    stop = full[1:3]
    assert backend.generate(["The tenant shall"], max_tokens=6, stop=[stop])[0] == full[: full.find(stop)]
