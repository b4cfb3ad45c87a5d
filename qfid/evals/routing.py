"""Expert-routing agreement of two runs of an MoE model: per MoE layer, the share of tokens
whose set of top-k experts is the same in the candidate as in the baseline.

What the runs store (qfid/evals/evaluate.py): every scored record of an MoE model holds the
routing of its gold request, teacher-forced (the prompt plus the gold answer, the correct
choice for multiple choice: every token the model reads for it). `expert_ids[layer]` lists
each token's k expert ids one token after another and `expert_k` is k. Both runs are forced
through the same token ids, so token t of the baseline and token t of the candidate saw the
same context; a quantized router or a shifted hidden state shows up as a different set.

Sets, not rankings: which experts a token reaches is what changes the computation (their
weights change with any perturbation anyway). Tokens are pooled over items, so a long prompt
weighs more than a short one, and a few-shot prefix shared by a suite's items counts once
per item. Items whose two routings do not line up (one side missing, a different token
count, layer count or k) are left out and counted in a note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qfid.evals.item_metrics import has_values

ROUTING_LEVELS = ("overall", "suite")
ROUTING_NOTE = ("expert-routing agreement: per MoE layer, the share of tokens whose top-k expert set (order ignored) is the "
                "same in the candidate as in the baseline, teacher-forced on each scored item's prompt + gold answer (the "
                "correct choice for multiple choice), every token of it; 'all layers' pools every layer's tokens.")


@dataclass
class RoutingStats:
    level: str                # overall | suite
    name: str                 # all | the suite's name
    items: int                # items whose routing lines up in both runs
    tokens: int               # tokens compared per layer
    agreement: float          # all layers pooled
    per_layer: list[float]    # agreement of each MoE layer, model order


def annotate_routing(frame):
    """Add `routing_agree` (agreeing tokens per layer, or None) and `routing_tokens` (tokens
    per layer, 0 where the item's routings do not line up) to a paired frame."""
    results = [item_agreement(*row) for row in zip(frame["expert_ids_base"], frame["expert_k_base"],
                                                    frame["expert_ids_cand"], frame["expert_k_cand"])]
    return frame.assign(routing_agree=[r[0] if r else None for r in results], routing_tokens=[r[1] if r else 0 for r in results])


def item_agreement(base_ids, base_k, cand_ids, cand_k) -> tuple[np.ndarray, int] | None:
    """(tokens whose expert sets agree, per layer; tokens per layer), or None when the two
    routings do not line up."""
    base, cand = routing_matrix(base_ids, base_k), routing_matrix(cand_ids, cand_k)
    if base is None or cand is None or base.shape != cand.shape or base.shape[1] == 0:
        return None
    same = (np.sort(base, axis=-1) == np.sort(cand, axis=-1)).all(axis=-1)  # [layers, tokens]
    return same.sum(axis=1), int(base.shape[1])


def routing_matrix(ids, k) -> np.ndarray | None:
    """Stored routing as [layers, tokens, k], or None when absent or malformed."""
    if not has_values(ids) or k is None or (isinstance(k, float) and math.isnan(k)) or int(k) < 1:
        return None
    layers = [np.asarray(layer, dtype=np.int64) for layer in ids]
    if any(layer.size != layers[0].size for layer in layers) or layers[0].size % int(k):
        return None
    return np.stack(layers).reshape(len(layers), -1, int(k))


def routing_rows(groupings) -> list[RoutingStats]:
    """One row per overall/suite group (from compare's groupings) that has routing to compare."""
    rows = [group_routing(level, name, part) for level, name, part in groupings if level in ROUTING_LEVELS]
    return [row for row in rows if row is not None]


def group_routing(level: str, name: str, rows) -> RoutingStats | None:
    comparable = rows[rows["routing_tokens"] > 0]
    if comparable.empty:
        return None
    agree = np.stack(comparable["routing_agree"].to_list()).sum(axis=0)
    tokens = int(comparable["routing_tokens"].sum())
    return RoutingStats(level, name, int(len(comparable)), tokens, float(agree.sum() / (tokens * agree.size)),
                        (agree / tokens).tolist())


def routing_notes(frame, base_name: str, cand_name: str) -> list[str]:
    """Say what the routing figures rest on; when only one run has routing, say why none is shown."""
    recorded = {name: bool(frame[f"expert_ids_{side}"].map(has_values).any()) for name, side in ((base_name, "base"), (cand_name, "cand"))}
    if not any(recorded.values()):
        return []
    if not all(recorded.values()):
        only = next(name for name, has in recorded.items() if has)
        return [f"expert routing: only run {only} recorded it (the other is a dense model, an openai-backend run or a run from "
                "a qfid before routing was recorded), so no routing agreement is shown"]
    skipped = int((frame["routing_tokens"] == 0).sum())
    lined_up = ([] if not skipped else
                [f"expert routing: {skipped} of {len(frame)} scored items have no routing that lines up in both runs (missing on "
                 "one side, or a different token count, layer count or experts per token) and are left out"])
    return [ROUTING_NOTE, *lined_up]
