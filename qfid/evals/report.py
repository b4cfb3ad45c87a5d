"""`qfid report`: several candidates against one baseline, written as one self-contained HTML
file plus the same content as Markdown, the plots as PNG files and the figures as JSON.

For `-o reports/smollm2.html` it writes reports/smollm2.html, reports/smollm2.md,
reports/smollm2.json and reports/smollm2-plots/*.png (the Markdown links the PNGs, so it
renders on GitHub next to the committed files).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qfid.errors import QfidError
from qfid.evals.compare import Comparison, compare_loaded
from qfid.evals.formatting import OVERVIEW_HEADERS, overview_cells
from qfid.evals.html_report import CAPTIONS, render_html
from qfid.evals.markdown import comparison_markdown, markdown_table
from qfid.evals.pairing import load_run
from qfid.evals.plots import report_figures
from qfid.utils.fs import atomic_write_text


def compare_many(base_ref: str, cand_refs: list[str], runs_dir: str | Path = "reports/runs", intersect: bool = False,
                 alpha: float = 0.05) -> list[Comparison]:
    """One comparison per candidate, the baseline loaded once."""
    if not cand_refs:
        raise QfidError("a report needs at least one candidate run after the baseline")
    base = load_run(base_ref, runs_dir)
    return [compare_loaded(base, load_run(ref, runs_dir), intersect, alpha) for ref in cand_refs]


def report_paths(output: str | Path) -> dict[str, Path]:
    """Where each part goes: `output` may name the .html file or a folder (report.html inside)."""
    html = Path(output)
    if html.suffix.lower() not in (".html", ".htm"):
        html = html / "report.html"
    stem = html.with_suffix("")
    return {"html": html, "md": stem.with_suffix(".md"), "json": stem.with_suffix(".json"), "plots": stem.parent / f"{stem.name}-plots"}


@dataclass
class Preface:
    """What a caller puts before the comparisons (the sweep: its table, plot and verdict),
    in both renderings; `figures` are written beside the report's own plots."""

    html: str
    markdown: str
    figures: dict[str, bytes] = field(default_factory=dict)


def write_report(comparisons: list[Comparison], output: str | Path, title: str | None = None,
                 preface: Preface | None = None) -> dict[str, Path]:
    paths = report_paths(output)
    title = title or f"qfid report: {', '.join(c.candidate['name'] for c in comparisons)} vs {comparisons[0].baseline['name']}"
    figures = report_figures(comparisons)
    paths["plots"].mkdir(parents=True, exist_ok=True)
    links = {}
    for name, png in {**figures, **(preface.figures if preface else {})}.items():
        (paths["plots"] / f"{name}.png").write_bytes(png)
        links[name] = f"{paths['plots'].name}/{name}.png"
    atomic_write_text(paths["html"], render_html(comparisons, figures, title, preface.html if preface else ""))
    markdown = report_markdown(comparisons, {k: v for k, v in links.items() if k in figures}, title)
    if preface:
        head, _, rest = markdown.partition("\n")
        markdown = f"{head}\n\n{preface.markdown}\n{rest}"
    atomic_write_text(paths["md"], markdown)
    atomic_write_text(paths["json"], json.dumps([c.to_dict() for c in comparisons], indent=2, ensure_ascii=False) + "\n")
    return paths


def report_markdown(comparisons: list[Comparison], plot_links: dict[str, str], title: str) -> str:
    parts = [f"# {title}", "", "## Overview", "", markdown_table(OVERVIEW_HEADERS, [overview_cells(c) for c in comparisons])]
    if plot_links:
        parts += ["", "## Plots", ""] + [f"![{CAPTIONS.get(name, name)}]({link})\n" for name, link in plot_links.items()]
    parts += ["", *(comparison_markdown(c, heading="##") for c in comparisons)]
    return "\n".join(parts)
