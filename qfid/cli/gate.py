"""`qfid gate`: the CI verdict on a candidate run: exit 0 pass, 1 broken threshold, 2 usage/data error."""
from __future__ import annotations

from typing import Optional

import typer

HELP = """Check a candidate eval run against its baseline with the thresholds in \\[tool.qfid.gate] of
pyproject.toml or \\[gate] of a qfid.toml. Prints one line per broken threshold naming the suite,
category or language, the figure and the limit.

Exit codes: 0 every threshold holds, 1 at least one is broken, 2 usage or data error (unknown run,
runs not comparable, malformed thresholds).

A drop breaks the gate only when it exceeds its limit and is statistically significant at alpha
(set require_significance = false to gate on the point estimate); an over-the-limit drop that is
not significant is printed as a warning.

Defaults (when no config is found): max_accuracy_drop = 5.0 points (every suite, category and
language), max_flip_rate = 0.15 and max_mean_kl = 0.1 nats/token (per suite), alpha = 0.05.

Examples:

  qfid gate fp16 int4

  qfid gate fp16 int4 --config qfid.toml --junit reports/gate.xml --summary "$GITHUB_STEP_SUMMARY"

  qfid gate reports/runs/fp16 reports/runs/int4 --intersect

Config example (pyproject.toml):

  \\[tool.qfid.gate]
  max_accuracy_drop = 5.0
  max_flip_rate = 0.15
  max_mean_kl = 0.1
  alpha = 0.05
  \\[tool.qfid.gate.category]
  "*" = 8.0
  "legal/negation_exceptions" = 4.0
"""


def gate_command(
    base: str = typer.Argument(..., metavar="BASE", help="Baseline run: a name under --runs-dir or a run folder."),
    cand: str = typer.Argument(..., metavar="CAND", help="Candidate run: a name under --runs-dir or a run folder."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Thresholds file (default: ./qfid.toml, else ./pyproject.toml)."),
    junit: Optional[str] = typer.Option(None, "--junit", help="Write JUnit XML here (one test case per threshold per group)."),
    summary: Optional[str] = typer.Option(None, "--summary", help="Write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY); appended to if it exists."),
    intersect: bool = typer.Option(False, "--intersect", help="Gate on the items both runs hold."),
    runs_dir: str = typer.Option("reports/runs", "--runs-dir", help="Where runs are stored."),
) -> None:
    from rich.console import Console

    from qfid.errors import QfidError
    from qfid.evals.gate import gate_runs
    from qfid.evals.gate_config import load_gate_config

    settings = load_gate_config(config)
    result, comparison = gate_runs(base, cand, settings, runs_dir, intersect)
    if junit:
        from qfid.evals.junit import write_junit

        write_junit(result, junit)
    if summary:
        _append_summary(summary, result, comparison)
    console = Console(highlight=False)
    for check in result.failures:
        console.print(f"[red]FAIL[/red] {check.message}", soft_wrap=True)
    for warning in result.warnings:
        console.print(f"[yellow]WARN[/yellow] {warning}", soft_wrap=True)
    verdict = f"{len(result.failures)} of {len(result.checks)} thresholds broken ({settings.source})"
    if not result.passed:
        raise QfidError(f"gate failed for {result.candidate} vs {result.baseline}: {verdict}", exit_code=1)
    console.print(f"[green]PASS[/green] {result.candidate} vs {result.baseline}: {verdict}")


def _append_summary(path: str, result, comparison) -> None:
    """Appended, not replaced: $GITHUB_STEP_SUMMARY collects every step's output."""
    from pathlib import Path

    from qfid.evals.markdown import gate_summary_markdown

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as handle:
        handle.write(gate_summary_markdown(result, comparison))
