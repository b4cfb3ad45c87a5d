"""Cells for comparison tables, shared by the terminal table, Markdown and HTML so the three
show the same figures with the same rounding."""
from __future__ import annotations

from qfid.evals.compare import Comparison, GroupStats, PerplexityStats

BREAKDOWNS = ("suite", "category", "lang")
GROUP_HEADERS = ("group", "n", "base acc", "cand acc", "delta pts (95% CI)", "McNemar p", "c->w", "w->c", "flip rate",
                 "mean KL", "delta margin", "min det. drop")
PERPLEXITY_HEADERS = ("suite", "texts", "tokens", "base ppl", "cand ppl", "change")


def breakdown_rows(comparison: Comparison, by: str) -> list[GroupStats]:
    """The rows a `--by` view shows: overall plus suites, or one finer level."""
    if by not in BREAKDOWNS:
        raise ValueError(f"breakdown must be one of {BREAKDOWNS}; got {by!r}")
    return comparison.rows("overall") + comparison.rows("suite") if by == "suite" else comparison.rows(by)


def group_cells(g: GroupStats) -> list[str]:
    return [g.name, str(g.n), percent(g.base_acc), percent(g.cand_acc),
            _delta_with_ci(g), p_value(g.mcnemar_p),
            str(g.correct_to_wrong), str(g.wrong_to_correct), percent(g.flip_rate), optional(g.mean_kl, "{:.4f}"),
            optional(g.margin_delta, "{:+.3f}"), detectable_drop(g.min_detectable_drop)]


def detectable_drop(value: float) -> str:
    """Above 100 points the group is too small to detect any drop; say so instead of '140 pts'."""
    return f"{100 * value:.1f} pts" if value <= 1 else "> 100 pts"


def perplexity_cells(row: PerplexityStats) -> list[str]:
    return [row.suite, str(row.n), str(row.base_tokens), f"{row.base_ppl:.3f}", f"{row.cand_ppl:.3f}", f"{100 * row.change:+.2f}%"]


def routing_headers(comparison: Comparison) -> list[str]:
    """The routing table has a column per group (all, then each suite) and a row per MoE
    layer: a model has tens of layers and a run a few suites."""
    return ["MoE layer", *(row.name for row in comparison.routing)]


def routing_cells(comparison: Comparison) -> list[list[str]]:
    """Items and tokens compared, agreement over all layers, then one row per MoE layer."""
    rows = comparison.routing
    cells = [["items", *(str(r.items) for r in rows)], ["tokens per layer", *(str(r.tokens) for r in rows)],
             ["all layers", *(agreement(r.agreement) for r in rows)]]
    layers = max((len(r.per_layer) for r in rows), default=0)
    return cells + [[str(layer), *(agreement(r.per_layer[layer]) if layer < len(r.per_layer) else "-" for r in rows)]
                    for layer in range(layers)]


def agreement(value: float) -> str:
    """Two decimals: routing agreement sits close to 100% and its gaps are small."""
    return f"{100 * value:.2f}%"


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def p_value(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def optional(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def pair_title(comparison: Comparison) -> str:
    return f"{comparison.candidate['name']} vs {comparison.baseline['name']}"


OVERVIEW_HEADERS = ("candidate", "items", "accuracy delta pts (95% CI)", "significant regressions", "worst suite",
                    "highest suite flip rate", "mean KL", "perplexity change")


def overview_cells(comparison: Comparison) -> list[str]:
    """One line per candidate for the top of a report: computed from the comparison, so what
    the report concludes always follows from the runs."""
    overall = next(iter(comparison.rows("overall")), None)
    suites = comparison.rows("suite")
    worst = min(suites, key=lambda g: g.delta, default=None)
    flippiest = max(suites, key=lambda g: g.flip_rate, default=None)
    return [comparison.candidate["name"], str(overall.n) if overall else "0",
            _delta_with_ci(overall) if overall else "-", _regressions(comparison),
            f"{worst.name} {100 * worst.delta:+.1f}" if worst else "-",
            f"{flippiest.name} {percent(flippiest.flip_rate)}" if flippiest else "-",
            optional(overall.mean_kl if overall else None, "{:.4f}"),
            ", ".join(f"{row.suite} {100 * row.change:+.1f}%" for row in comparison.perplexity) or "-"]


def _delta_with_ci(g: GroupStats) -> str:
    return f"{100 * g.delta:+.1f} ({100 * g.ci_low:+.1f}, {100 * g.ci_high:+.1f})"


def _regressions(comparison: Comparison, shown: int = 4) -> str:
    names = [g.name for g in comparison.regressions()]
    if not names:
        return "0"
    return f"{len(names)}: {', '.join(names[:shown])}" + (" ..." if len(names) > shown else "")
