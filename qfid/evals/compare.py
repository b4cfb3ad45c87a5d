"""Compare a candidate run with its baseline, item by item, broken down by suite, category and
language: the figures `qfid compare`, `qfid gate` and `qfid report` all read.

Group names: `all` (every scored item), the suite name, `suite/category`, and `suite/lang`.
Categories and languages stay inside their suite because the same label in two suites is a
different task (finance-mc and finance share categories but not scoring); language rows
exist only for suites with more than one language, where they compare parallel items like
with like (a one-language suite's language row would repeat its suite row).

Runs of an MoE model add expert-routing agreement per MoE layer, overall and per suite
(`routing.py`); dense models have none and show none.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qfid.evals.item_metrics import KL_NOTE, annotate_items
from qfid.evals.pairing import LoadedRun, load_run, pair_runs
from qfid.evals.routing import RoutingStats, annotate_routing, routing_notes, routing_rows
from qfid.evals.stats import min_detectable_drop, paired_accuracy

LEVELS = ("overall", "suite", "category", "lang")
CONFIDENCE = 0.95
POWER = 0.8
# Expected share of discordant pairs for the power figure when the run shows fewer flips:
# with no flips observed the post-hoc figure would claim any drop is detectable.
MIN_DISCORDANCE = 0.1
POWER_NOTE = (f"min detectable drop: the smallest accuracy drop a paired McNemar test on the group's items detects with "
              f"{POWER:.0%} power at the comparison's alpha, taking the observed flip rate (at least {MIN_DISCORDANCE:.0%}) "
              "as the share of discordant pairs (normal approximation, Connor 1987).")


@dataclass
class GroupStats:
    level: str
    name: str
    n: int
    base_acc: float
    cand_acc: float
    delta: float                  # cand - base accuracy, fraction
    ci_low: float                 # paired bootstrap CI of delta
    ci_high: float
    mcnemar_p: float
    correct_to_wrong: int
    wrong_to_correct: int
    flip_rate: float
    mean_kl: float | None         # nats per answer token; None when no top-k was comparable
    kl_tokens: int
    margin_delta: float | None    # mean change of the correct choice's margin (choice items only)
    margin_items: int
    min_detectable_drop: float    # fraction, see POWER_NOTE
    significant_regression: bool  # delta < 0, CI below 0 and McNemar p < alpha


@dataclass
class PerplexityStats:
    suite: str
    n: int
    base_tokens: int
    cand_tokens: int
    base_ppl: float
    cand_ppl: float
    change: float                 # cand / base - 1


@dataclass
class Comparison:
    baseline: dict
    candidate: dict
    alpha: float
    confidence: float
    groups: list[GroupStats] = field(default_factory=list)
    perplexity: list[PerplexityStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    routing: list[RoutingStats] = field(default_factory=list)  # MoE runs only: overall, then per suite

    def rows(self, level: str) -> list[GroupStats]:
        return [g for g in self.groups if g.level == level]

    def regressions(self) -> list[GroupStats]:
        """Suite, category and language groups that regress significantly."""
        return [g for g in self.groups if g.significant_regression and g.level != "overall"]

    def group(self, level: str, name: str) -> GroupStats | None:
        return next((g for g in self.groups if g.level == level and g.name == name), None)

    def routing_group(self, level: str, name: str) -> RoutingStats | None:
        """Routing agreement of the overall group or a suite; None for a dense model."""
        return next((r for r in self.routing if r.level == level and r.name == name), None)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (NaN and infinity become null)."""
        return _json_safe(asdict(self))


def compare_runs(base_ref: str | Path, cand_ref: str | Path, runs_dir: str | Path = "reports/runs", intersect: bool = False,
                 alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Load two runs (names under runs_dir, or run folders) and compare them."""
    return compare_loaded(load_run(base_ref, runs_dir), load_run(cand_ref, runs_dir), intersect, alpha, n_boot, seed)


def compare_loaded(base: LoadedRun, cand: LoadedRun, intersect: bool = False, alpha: float = 0.05,
                   n_boot: int = 2000, seed: int = 0) -> Comparison:
    pairing = pair_runs(base, cand, intersect)
    frame = annotate_routing(annotate_items(pairing.frame))
    scored = frame[frame["scorer"] != "perplexity"]
    groups = [_group_stats(level, name, part, alpha, n_boot, seed) for level, name, part in _groupings(scored)]
    notes = (pairing.notes + _run_notes(base, cand) + _coverage_notes(scored) + [KL_NOTE, POWER_NOTE]
             + routing_notes(scored, base.name, cand.name))
    return Comparison(base.describe(), cand.describe(), alpha, CONFIDENCE, groups, _perplexity_rows(frame), notes,
                      routing_rows(_groupings(scored)))


def _groupings(scored):
    """(level, name, rows) for every group, in a stable order."""
    if scored.empty:
        return
    yield "overall", "all", scored
    by_suite = list(scored.groupby("suite", sort=True))
    for suite, part in by_suite:
        yield "suite", suite, part
    for suite, part in by_suite:
        for category, rows in part.groupby("category", sort=True):
            yield "category", f"{suite}/{category}", rows
    for suite, part in by_suite:
        if part["lang"].nunique() > 1:
            for lang, rows in part.groupby("lang", sort=True):
                yield "lang", f"{suite}/{lang}", rows


def _group_stats(level: str, name: str, rows, alpha: float, n_boot: int, seed: int) -> GroupStats:
    paired = paired_accuracy(rows["correct_base"].astype(bool).to_numpy(), rows["correct_cand"].astype(bool).to_numpy(),
                             n_boot=n_boot, level=CONFIDENCE, seed=seed)
    kl_tokens = int(rows["kl_tokens"].sum())
    margins = (rows["margin_cand"] - rows["margin_base"]).dropna()
    return GroupStats(
        level=level, name=name, n=paired.n, base_acc=paired.base_acc, cand_acc=paired.cand_acc, delta=paired.delta,
        ci_low=paired.ci_low, ci_high=paired.ci_high, mcnemar_p=paired.mcnemar_p,
        correct_to_wrong=paired.correct_to_wrong, wrong_to_correct=paired.wrong_to_correct, flip_rate=paired.flip_rate,
        mean_kl=float(rows["kl_sum"].sum(skipna=True) / kl_tokens) if kl_tokens else None, kl_tokens=kl_tokens,
        margin_delta=float(margins.mean()) if len(margins) else None, margin_items=int(len(margins)),
        min_detectable_drop=min_detectable_drop(paired.n, max(paired.flip_rate, MIN_DISCORDANCE), alpha, POWER),
        significant_regression=paired.significant_drop(alpha))


def _perplexity_rows(frame) -> list[PerplexityStats]:
    rows = []
    for suite, part in frame[frame["scorer"] == "perplexity"].groupby("suite", sort=True):
        base_tokens, cand_tokens = int(part["answer_tokens_base"].sum()), int(part["answer_tokens_cand"].sum())
        base_ppl = math.exp(-part["answer_logprob_base"].sum() / max(1, base_tokens))
        cand_ppl = math.exp(-part["answer_logprob_cand"].sum() / max(1, cand_tokens))
        rows.append(PerplexityStats(suite, int(len(part)), base_tokens, cand_tokens, base_ppl, cand_ppl, cand_ppl / base_ppl - 1))
    return rows


def _run_notes(base: LoadedRun, cand: LoadedRun) -> list[str]:
    return [f"run {run.name} is not complete (status {run.manifest.get('status')!r}): compared on the items it has finished"
            for run in (base, cand) if run.manifest.get("status") != "complete"]


def _coverage_notes(scored) -> list[str]:
    missing = int((scored["kl_tokens"] == 0).sum())
    if not missing:
        return []
    return [f"KL: {missing} of {len(scored)} scored items have no comparable top-k log-probs "
            "(a run evaluated with --top-k 0, or the runs tokenize the answer differently) and are left out of the KL means"]


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
