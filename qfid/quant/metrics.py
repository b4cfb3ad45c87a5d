"""Perplexity: the quality figure every scheme is compared on.

`heldout_ids` reads `qfid/data/heldout/`, generic text that is never part of the calibration
corpus, so an AWQ result cannot look good by having been tuned on the text it is scored on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qfid.errors import QfidError
from qfid.quant.calib import DATA_DIR, read_text_dir, token_windows, tokenize_stream

HELDOUT_DIR = DATA_DIR / "heldout"


def perplexity(model, ids: torch.LongTensor, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over every predicted token of every window [n, L]."""
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for batch in ids.split(batch_size):
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:]
            total_nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         reduction="sum").item()
            total_tokens += targets.numel()
    return math.exp(total_nll / total_tokens)


def heldout_ids(tokenizer, n_windows: int, seq_len: int) -> torch.LongTensor:
    """The first `n_windows` windows of `seq_len` tokens of the held-out text (fixed, so
    every run and scheme is scored on the same tokens)."""
    ids = tokenize_stream(read_text_dir(HELDOUT_DIR), tokenizer)
    windows = token_windows(ids, seq_len)
    if len(windows) < n_windows:
        raise QfidError(f"held-out text has {len(ids):,} tokens; {n_windows} x {seq_len} = "
                        f"{n_windows * seq_len:,} are needed")
    return windows[:n_windows]
