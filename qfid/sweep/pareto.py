"""Fidelity per candidate, and the size/fidelity Pareto front.

A candidate's fidelity is summarized two ways, both against the baseline: its worst group
(the lowest accuracy delta over every domain suite, category and language of at least
MIN_GROUP_ITEMS items: what a user of that slice would see) and its mean KL over the domain suites (how far the next-token
distributions moved, which accuracy alone under-reports). A candidate is on the front when
no other candidate is at most as large and at least as good on that axis, and strictly
better on one of the two.
"""
from __future__ import annotations

from dataclasses import dataclass

from qfid.evals.compare import Comparison

CONTROL_SUITES = ("general", "general-ppl")
GROUP_LEVELS = ("suite", "category", "lang")
MIN_GROUP_ITEMS = 20   # smaller categories swing by tens of points on one flipped item: the gate judges them, the front does not


@dataclass
class Fidelity:
    name: str
    size_mib: float
    worst_group: str
    worst_delta_pts: float
    worst_significant: bool
    mean_kl: float | None


def _is_domain(group_name: str) -> bool:
    return group_name.split("/", 1)[0] not in CONTROL_SUITES


def fidelity(comparison: Comparison, size_mib: float) -> Fidelity:
    groups = [g for g in comparison.groups if g.level in GROUP_LEVELS and _is_domain(g.name)
              and (g.n >= MIN_GROUP_ITEMS or g.level == "suite")]
    worst = min(groups, key=lambda g: (g.delta, -g.n))
    suites = [g for g in comparison.rows("suite") if _is_domain(g.name) and g.mean_kl is not None]
    kl = sum(g.mean_kl for g in suites) / len(suites) if suites else None
    return Fidelity(comparison.candidate["name"], size_mib, f"{worst.level} {worst.name}", 100 * worst.delta,
                    worst.significant_regression, kl)


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the front of (name, size, loss) points: smaller size and smaller loss are better."""
    front = []
    for name, size, loss in points:
        dominated = any(s <= size and l <= loss and (s < size or l < loss) for n, s, l in points if n != name)
        if not dominated:
            front.append(name)
    return front


def fronts(rows: list[Fidelity]) -> dict[str, list[str]]:
    """The front on each axis: accuracy (loss = -worst delta) and KL."""
    accuracy = pareto_front([(r.name, r.size_mib, -r.worst_delta_pts) for r in rows])
    kl = pareto_front([(r.name, r.size_mib, r.mean_kl) for r in rows if r.mean_kl is not None])
    return {"worst_group_delta": accuracy, "mean_kl": kl}


def pareto_figure(rows: list[Fidelity], front: dict[str, list[str]], baseline_mib: float):
    """Two panels against checkpoint size: worst-group accuracy delta and domain mean KL,
    the front joined by a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    panels = [("worst_group_delta", "worst-group accuracy delta (pts)", lambda r: r.worst_delta_pts),
              ("mean_kl", "mean KL over domain suites (nats/token)", lambda r: r.mean_kl)]
    for ax, (key, label, value) in zip(fig.subplots(1, 2), panels):
        shown = [r for r in rows if value(r) is not None]
        for r in shown:
            on = r.name in front[key]
            ax.scatter(r.size_mib, value(r), s=40 if on else 22, color="#1f77b4" if on else "#999999", zorder=3)
            ax.annotate(r.name, (r.size_mib, value(r)), textcoords="offset points", xytext=(4, 4), fontsize=7)
        line = sorted((r for r in shown if r.name in front[key]), key=lambda r: r.size_mib)
        ax.plot([r.size_mib for r in line], [value(r) for r in line], color="#1f77b4", lw=1, zorder=2)
        ax.axvline(baseline_mib, color="#d62728", lw=0.8, ls="--")
        ax.set_xlabel("checkpoint weights (MiB); dashed: the baseline")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("size vs fidelity; blue: the Pareto front", fontsize=10)
    fig.tight_layout()
    return fig
