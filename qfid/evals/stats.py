"""Paired statistics for comparing a candidate run with its baseline, item by item.

Everything takes per-item arrays aligned by item id (the caller pairs them):
- accuracy delta with a paired bootstrap CI (resample items, keep pairs together);
- McNemar's exact test on the discordant pairs (two-sided binomial, p = 0.5);
- flips (Dutta et al. 2024, "Accuracy is Not All You Need"): correct->wrong and
  wrong->correct counts and the flip rate, which can be large while accuracy barely moves;
- KL divergence of the candidate's next-token distribution from the baseline's, from stored
  top-k log-probs (see `topk_kl` for the approximation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedAccuracy:
    n: int
    base_acc: float
    cand_acc: float
    delta: float           # cand - base, in [-1, 1]
    ci_low: float
    ci_high: float
    correct_to_wrong: int
    wrong_to_correct: int
    mcnemar_p: float

    @property
    def flip_rate(self) -> float:
        return (self.correct_to_wrong + self.wrong_to_correct) / self.n if self.n else 0.0

    def significant_drop(self, alpha: float) -> bool:
        return self.delta < 0 and self.ci_high < 0 and self.mcnemar_p < alpha


def _binom_two_sided_half(k: int, n: int) -> float:
    """P-value of the exact two-sided binomial test of k successes in n at p = 0.5:
    2 * P(X <= min(k, n-k)), capped at 1. Summed in log space so large n stays exact."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    peak = max(log_terms)
    tail = math.exp(peak) * sum(math.exp(t - peak) for t in log_terms)
    return min(1.0, 2.0 * tail)


def mcnemar_exact(correct_to_wrong: int, wrong_to_correct: int) -> float:
    return _binom_two_sided_half(correct_to_wrong, correct_to_wrong + wrong_to_correct)


def bootstrap_delta_ci(base: np.ndarray, cand: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile CI of mean(cand - base) over items resampled with replacement."""
    diff = cand.astype(np.float64) - base.astype(np.float64)
    if diff.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
    means = diff[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_accuracy(base_correct, cand_correct, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> PairedAccuracy:
    base = np.asarray(base_correct, dtype=bool)
    cand = np.asarray(cand_correct, dtype=bool)
    if base.shape != cand.shape:
        raise ValueError(f"paired arrays differ in length: {base.shape} vs {cand.shape}")
    c2w = int((base & ~cand).sum())
    w2c = int((~base & cand).sum())
    low, high = bootstrap_delta_ci(base, cand, n_boot, level, seed)
    n = int(base.size)
    base_acc = float(base.mean()) if n else 0.0
    cand_acc = float(cand.mean()) if n else 0.0
    return PairedAccuracy(n, base_acc, cand_acc, cand_acc - base_acc, low, high, c2w, w2c, mcnemar_exact(c2w, w2c))


def min_detectable_drop(n: int, discordance: float = 0.1, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy drop a paired test on n items detects with the given power, for an
    expected discordant-pair share (normal approximation to McNemar, Connor 1987): the
    figure the report states as the run's statistical power."""
    if n <= 0:
        return float("inf")
    from scipy.stats import norm

    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return float((z_a + z_b) * math.sqrt(discordance / n))


def topk_kl(base_ids: np.ndarray, base_logprobs: np.ndarray, cand_ids: np.ndarray, cand_logprobs: np.ndarray) -> np.ndarray:
    """KL(P_base || P_cand) per position from top-k log-probs, arrays [positions, k].

    Approximation (stated in reports): the vocabulary is coarsened to the baseline's top-k
    tokens plus one "rest" bucket. A token missing from the candidate's top-k gets the
    candidate's leftover mass shared evenly among the missing tokens, capped at its k-th
    probability. On the coarsened partition KL is a lower bound of the full KL (data
    processing); with k = vocabulary size it is exact.
    """
    kls = np.empty(base_ids.shape[0])
    for pos in range(base_ids.shape[0]):
        kls[pos] = _coarse_kl(base_ids[pos], np.exp(base_logprobs[pos]), cand_ids[pos], np.exp(cand_logprobs[pos]))
    return kls


def _coarse_kl(b_ids, b_p, c_ids, c_p) -> float:
    c_lookup = dict(zip(c_ids.tolist(), c_p.tolist()))
    missing = [t for t in b_ids.tolist() if t not in c_lookup]
    c_left = max(0.0, 1.0 - float(c_p.sum()))
    fill = min(float(c_p.min()), c_left / len(missing)) if missing else 0.0
    q = np.array([c_lookup.get(t, fill) for t in b_ids.tolist()])
    p_rest = max(0.0, 1.0 - float(b_p.sum()))
    q_rest = max(0.0, 1.0 - float(q.sum()))
    eps = 1e-12
    kl = float(np.sum(b_p * (np.log(b_p + eps) - np.log(q + eps))))
    if p_rest > 1e-9:
        kl += p_rest * (math.log(p_rest + eps) - math.log(q_rest + eps))
    return max(kl, 0.0)
