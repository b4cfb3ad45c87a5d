"""`qfid report`: several candidates against one baseline, as HTML + Markdown + PNG + JSON."""
from __future__ import annotations

from typing import List, Optional

import typer

HELP = """Write a report comparing one or more candidate runs with a baseline run: a self-contained
HTML file (tables and plots embedded, no external resources), the same as Markdown, the plots as
PNG files (per-category accuracy change with CI whiskers, flips, KL by language, perplexity next
to domain accuracy) and the figures as JSON.

For -o reports/x.html it writes reports/x.html, x.md, x.json and reports/x-plots/*.png.

Examples:

  qfid report fp16 int4 -o reports/int4.html

  qfid report fp16 awq-int4 rtn-int4 fp8 -o reports/smollm2.html

  qfid report reports/runs/fp16 /tmp/runs/int4 -o out/ --intersect
"""


def report_command(
    base: str = typer.Argument(..., metavar="BASE", help="Baseline run: a name under --runs-dir or a run folder."),
    candidates: List[str] = typer.Argument(..., metavar="CAND", help="One or more candidate runs."),
    output: str = typer.Option(..., "--output", "-o", help="The .html file to write (or a folder: report.html inside)."),
    title: Optional[str] = typer.Option(None, "--title", help="Report title (default: names the runs)."),
    intersect: bool = typer.Option(False, "--intersect", help="Compare only the items both runs hold."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level for flagging regressions."),
    runs_dir: str = typer.Option("reports/runs", "--runs-dir", help="Where runs are stored."),
) -> None:
    from rich.console import Console

    from qfid.evals.report import compare_many, write_report

    comparisons = compare_many(base, candidates, runs_dir, intersect, alpha)
    paths = write_report(comparisons, output, title)
    console = Console()
    for comparison in comparisons:
        regressions = [g.name for g in comparison.regressions()]
        console.print(f"{comparison.candidate['name']}: {len(regressions)} significant regression(s)"
                      + (f" ({', '.join(regressions[:6])})" if regressions else ""), soft_wrap=True)
    for kind, path in paths.items():
        console.print(f"wrote {path}{'/' if kind == 'plots' else ''}")
