"""Markdown for comparisons and gate results: what `qfid compare --format md` prints, what
`qfid report` writes beside its HTML, and the CI job summary `qfid gate --summary` writes
(GitHub renders it on the run page)."""
from __future__ import annotations

from qfid.evals.compare import Comparison
from qfid.evals.formatting import (
    BREAKDOWNS, GROUP_HEADERS, PERPLEXITY_HEADERS, breakdown_rows, group_cells, pair_title, perplexity_cells, routing_cells,
    routing_headers,
)
from qfid.evals.gate import GateResult

REGRESSION_MARK = "**(!)**"


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def group_table(comparison: Comparison, by: str) -> str:
    """Rows regressing significantly get a bold marker after the group name."""
    rows = []
    for g in breakdown_rows(comparison, by):
        cells = group_cells(g)
        if g.significant_regression:
            cells[0] = f"{cells[0]} {REGRESSION_MARK}"
        rows.append(cells)
    return markdown_table(GROUP_HEADERS, rows)


def comparison_markdown(comparison: Comparison, levels=BREAKDOWNS, heading: str = "#") -> str:
    parts = [f"{heading} {pair_title(comparison)}", "",
             f"Paired on {comparison.rows('overall')[0].n if comparison.rows('overall') else 0} scored items; "
             f"{REGRESSION_MARK} = significant regression (McNemar p < {comparison.alpha:g} and the "
             f"{comparison.confidence:.0%} bootstrap CI below zero)."]
    for level in levels:
        if breakdown_rows(comparison, level):
            parts += ["", f"{heading}# By {level}", "", group_table(comparison, level)]
    if comparison.perplexity:
        parts += ["", f"{heading}# Perplexity", "", markdown_table(PERPLEXITY_HEADERS, map(perplexity_cells, comparison.perplexity))]
    if comparison.routing:
        parts += ["", f"{heading}# Expert-routing agreement", "", markdown_table(routing_headers(comparison), routing_cells(comparison))]
    parts += ["", f"{heading}# Notes", ""] + [f"- {note}" for note in comparison.notes]
    return "\n".join(parts) + "\n"


def gate_summary_markdown(result: GateResult, comparison: Comparison) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    parts = [f"## qfid gate {verdict}: {result.candidate} vs {result.baseline}", "",
             f"{len(result.failures)} of {len(result.checks)} thresholds broken (config: {result.config_source})."]
    if result.failures:
        parts += ["", "### Broken thresholds", ""] + [f"- {c.message}" for c in result.failures]
    if result.warnings:
        parts += ["", "### Warnings", ""] + [f"- {w}" for w in result.warnings]
    parts += ["", "### By suite", "", group_table(comparison, "suite")]
    if comparison.perplexity:
        parts += ["", markdown_table(PERPLEXITY_HEADERS, map(perplexity_cells, comparison.perplexity))]
    return "\n".join(parts) + "\n"
