"""The speculative pieces without a model: prompt lookup drafts, greedy verification, and
rejection sampling tested for exactness.

Rejection sampling: with fixed target rows p0, p1 and a draft distribution q that is not
one-hot, drafts are drawn from q, verified, and a position the step did not emit is drawn
from the target the next step (as the engine does). The joint of the first two tokens must
be p0 x p1: a chi-square test (fixed seed, N = 20,000 draws, 36 cells, alpha = 0.001) that
the sampler passes, with the power to reject a deliberately wrong residual sampler (drawing
from p instead of max(p - q, 0) after a rejection) computed from the noncentral chi-square
(>= 0.999 here) and checked by running it."""
from __future__ import annotations

import torch
from scipy import stats

from qfid.engine import speculative
from qfid.engine.speculative import NgramProposer, SpecStats, rejection_sample, verify_greedy

N = 20_000
ALPHA = 0.001
P = torch.tensor([[0.30, 0.25, 0.20, 0.12, 0.08, 0.05],
                  [0.06, 0.10, 0.14, 0.20, 0.22, 0.28],
                  [0.20, 0.20, 0.15, 0.15, 0.15, 0.15]])
Q = torch.tensor([[0.10, 0.10, 0.40, 0.20, 0.10, 0.10],
                  [0.30, 0.05, 0.05, 0.30, 0.20, 0.10]])


def test_ngram_proposer_drafts_what_followed_the_latest_match():
    proposer = NgramProposer(k=3)
    assert proposer.propose_tokens([1, 2, 3, 4, 5, 9, 2, 3], limit=8) == [4, 5, 9]        # "2 3" seen before
    assert proposer.propose_tokens([7, 1, 2, 8, 1, 2, 5, 1, 2], limit=8) == [5, 1, 2]     # the latest match wins
    assert proposer.propose_tokens([1, 2, 3, 4, 5, 9, 2, 3], limit=2) == [4, 5]
    assert proposer.propose_tokens([1, 2, 3], limit=4) == [] and proposer.propose_tokens([5, 5], limit=0) == []
    assert NgramProposer(k=4, n_max=3).propose_tokens([4, 4, 4, 4], limit=4) == [4]       # a run proposes itself


def test_greedy_verification_keeps_the_matching_prefix_plus_the_models_token():
    assert verify_greedy([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]
    assert verify_greedy([5, 9, 7, 8], [5, 6, 7]) == [5, 9]
    assert verify_greedy([4, 6, 7, 8], [5, 6, 7]) == [4]


def test_stats_count_acceptance_and_tokens_per_step():
    s = SpecStats()
    s.record(drafted=4, emitted=3)
    s.record(drafted=4, emitted=1)
    assert s.acceptance_rate == 2 / 8 and s.tokens_per_step == 2.0


def _joint_counts(sampler, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(6, 6)
    for _ in range(N):
        drafts = [int(torch.multinomial(Q[j], 1, generator=g)) for j in range(2)]
        emitted = sampler(P, drafts, Q, g)
        if len(emitted) < 2:   # the next step samples position 2 from the target
            emitted.append(int(torch.multinomial(P[1], 1, generator=g)))
        counts[emitted[0], emitted[1]] += 1
    return counts


def _p_value(counts: torch.Tensor) -> float:
    expected = (P[0][:, None] * P[1][None, :] * N).flatten()
    return float(stats.chisquare(counts.flatten().numpy(), expected.numpy()).pvalue)


def _wrong_residual():
    """After a rejection, draw from p itself (ignoring q): biased towards the draft's rivals."""
    original = speculative._draw

    def wrong(probs, drafts, draft_probs=None, generator=None):
        emitted = []
        for j, d in enumerate(drafts):
            if float(torch.rand(1, generator=generator)) * float(draft_probs[j, d]) < float(probs[j, d]):
                emitted.append(d)
                continue
            emitted.append(original(probs[j], generator))
            return emitted
        emitted.append(original(probs[len(drafts)], generator))
        return emitted
    return wrong


def test_rejection_sampling_draws_exactly_the_target_distribution():
    assert _p_value(_joint_counts(rejection_sample)) > ALPHA


def test_the_test_has_power_against_a_wrong_residual_sampler():
    # first token under the wrong sampler: min(p, q) + (1 - sum min(p, q)) p. Its chi-square
    # divergence from p0 bounds the joint's from below (marginalizing never increases it),
    # so the noncentral chi-square with N * w2 is a lower bound on the test's power.
    overlap = torch.minimum(P[0], Q[0])
    wrong_first = overlap + (1 - overlap.sum()) * P[0]
    w2 = float((((wrong_first - P[0]) ** 2) / P[0]).sum())   # effect size on the first token's marginal alone
    critical = stats.chi2.isf(ALPHA, df=35)
    power = stats.ncx2.sf(critical, df=35, nc=N * w2)
    assert power >= 0.999
    assert _p_value(_joint_counts(_wrong_residual())) < ALPHA
