"""Per-item figures behind the group statistics: KL over the answer tokens and the margin of
the correct choice, computed once per paired item so any grouping can sum them.

How the runner stores what these read (qfid/evals/evaluate.py): every scored record keeps
the top-k next-token log-probs at each position of the *gold* answer's tokens, teacher-forced
(for multiple choice, the correct choice's continuation); `answer_logprob` is the gold
continuation's summed log-prob. Both runs are forced through the same tokens, so position i
of the baseline and position i of the candidate predict the same token from the same
context; that is what makes per-position KL meaningful. Items whose position counts differ
(a different tokenizer) get no KL rather than a misaligned one.
"""
from __future__ import annotations

import numpy as np

from qfid.evals.stats import topk_kl

KL_NOTE = ("KL(baseline || candidate) per answer token, teacher-forced on the gold answer's tokens (the correct choice "
           "for multiple choice), from the stored top-k log-probs: the vocabulary is coarsened to the baseline's top-k "
           "tokens plus one 'rest' bucket, and a baseline top-k token missing from the candidate's top-k gets the "
           "candidate's leftover mass shared evenly (capped at its k-th probability). When the candidate's top-k holds "
           "all of the baseline's, this is a lower bound of the full KL (data processing inequality); otherwise the filled-in "
           "probabilities are an estimate. With k = vocabulary size it is exact. Mean = over all answer tokens of a group.")


def annotate_items(frame):
    """Add `kl_sum`, `kl_tokens`, `margin_base`, `margin_cand` columns to a paired frame."""
    kl = [item_kl(*row) for row in zip(frame["topk_ids_base"], frame["topk_logprobs_base"],
                                       frame["topk_ids_cand"], frame["topk_logprobs_cand"])]
    frame = frame.assign(kl_sum=[k[0] if k else np.nan for k in kl], kl_tokens=[k[1] if k else 0 for k in kl])
    is_choice = frame["choice_logprobs_base"].map(has_values) & frame["choice_logprobs_cand"].map(has_values)
    margins = {side: [correct_choice_margin(lps, gold) if choice else np.nan for lps, gold, choice in
                      zip(frame[f"choice_logprobs_{side}"], frame[f"answer_logprob_{side}"], is_choice)]
               for side in ("base", "cand")}
    return frame.assign(margin_base=margins["base"], margin_cand=margins["cand"])


def item_kl(base_ids, base_logprobs, cand_ids, cand_logprobs) -> tuple[float, int] | None:
    """(summed KL over the item's answer positions, number of positions), or None when a run
    stored no top-k (eval --top-k 0) or the two runs' positions do not line up."""
    matrices = [_matrix(v) for v in (base_ids, base_logprobs, cand_ids, cand_logprobs)]
    if any(m is None for m in matrices):
        return None
    b_ids, b_lp, c_ids, c_lp = matrices
    if b_ids.shape[0] != c_ids.shape[0] or b_ids.shape != b_lp.shape or c_ids.shape != c_lp.shape:
        return None
    return float(topk_kl(b_ids, b_lp.astype(np.float64), c_ids, c_lp.astype(np.float64)).sum()), int(b_ids.shape[0])


def correct_choice_margin(choice_logprobs, gold_logprob: float) -> float:
    """Log-prob of the correct choice minus the best wrong choice's: positive when the model
    prefers the right answer, and it shrinks under quantization before accuracy flips.

    Records keep the gold continuation's log-prob (`answer_logprob`), not its index, so the
    gold choice is the one whose log-prob equals it; when a wrong choice ties it exactly the
    margin is 0 whichever of the two is taken as gold.
    """
    values = np.asarray(choice_logprobs, dtype=np.float64)
    gold = int(np.argmin(np.abs(values - gold_logprob)))
    wrong = np.delete(values, gold)
    return float(values[gold] - wrong.max()) if wrong.size else float("nan")


def _matrix(value):
    if not has_values(value):
        return None
    return np.stack([np.asarray(row) for row in value])


def has_values(value) -> bool:
    return value is not None and not isinstance(value, float) and len(value) > 0
