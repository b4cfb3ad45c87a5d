"""A self-contained HTML report: inline CSS, plots embedded as base64 PNG, no scripts and no
external URL, so it can be attached to a CI run, mailed, or opened from a committed folder."""
from __future__ import annotations

import base64
from html import escape

from qfid.evals.compare import Comparison
from qfid.evals.formatting import (
    BREAKDOWNS, GROUP_HEADERS, OVERVIEW_HEADERS, PERPLEXITY_HEADERS, breakdown_rows, group_cells, overview_cells, pair_title,
    perplexity_cells, routing_cells, routing_headers,
)

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; margin-top: 2.5rem; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
tr.regression td { background: #fde8e8; color: #a00; font-weight: 600; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.85rem; color: #555; }
.notes li { font-size: 0.85rem; color: #444; margin-bottom: 0.3rem; }
"""
CAPTIONS = {
    "category_delta": "Accuracy change per category (points) with the paired bootstrap 95% CI; red outline: significant regression.",
    "flips": "Items that flipped per suite: correct->wrong to the left, wrong->correct to the right (Dutta et al. 2024).",
    "kl_by_language": "Mean KL(baseline || candidate) per answer token, per language (top-k approximation, see notes).",
    "perplexity_vs_accuracy": "Perplexity change of the perplexity suites next to the accuracy change of the scored suites.",
    "routing_by_layer": "MoE models: share of tokens whose top-k expert set is the same as the baseline's, per MoE layer.",
}


def render_html(comparisons: list[Comparison], figures: dict[str, bytes], title: str, preface: str = "") -> str:
    """`preface`: HTML a caller puts before the comparisons (the sweep's tables and plot)."""
    body = [f"<h1>{escape(title)}</h1>", preface, _runs_paragraph(comparisons), "<h2>Overview</h2>",
            table_html(OVERVIEW_HEADERS, [(overview_cells(c), False) for c in comparisons])]
    body += ["<h2>Plots</h2>"] + [figure_html(name, png) for name, png in figures.items()]
    for comparison in comparisons:
        body.append(_comparison_section(comparison))
    body.append(_notes(comparisons))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _runs_paragraph(comparisons: list[Comparison]) -> str:
    base = comparisons[0].baseline
    candidates = ", ".join(f"<code>{escape(c.candidate['name'])}</code> ({escape(str(c.candidate['model']))})" for c in comparisons)
    return (f"<p>Baseline <code>{escape(base['name'])}</code> ({escape(str(base['model']))}); candidates {candidates}. "
            f"Items are paired by id; highlighted rows regress significantly (McNemar p &lt; {comparisons[0].alpha:g} and the "
            f"{comparisons[0].confidence:.0%} bootstrap CI below zero).</p>")


def _comparison_section(comparison: Comparison) -> str:
    parts = [f"<h2>{escape(pair_title(comparison))}</h2>"]
    for level in BREAKDOWNS:
        rows = breakdown_rows(comparison, level)
        if rows:
            parts += [f"<h3>By {level}</h3>", table_html(GROUP_HEADERS, [(group_cells(g), g.significant_regression) for g in rows])]
    if comparison.perplexity:
        parts += ["<h3>Perplexity</h3>", table_html(PERPLEXITY_HEADERS, [(perplexity_cells(r), False) for r in comparison.perplexity])]
    if comparison.routing:
        parts += ["<h3>Expert-routing agreement</h3>",
                  table_html(routing_headers(comparison), [(cells, False) for cells in routing_cells(comparison)])]
    return "<section>" + "\n".join(parts) + "</section>"


def figure_html(name: str, png: bytes, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = caption or CAPTIONS.get(name, name)
    return f'<figure id="plot-{name}"><img alt="{escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{escape(caption)}</figcaption></figure>'


def table_html(headers, rows) -> str:
    """rows: (cells, flagged) pairs; flagged rows are highlighted as regressions."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(("<tr class=\"regression\">" if flagged else "<tr>") + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"
                   for cells, flagged in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _notes(comparisons: list[Comparison]) -> str:
    notes: dict[str, None] = {}
    for comparison in comparisons:
        for note in comparison.notes:
            notes.setdefault(note, None)
    return "<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
