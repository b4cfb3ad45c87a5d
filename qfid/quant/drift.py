"""Perplexity from the hidden states a streamed pass leaves after the last block: the final
norm, then the LM head and log-softmax in chunks.

A whole-model reload just to measure drift would defeat streaming, and 8,192 tokens x a
128k vocabulary of fp32 logits is 4.2 GB; chunks of tokens x vocabulary rows keep it to
16 MB, with a running log-sum-exp (exact up to fp32 summation order).
"""
from __future__ import annotations

import math

import torch

# 256 x 16384 fp32 logits are 16 MB: under glibc's mmap threshold (32 MB at most), so each
# chunk's logits and log-sum-exp temporaries reuse heap memory; at 512 tokens they were 32 MB
# fresh mappings, page-faulted for every chunk.
TOKEN_CHUNK = 256
VOCAB_CHUNK = 16384


def next_token_nll(normed: torch.Tensor, ids: torch.Tensor, head: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token NLL, tokens scored) for final-normed hidden states [n, L, H], the
    windows' token ids [n, L] and the LM head weight [vocab, H] (any dtype; used in fp32).
    The vocabulary is the outer loop, so each slice of a 16-bit head is upcast once (on an
    8B that is 2 GB of fp32 converted once, not once per token chunk)."""
    hidden = normed[:, :-1].reshape(-1, normed.shape[-1]).float()
    targets = ids[:, 1:].reshape(-1).to(hidden.device)
    lse = torch.full((hidden.shape[0],), -math.inf, device=hidden.device)
    target_logit = torch.zeros(hidden.shape[0], device=hidden.device)
    for v0 in range(0, head.shape[0], VOCAB_CHUNK):
        rows = head[v0:v0 + VOCAB_CHUNK].float().t()
        for start in range(0, hidden.shape[0], TOKEN_CHUNK):
            end = start + TOKEN_CHUNK
            logits = hidden[start:end] @ rows
            lse[start:end] = torch.logaddexp(lse[start:end], logits.logsumexp(dim=-1))
            t = targets[start:end]
            inside = (t >= v0) & (t < v0 + logits.shape[1])
            target_logit[start:end][inside] = logits[inside, t[inside] - v0]
    return (lse - target_logit).sum().item(), targets.numel()


def perplexity_of(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / max(tokens, 1))
