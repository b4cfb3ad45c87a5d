"""Held-out perplexity of a checkpoint (text never used for calibration): the quality figure
`qfid demo` and `bench/quantize.py` put next to each scheme."""
from __future__ import annotations

from pathlib import Path

HELDOUT_WINDOWS = 8
HELDOUT_SEQ_LEN = 512


def heldout_perplexity(model_path: str | Path, n_windows: int = HELDOUT_WINDOWS, seq_len: int = HELDOUT_SEQ_LEN) -> float:
    from qfid.quant.formats import load_quantized_or_dense, load_tokenizer
    from qfid.quant.metrics import heldout_ids, perplexity

    tokenizer = load_tokenizer(str(model_path))
    ids = heldout_ids(tokenizer, n_windows, seq_len)
    return perplexity(load_quantized_or_dense(str(model_path)), ids)
