"""SamplingParams validation and the batched sampler's distributions, without a model."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from qfid.engine.sampling import SamplingParams, logprob_entries, sample
from qfid.errors import QfidError

LOGITS = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))


def seqs(n, **params):
    return [SimpleNamespace(params=SamplingParams(**params), generator=None) for _ in range(n)]


def frequencies(tokens: list[int], vocab: int = 4) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).float() / len(tokens)


@pytest.mark.parametrize("bad, message", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-2), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(logprobs=21), "logprobs"),
    (dict(prompt_logprobs=-1), "prompt_logprobs"),
    (dict(stop=[""]), "stop strings"),
])
def test_invalid_params_fail_with_a_clear_message(bad, message):
    with pytest.raises(QfidError, match=message):
        SamplingParams(**bad)


def test_params_are_normalised():
    params = SamplingParams(stop="###", stop_token_ids=[3, 4], top_k=-1, temperature=0)
    assert params.stop == ("###",) and params.stop_token_ids == (3, 4) and params.top_k == 0 and params.greedy


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(5, 11)
    assert sample(logits, seqs(5, temperature=0.0)) == logits.argmax(-1).tolist()


def test_top_k_one_and_tiny_top_p_collapse_to_the_argmax():
    logits = LOGITS.repeat(200, 1)
    assert set(sample(logits, seqs(200, temperature=1.5, top_k=1))) == {0}
    assert set(sample(logits, seqs(200, temperature=1.5, top_p=0.01))) == {0}


def test_temperature_sampling_follows_the_softened_distribution():
    torch.manual_seed(0)
    tokens = sample(LOGITS.repeat(20_000, 1), seqs(20_000, temperature=2.0))
    expected = torch.softmax(LOGITS / 2.0, -1)
    assert torch.allclose(frequencies(tokens), expected, atol=0.015)


def test_top_k_renormalises_over_the_k_most_likely():
    torch.manual_seed(1)
    tokens = sample(LOGITS.repeat(20_000, 1), seqs(20_000, top_k=2))
    assert torch.allclose(frequencies(tokens), torch.tensor([0.625, 0.375, 0, 0]), atol=0.015)


def test_top_k_past_the_vocabulary_keeps_every_token():
    """Even past int64 (a fuzzed request sent 2**63 and got a 500)."""
    logits = LOGITS.repeat(3, 1)
    for top_k in (4, 5, 2**63):
        torch.manual_seed(3)
        capped = sample(logits, seqs(3, temperature=1.0, top_k=top_k))
        torch.manual_seed(3)
        assert capped == sample(logits, seqs(3, temperature=1.0))


def test_top_p_keeps_the_smallest_set_reaching_p():
    torch.manual_seed(2)
    tokens = sample(LOGITS.repeat(20_000, 1), seqs(20_000, top_p=0.7))  # 0.5 < 0.7 <= 0.8: tokens 0, 1
    assert torch.allclose(frequencies(tokens), torch.tensor([0.625, 0.375, 0, 0]), atol=0.015)


def test_seeded_requests_repeat_whatever_shares_their_batch():
    logits = torch.randn(1, 64).repeat(3, 1)

    def draws(batch_seeds, steps=8):
        batch = [SimpleNamespace(params=SamplingParams(temperature=1.0, seed=s), generator=None) for s in batch_seeds]
        return [sample(logits, batch) for _ in range(steps)]

    alone = [row[0] for row in draws([7, None, None])]
    crowded = [row[2] for row in draws([None, 3, 7])]
    other_seed = [row[0] for row in draws([8, None, None])]
    assert alone == crowded and alone != other_seed


def test_logprob_entries_hold_the_chosen_token_and_the_top_k():
    logprobs = torch.log_softmax(torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]]), -1)
    first, second = logprob_entries(logprobs, [0, 0], [2, 0])
    assert list(first) == [0, 1, 3] and first[1] == pytest.approx(logprobs[0, 1].item())
    assert first[0] == pytest.approx(logprobs[0, 0].item())
    assert second == {0: pytest.approx(logprobs[1, 0].item())}
