"""AWQ's scale and clip searches as pure tensor functions (no model)."""
from __future__ import annotations

import pytest
import torch

from qfid.quant.awq_search import (
    candidate_scales,
    group_gram,
    group_output_error,
    search_clip,
    search_scale,
    weight_means,
)
from qfid.layouts.primitives import int4_fake_quantize, int4_quantize

G = 32


@pytest.mark.parametrize("shape", [(16, 64), (7, 96)])
@pytest.mark.parametrize("with_clip", [False, True])
def test_fake_quantize_equals_quantize_then_dequantize_bit_for_bit(shape, with_clip):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    clip = torch.rand(shape[0], shape[1] // G) + 0.5 if with_clip else None
    assert torch.equal(int4_fake_quantize(w, G, clip), int4_quantize(w, G, clip).dequantize())


def test_candidate_scales_are_normalised_and_follow_alpha():
    x_mean = torch.tensor([0.1, 1.0, 10.0, 2.0])
    w_mean = torch.tensor([0.5, 0.5, 0.25, 1.0])
    for alpha in (0.0, 0.35, 0.95):
        s = candidate_scales(x_mean, w_mean, alpha)
        assert s.max() * s.min() == pytest.approx(1.0, rel=1e-5)
    at_zero = candidate_scales(x_mean, w_mean, 0.0)
    expected = 1 / (w_mean + 1e-4)
    assert torch.allclose(at_zero, expected / (expected.max() * expected.min()).sqrt())
    assert candidate_scales(x_mean, w_mean, 0.95).argmax() == 2


def test_weight_means_normalise_each_group_by_its_max():
    w = torch.tensor([[1.0, -2.0, 4.0, 0.0], [3.0, 3.0, -6.0, 6.0]])
    # groups of 2: [1,-2] [4,0] [3,3] [-6,6] -> |w|/max: [.5,1] [1,0] [1,1] [1,1]
    assert torch.allclose(weight_means([w], 2), torch.tensor([0.75, 1.0, 1.0, 0.5]), atol=1e-5)


def test_search_scale_returns_the_lowest_loss_candidate():
    x_mean, w_mean = torch.rand(64) + 0.1, torch.rand(64) + 0.1
    weights = [torch.randn(8, 64)]
    seen = []

    def loss(cands):
        seen.append(cands[0])
        return abs(len(seen) - 7)            # the 7th candidate (alpha = 6/20) is best

    s, best = search_scale(x_mean, w_mean, weights, G, 20, loss)
    assert len(seen) == 20 and best == 0
    assert torch.equal(s, candidate_scales(x_mean, w_mean, 6 / 20))


def test_group_output_error_matches_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x, delta = torch.randn(100, 64, generator=gen), torch.randn(5, 64, generator=gen)
    err = group_output_error(delta, group_gram(x, G), G)
    for g in range(64 // G):
        cols = slice(g * G, (g + 1) * G)
        direct = (x[:, cols] @ delta[:, cols].T).pow(2).mean(dim=0)
        assert torch.allclose(err[:, g], direct, rtol=1e-4)


def test_clip_search_never_loses_to_no_clip_and_stays_in_the_shrink_range():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=gen) * 0.02
    w[:, 0] = 0.5                              # one large weight per row in group 0
    x = torch.randn(512, 64, generator=gen)
    clip = search_clip(w, group_gram(x, G), G)
    gram = group_gram(x, G)
    err_clip = group_output_error(int4_fake_quantize(w, G, clip) - w, gram, G)
    err_rtn = group_output_error(int4_fake_quantize(w, G) - w, gram, G)
    assert (err_clip <= err_rtn).all()
    max_abs = w.abs().reshape(16, 2, G).amax(-1)
    assert (clip <= max_abs).all() and (clip >= 0.525 * max_abs - 1e-6).all()


@pytest.mark.parametrize("rows_per_chunk", [1, 5, 16])
def test_clip_search_by_row_chunks_is_bit_for_bit_the_whole_search(monkeypatch, rows_per_chunk):
    """The CPU search takes CLIP_CHUNK_BYTES of rows at a time (cache-sized passes); rows are
    independent, so any chunking (a ragged last chunk included) picks exactly the same clips."""
    import qfid.quant.awq_search as awq_search

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(37, 96, generator=gen) * 0.02
    x = torch.randn(300, 96, generator=gen) * torch.rand(96, generator=gen) * 4
    gram = group_gram(x, G)
    monkeypatch.setattr(awq_search, "CLIP_CHUNK_BYTES", 1 << 30)
    whole = search_clip(w, gram, G)
    monkeypatch.setattr(awq_search, "CLIP_CHUNK_BYTES", 4 * 96 * rows_per_chunk)
    assert torch.equal(search_clip(w, gram, G), whole)
