"""Report plots as PNG bytes (matplotlib's object API on the Agg canvas: no display, no global
pyplot state, safe in a CI job). Every figure takes several comparisons against one baseline
and draws one colour per candidate. A figure with nothing to show returns None."""
from __future__ import annotations

import io

import numpy as np

from qfid.evals.compare import Comparison
from qfid.evals.formatting import agreement

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
REGRESSION_EDGE = "#d62728"


def report_figures(comparisons: list[Comparison]) -> dict[str, bytes]:
    """name -> PNG for every figure that has data."""
    makers = {"category_delta": category_delta_figure, "flips": flip_counts_figure,
              "kl_by_language": kl_by_language_figure, "perplexity_vs_accuracy": perplexity_vs_accuracy_figure,
              "routing_by_layer": routing_by_layer_figure}
    figures = {name: make(comparisons) for name, make in makers.items()}
    return {name: figure_png(fig) for name, fig in figures.items() if fig is not None}


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})  # byte-stable for commits
    return buffer.getvalue()


def category_delta_figure(comparisons: list[Comparison]):
    """Accuracy change per category with 95% CI whiskers; significant regressions outlined red."""
    names = _names(comparisons, "category")
    if not names:
        return None
    fig, ax = _figure(names, comparisons, row_height=0.22)
    for colour, comparison, offsets, rows in _bars(comparisons, "category", names):
        errors = np.array([[100 * (r.delta - r.ci_low), 100 * (r.ci_high - r.delta)] if r else [0, 0] for r in rows]).T
        ax.barh(offsets, [100 * r.delta if r else np.nan for r in rows], height=_bar_height(comparisons), xerr=errors,
                color=colour, edgecolor=[REGRESSION_EDGE if r and r.significant_regression else "none" for r in rows],
                linewidth=1.5, error_kw={"elinewidth": 0.8, "capsize": 2}, label=comparison.candidate["name"])
    _finish(ax, names, "accuracy change (points), 95% CI", "Accuracy change by category (red outline: significant regression)")
    return fig


def flip_counts_figure(comparisons: list[Comparison]):
    """Per suite: correct->wrong to the left, wrong->correct to the right."""
    names = _names(comparisons, "suite")
    if not names:
        return None
    fig, ax = _figure(names, comparisons, row_height=0.35)
    for colour, comparison, offsets, rows in _bars(comparisons, "suite", names):
        height = _bar_height(comparisons)
        ax.barh(offsets, [-r.correct_to_wrong if r else 0 for r in rows], height=height, color=colour, label=comparison.candidate["name"])
        ax.barh(offsets, [r.wrong_to_correct if r else 0 for r in rows], height=height, color=colour, alpha=0.45)
    _finish(ax, names, "items: <- correct->wrong | wrong->correct ->", "Flips by suite")
    return fig


def kl_by_language_figure(comparisons: list[Comparison]):
    names = _names(comparisons, "lang")
    values = np.array([[_kl(c.group("lang", n)) for n in names] for c in comparisons])
    if not names or np.isnan(values).all():
        return None
    fig, ax = _figure(names, comparisons, row_height=0.22)
    for slot, (colour, comparison, offsets, _) in enumerate(_bars(comparisons, "lang", names)):
        ax.barh(offsets, values[slot], height=_bar_height(comparisons), color=colour, label=comparison.candidate["name"])
    _finish(ax, names, "mean KL(baseline || candidate), nats per answer token", "KL divergence by language")
    return fig


def perplexity_vs_accuracy_figure(comparisons: list[Comparison]):
    """Side by side: perplexity change of the perplexity suites and accuracy change of the others,
    the picture behind "perplexity moves little while domain accuracy drops" (or not)."""
    suites = _names(comparisons, "suite")
    ppl_suites = sorted({row.suite for c in comparisons for row in c.perplexity})
    if not suites and not ppl_suites:
        return None
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", figsize=(11, _height(max(len(suites), len(ppl_suites), 1), comparisons, 0.3)))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    height = _bar_height(comparisons)
    for colour, comparison, offsets, _ in _bars(comparisons, "suite", ppl_suites):
        changes = {row.suite: 100 * row.change for row in comparison.perplexity}
        left.barh(offsets, [changes.get(s, np.nan) for s in ppl_suites], height=height, color=colour)
    for colour, comparison, offsets, rows in _bars(comparisons, "suite", suites):
        right.barh(offsets, [100 * r.delta if r else np.nan for r in rows], height=height, color=colour, label=comparison.candidate["name"])
    _finish(left, ppl_suites, "perplexity change (%)", "Perplexity" if ppl_suites else "Perplexity (no perplexity suite)")
    _finish(right, suites, "accuracy change (points)", "Accuracy by suite")
    return fig


def routing_by_layer_figure(comparisons: list[Comparison]):
    """MoE runs: expert-routing agreement (all suites) per MoE layer, a line per candidate. A
    change in one layer shifts the inputs of every later router, so the curve shows at what
    depth routing starts to drift, which one overall share hides."""
    overall = [(COLOURS[slot % len(COLOURS)], comparison, comparison.routing_group("overall", "all"))
               for slot, comparison in enumerate(comparisons)]
    if all(row is None for _, _, row in overall):
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    for colour, comparison, row in overall:
        if row is not None:
            ax.plot(range(len(row.per_layer)), [100 * v for v in row.per_layer], marker="o", markersize=3, color=colour,
                    label=f"{comparison.candidate['name']} (all layers {agreement(row.agreement)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("MoE layer", fontsize=9)
    ax.set_ylabel("tokens with the same top-k experts (%)", fontsize=9)
    ax.set_title("Expert-routing agreement by layer", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _figure(names: list[str], comparisons: list[Comparison], row_height: float):
    """One horizontal-bar axes, tall enough for every group row."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, _height(len(names), comparisons, row_height)))
    return fig, fig.subplots()


def _height(rows: int, comparisons: list[Comparison], row_height: float) -> float:
    return 1.2 + row_height * rows * max(1, len(comparisons)) ** 0.5


def _names(comparisons: list[Comparison], level: str) -> list[str]:
    """Group names across all comparisons, in first-seen order."""
    seen: dict[str, None] = {}
    for comparison in comparisons:
        for group in comparison.rows(level):
            seen.setdefault(group.name, None)
    return list(seen)


def _bars(comparisons: list[Comparison], level: str, names: list[str]):
    """Per candidate: (colour, comparison, y positions, its groups in `names` order or None),
    the positions placing each candidate's bars side by side within a row."""
    height = _bar_height(comparisons)
    for slot, comparison in enumerate(comparisons):
        offsets = np.arange(len(names)) - 0.4 + height * (slot + 0.5)
        yield COLOURS[slot % len(COLOURS)], comparison, offsets, [comparison.group(level, n) for n in names]


def _bar_height(comparisons: list[Comparison]) -> float:
    return 0.8 / max(1, len(comparisons))


def _kl(group) -> float:
    return np.nan if group is None or group.mean_kl is None else group.mean_kl


def _finish(ax, names: list[str], xlabel: str, title: str) -> None:
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
