"""Perplexity and the held-out text it is measured on."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qfid.errors import QfidError
from qfid.models.loading import load_dense_model
from qfid.quant.calib import BUILTIN_DIR, read_text_dir
from qfid.quant.metrics import HELDOUT_DIR, heldout_ids, perplexity


def test_perplexity_is_exp_of_mean_token_nll_over_all_windows(tiny_llama_dir):
    model, tokenizer = load_dense_model(tiny_llama_dir)
    ids = heldout_ids(tokenizer, 5, 32)
    with torch.no_grad():
        logits = model(ids).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert perplexity(model, ids, batch_size=2) == pytest.approx(math.exp(nll.item()), rel=1e-5)


def test_heldout_ids_are_fixed_windows(tiny_llama_dir):
    _, tokenizer = load_dense_model(tiny_llama_dir)
    ids = heldout_ids(tokenizer, 4, 64)
    assert ids.shape == (4, 64) and torch.equal(ids, heldout_ids(tokenizer, 4, 64))
    with pytest.raises(QfidError, match="held-out text has"):
        heldout_ids(tokenizer, 10_000, 512)


def test_heldout_text_is_not_in_the_calibration_corpus():
    calib = "\n".join(read_text_dir(BUILTIN_DIR))
    for text in read_text_dir(HELDOUT_DIR):
        paragraphs = [p for p in text.split("\n\n") if len(p) > 80]
        assert paragraphs and not any(p[:80] in calib for p in paragraphs)
