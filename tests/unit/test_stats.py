"""Paired statistics against scipy / numpy computations and hand-built cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from qfid.evals.stats import (
    bootstrap_delta_ci,
    mcnemar_exact,
    min_detectable_drop,
    paired_accuracy,
    topk_kl,
)


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (5, 2), (10, 10), (1, 20), (40, 61), (300, 250)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_flips_on_hand_built_runs():
    base = [1, 1, 1, 0, 0, 1, 0, 1]
    cand = [1, 0, 0, 1, 0, 1, 0, 1]
    r = paired_accuracy(base, cand)
    assert (r.correct_to_wrong, r.wrong_to_correct) == (2, 1)
    assert r.flip_rate == pytest.approx(3 / 8)
    assert r.delta == pytest.approx(-1 / 8)


def test_flips_can_hide_behind_equal_accuracy():
    base = np.array([1] * 50 + [0] * 50, dtype=bool)
    cand = np.array([0] * 20 + [1] * 30 + [1] * 20 + [0] * 30, dtype=bool)
    r = paired_accuracy(base, cand)
    assert r.delta == 0 and r.flip_rate == pytest.approx(0.4)


def test_bootstrap_ci_matches_a_direct_numpy_bootstrap():
    rng = np.random.default_rng(1)
    base = rng.random(300) < 0.7
    cand = base.copy()
    cand[rng.choice(300, 30, replace=False)] ^= True
    low, high = bootstrap_delta_ci(base, cand, n_boot=4000, seed=7)
    diff = cand.astype(float) - base.astype(float)
    direct = np.random.default_rng(7)
    means = diff[direct.integers(0, 300, size=(4000, 300))].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert low <= diff.mean() <= high


def test_significant_drop_detected_and_not_for_noise():
    base = np.ones(200, dtype=bool)
    cand = base.copy()
    cand[:30] = False
    assert paired_accuracy(base, cand).significant_drop(0.05)
    cand2 = base.copy()
    cand2[:1] = False
    assert not paired_accuracy(base, cand2).significant_drop(0.05)


def test_min_detectable_drop_shrinks_with_n():
    assert min_detectable_drop(100) > min_detectable_drop(400) > 0
    assert min_detectable_drop(400) == pytest.approx(min_detectable_drop(100) / 2)


def _topk(logits: np.ndarray, k: int):
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[:, :k]
    return ids, np.take_along_axis(logp, ids, axis=-1), logp


def test_topk_kl_exact_with_full_vocab_and_close_with_small_k():
    rng = np.random.default_rng(0)
    vocab = 50
    base_logits = rng.normal(size=(16, vocab)) * 3
    cand_logits = base_logits + rng.normal(size=(16, vocab)) * 0.3
    b_ids, b_lp, b_full = _topk(base_logits, vocab)
    c_ids, c_lp, c_full = _topk(cand_logits, vocab)
    direct = (np.exp(b_full) * (b_full - c_full)).sum(axis=-1)
    np.testing.assert_allclose(topk_kl(b_ids, b_lp, c_ids, c_lp), direct, rtol=1e-6, atol=1e-9)
    b_ids, b_lp, _ = _topk(base_logits, 10)
    c_ids, c_lp, _ = _topk(cand_logits, 10)
    approx = topk_kl(b_ids, b_lp, c_ids, c_lp)
    assert np.all(approx >= 0)
    assert approx.mean() == pytest.approx(direct.mean(), rel=0.5)


def test_identical_distributions_have_zero_kl():
    rng = np.random.default_rng(3)
    ids, lp, _ = _topk(rng.normal(size=(4, 30)), 5)
    np.testing.assert_allclose(topk_kl(ids, lp, ids, lp), 0, atol=1e-9)
