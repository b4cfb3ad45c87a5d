"""`qfid compare`: a candidate run against its baseline, paired item by item."""
from __future__ import annotations

from typing import Optional

import typer

HELP = """Compare a candidate eval run with its baseline, item by item: accuracy delta with a paired
bootstrap 95% CI, McNemar's exact test, flips (correct->wrong, wrong->correct), KL divergence on
the answer tokens, the correct choice's margin, perplexity, and the smallest drop each group can
detect. Rows that regress significantly are highlighted.

BASE and CAND are run names under --runs-dir or run folders. Runs whose items or suite versions
differ are refused (exit 2) unless --intersect.

Examples:

  qfid compare fp16 int4

  qfid compare fp16 int4 --by category

  qfid compare fp16 int4 --by lang --format md -o reports/

  qfid compare reports/runs/fp16 /tmp/runs/int4 --format json > int4.json

  qfid compare fp16 int4 --format html -o reports/   # HTML with plots, plus Markdown, JSON, PNGs
"""

FORMATS = ("table", "md", "html", "json")


def compare_command(
    base: str = typer.Argument(..., metavar="BASE", help="Baseline run: a name under --runs-dir or a run folder."),
    cand: str = typer.Argument(..., metavar="CAND", help="Candidate run: a name under --runs-dir or a run folder."),
    by: str = typer.Option("suite", "--by", help="Breakdown shown: suite | category | lang (JSON always holds all)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | md | html | json"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Folder to write CAND-vs-BASE.<format> (and .json) into."),
    intersect: bool = typer.Option(False, "--intersect", help="Compare only the items both runs hold."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level for flagging regressions."),
    runs_dir: str = typer.Option("reports/runs", "--runs-dir", help="Where runs are stored."),
) -> None:
    from qfid.errors import QfidError
    from qfid.evals.compare import compare_runs
    from qfid.evals.formatting import BREAKDOWNS

    if fmt not in FORMATS:
        raise QfidError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if by not in BREAKDOWNS:
        raise QfidError(f"--by must be one of {', '.join(BREAKDOWNS)}; got {by!r}")
    comparison = compare_runs(base, cand, runs_dir, intersect=intersect, alpha=alpha)
    if output:
        _write(comparison, fmt, by, output)
    elif fmt == "table":
        print_comparison(comparison, by)
    else:
        typer.echo(_render(comparison, fmt, by), nl=False)


def print_comparison(comparison, by: str) -> None:
    """The rich table: significant regressions in bold red, then perplexity and the notes."""
    from rich.table import Table

    from qfid.evals.formatting import GROUP_HEADERS, PERPLEXITY_HEADERS, breakdown_rows, group_cells, pair_title, perplexity_cells

    console = wide_console()
    table = Table(title=f"{pair_title(comparison)} by {by} (red: significant regression at alpha={comparison.alpha:g})")
    for header in GROUP_HEADERS:
        table.add_column(header, justify="left" if header == "group" else "right")
    for group in breakdown_rows(comparison, by):
        table.add_row(*group_cells(group), style="bold red" if group.significant_regression else None)
    console.print(table)
    if comparison.perplexity:
        ppl = Table(title="perplexity")
        for header in PERPLEXITY_HEADERS:
            ppl.add_column(header, justify="left" if header == "suite" else "right")
        for row in comparison.perplexity:
            ppl.add_row(*perplexity_cells(row))
        console.print(ppl)
    for note in comparison.notes:
        console.print(f"[dim]- {note}[/dim]", soft_wrap=True)


def wide_console():
    """A console for wide tables: off a terminal (a CI log, a pipe) rich would fold the
    twelve columns into 80; there the table gets 200 unless COLUMNS says otherwise."""
    import os

    from rich.console import Console

    console = Console()
    return console if console.is_terminal or "COLUMNS" in os.environ else Console(width=200)


def _render(comparison, fmt: str, by: str) -> str:
    import json

    from qfid.evals.markdown import comparison_markdown

    if fmt == "json":
        return json.dumps(comparison.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "md":
        return comparison_markdown(comparison, levels=(by,))
    from qfid.evals.formatting import pair_title
    from qfid.evals.html_report import render_html
    from qfid.evals.plots import report_figures

    return render_html([comparison], report_figures([comparison]), f"qfid compare: {pair_title(comparison)}")


def _write(comparison, fmt: str, by: str, output: str) -> None:
    from pathlib import Path

    from rich.console import Console

    from qfid.evals.report import write_report
    from qfid.utils.fs import atomic_write_text

    folder = Path(output)
    stem = _stem(comparison)
    if fmt == "html":
        written = list(write_report([comparison], folder / f"{stem}.html").values())
    else:
        written = [folder / f"{stem}.json"]
        atomic_write_text(written[0], _render(comparison, "json", by))
        if fmt == "md":
            written.append(folder / f"{stem}.md")
            atomic_write_text(written[1], _render(comparison, "md", by))
    if fmt == "table":
        print_comparison(comparison, by)
    for path in written:
        Console().print(f"wrote {path}")


def _stem(comparison) -> str:
    return f"{comparison.candidate['name']}-vs-{comparison.baseline['name']}"
