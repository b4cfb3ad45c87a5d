"""`qfid compare`: a candidate run against its baseline, paired item by item."""
from __future__ import annotations

from typing import Optional

import typer

HELP = """Compare a candidate eval run with its baseline, item by item: accuracy delta with a paired
bootstrap 95% CI, McNemar's exact test, flips (correct->wrong, wrong->correct), KL divergence on
the answer tokens, the correct choice's margin, perplexity, and the smallest drop each group can
detect. Rows that regress significantly are highlighted. Runs of an MoE model add expert-routing
agreement: per MoE layer, the share of tokens whose top-k experts are the same, overall and per suite.

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
    """The rich table: significant regressions in bold red, then perplexity, expert-routing
    agreement (MoE models) and the notes."""
    from qfid.evals.formatting import (
        GROUP_HEADERS, PERPLEXITY_HEADERS, breakdown_rows, group_cells, pair_title, perplexity_cells, routing_cells, routing_headers,
    )

    console = wide_console()
    groups = breakdown_rows(comparison, by)
    console.print(_table(f"{pair_title(comparison)} by {by} (red: significant regression at alpha={comparison.alpha:g})",
                         GROUP_HEADERS, [group_cells(g) for g in groups], [g.significant_regression for g in groups]))
    if comparison.perplexity:
        console.print(_table("perplexity", PERPLEXITY_HEADERS, [perplexity_cells(row) for row in comparison.perplexity]))
    if comparison.routing:
        console.print(_table("expert-routing agreement (tokens with the same top-k experts)",
                             routing_headers(comparison), routing_cells(comparison)))
    for note in comparison.notes:
        console.print(f"[dim]- {note}[/dim]", soft_wrap=True)


def _table(title: str, headers, rows: list[list[str]], flagged: list[bool] | None = None):
    """A rich table, the first column left-aligned; flagged rows in bold red."""
    from rich.table import Table

    table = Table(title=title)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row, flag in zip(rows, flagged or [False] * len(rows)):
        table.add_row(*row, style="bold red" if flag else None)
    return table


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
