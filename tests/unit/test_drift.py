"""The streamed drift check's chunked LM head + log-softmax equals one full cross entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qfid.quant import drift


def test_chunked_nll_equals_full_cross_entropy(monkeypatch):
    monkeypatch.setattr(drift, "VOCAB_CHUNK", 100)   # several vocabulary and token chunks, ragged ends
    monkeypatch.setattr(drift, "TOKEN_CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    hidden, ids = torch.randn(3, 20, 16, generator=g), torch.randint(0, 450, (3, 20), generator=g)
    head = torch.randn(450, 16, generator=g).bfloat16()
    nll, tokens = drift.next_token_nll(hidden, ids, head)
    logits = hidden[:, :-1].reshape(-1, 16) @ head.float().t()
    expected = F.cross_entropy(logits, ids[:, 1:].reshape(-1), reduction="sum").item()
    assert tokens == 57
    assert abs(nll - expected) <= 1e-5 * abs(expected)
