"""`qfid suites`: list the eval suites, show one, export them as lm-eval tasks."""
from __future__ import annotations

from collections import Counter
from typing import Optional

import typer

HELP = """List the eval suites, show one (schema, rendered prompts, scorer), or export them as lm-eval tasks.

Examples:

  qfid suites

  qfid suites show finance

  qfid suites show path/to/my_suite.yaml

  qfid suites export --format lm-eval -o tasks/
"""

app = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)


@app.callback()
def suites_command(ctx: typer.Context) -> None:
    """Without a subcommand: a table of the built-in suites."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from qfid.evals.suite import builtin_suite_names, load_suites

    Console().print(_suites_table(load_suites(builtin_suite_names())))


@app.command("show", help="The schema, item counts, the scorer and a few rendered prompts of one suite.\n\nExample:  qfid suites show finance")
def show_command(
    suite: str = typer.Argument(..., help="A built-in suite name or a path to a suite.yaml."),
    examples: int = typer.Option(3, "--examples", "-n", help="How many rendered prompts to show."),
    chat: bool = typer.Option(False, "--chat", help="Show the chat messages instead of the plain prompt."),
) -> None:
    from rich.console import Console

    from qfid.evals.suite import load_suite

    loaded = load_suite(suite)
    console = Console()
    console.print(_overview_table(loaded))
    for item in _examples(loaded, examples):
        console.print(_example_panel(loaded, item, chat))


@app.command("export", help="Write suites as lm-eval task YAML + JSONL (run them with lm_eval --include_path DIR).\n\nExample:  qfid suites export --format lm-eval -o tasks/ --suite finance-mc,legal")
def export_command(
    output: str = typer.Option(..., "--output", "-o", help="Folder to write the tasks into."),
    fmt: str = typer.Option("lm-eval", "--format", "-f", help="Export format: lm-eval."),
    suite: Optional[str] = typer.Option(None, "--suite", "-s", help="Comma-separated suites (default: all built-in)."),
) -> None:
    from pathlib import Path

    from rich.console import Console

    from qfid.errors import QfidError
    from qfid.evals.lm_eval_export import TAG, export_suites
    from qfid.evals.suite import builtin_suite_names, load_suites

    if fmt != "lm-eval":
        raise QfidError(f"unknown export format {fmt!r}; supported: lm-eval")
    written = export_suites(load_suites(suite or builtin_suite_names()), Path(output))
    console = Console()
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"run: lm_eval --model hf --model_args pretrained=MODEL --include_path {output} --tasks {TAG}", soft_wrap=True)


def _suites_table(suites):
    from rich.table import Table

    table = Table(title="qfid eval suites (details: qfid suites show NAME)")
    for column in ("suite", "scorer", "items", "categories", "languages"):
        table.add_column(column, overflow="fold", justify="right" if column in ("items", "categories") else "left")
    for suite in suites:
        table.add_row(suite.name, suite.scorer.type, str(len(suite.items)), str(len(suite.categories)), " ".join(suite.languages))
    return table


def _overview_table(suite):
    from rich.table import Table

    spec = suite.scorer
    options = {"numeric": f"rel_tol={spec.rel_tol} abs_tol={spec.abs_tol}", "regex": f"pattern={spec.pattern!r}",
               "choice": f"target={spec.target} method={spec.method}"}.get(spec.type, "")
    rows = [
        ("name / version", f"{suite.name} / {suite.version}"), ("description", suite.description),
        ("source", str(suite.source)), ("scorer", f"{spec.type} {options}".strip()),
        ("prompt.plain", repr(suite.prompt.plain)), ("prompt.chat", repr(suite.prompt.chat_template)),
        ("few-shot", str(len(suite.fewshot))),
        ("generation", f"max_tokens={suite.generation.max_tokens} stop={list(suite.generation.stop)}"),
        ("items", str(len(suite.items))), ("categories", _counts(i.category for i in suite.items)),
        ("languages", _counts(i.lang for i in suite.items)),
        ("difficulty", _counts(str(i.difficulty) for i in suite.items if i.difficulty is not None) or "-"),
    ]
    table = Table(title=f"suite {suite.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _counts(values) -> str:
    return ", ".join(f"{key} {count}" for key, count in sorted(Counter(values).items()))


def _examples(suite, count: int):
    """One item from each of the first categories, so the examples show the suite's range."""
    seen, picked = set(), []
    for item in suite.items:
        if item.category not in seen and len(picked) < count:
            seen.add(item.category)
            picked.append(item)
    return picked


def _example_panel(suite, item, chat: bool):
    from rich.panel import Panel
    from rich.text import Text

    from qfid.evals.render import choice_continuations, gold_target, render_chat, render_plain

    body = Text()
    if chat:
        for message in render_chat(suite, item):
            body.append(f"[{message['role']}] ", style="bold cyan")
            body.append(message["content"] + "\n")
    else:
        body.append(render_plain(suite, item))
    if suite.scorer.type == "choice":
        body.append(f"\n\nchoices: {choice_continuations(suite, item)}", style="dim")
    body.append(f"\ngold: {gold_target(suite, item)!r}", style="green")
    return Panel(body, title=f"{item.id} · {item.category} · {item.lang}", expand=False)
