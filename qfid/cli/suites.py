"""`qfid suites`: list the eval suites, show one, scaffold and check a user's suite, export
them as lm-eval tasks."""
from __future__ import annotations

from collections import Counter
from typing import Optional

import typer

HELP = """List the eval suites, show one (schema, rendered prompts, scorer), start and check your own, or export them as lm-eval tasks.

Examples:

  qfid suites

  qfid suites show finance

  qfid suites new my-contracts --scorer choice

  qfid suites check my-contracts/suite.yaml

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


def _show_command(checking: bool):
    """`show` and `check` take the same arguments and print the same; see _show."""
    def command(
        suite: str = typer.Argument(..., help="A built-in suite name or a path to a suite.yaml."),
        examples: int = typer.Option(3, "--examples", "-n", help="How many rendered prompts to show."),
        chat: bool = typer.Option(False, "--chat", help="Show the chat messages instead of the plain prompt."),
    ) -> None:
        _show(suite, examples, chat, checking)
    return command


app.command("show", help="The schema, item counts, the scorer and a few rendered prompts of one suite.\n\nExample:  qfid suites show finance")(_show_command(checking=False))
app.command("check", help="Validate a suite as `qfid eval` loads it: every row, template and answer; prints counts and rendered prompts; exit 1 on any error.\n\nExample:  qfid suites check my-contracts/suite.yaml")(_show_command(checking=True))


@app.command("new", help="Start a suite of your own: FOLDER/suite.yaml (with comments) + FOLDER/items.jsonl (flat rows) that pass `suites check`.\n\nExample:  qfid suites new my-contracts --scorer choice")
def new_command(
    folder: str = typer.Argument(..., help="The folder to create; its name becomes the suite's name."),
    scorer: str = typer.Option("choice", "--scorer", help="choice | numeric | exact | regex"),
) -> None:
    from pathlib import Path

    from rich.console import Console

    from qfid.evals.suite_scaffold import scaffold_suite

    written = scaffold_suite(Path(folder), scorer)
    console = Console()
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"next: edit them, then  qfid suites check {written[0]}", soft_wrap=True)


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


def _show(spec: str, examples: int, chat: bool, checking: bool) -> None:
    """`show` and `check` print the same; `check` also prints the warnings and a verdict,
    and fails with exit 1 (a checker's "no") instead of the data-error code."""
    from rich.console import Console

    from qfid.errors import QfidError
    from qfid.evals.suite import load_suite

    try:
        suite = load_suite(spec)
    except QfidError as exc:
        raise QfidError(str(exc), exit_code=1 if checking else exc.exit_code) from None
    console = Console()
    _print_suite(console, suite, examples, chat)
    if not checking:
        return
    for warning in suite.warnings:
        console.print(f"warning: {warning}", style="yellow", soft_wrap=True, markup=False)
    console.print(f"ok: suite {suite.name} ({len(suite.items)} items) is ready for qfid eval", style="green", soft_wrap=True, markup=False)


def _print_suite(console, suite, examples: int, chat: bool) -> None:
    console.print(_overview_table(suite))
    for item in _examples(suite, examples):
        console.print(_example_panel(suite, item, chat))


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
    from rich.text import Text

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
    for label, value in rows:
        table.add_row(label, Text(value))  # Text: a Jinja `[loop.index0]` is not rich markup
    return table


def _counts(values) -> str:
    return ", ".join(f"{key} {count}" for key, count in sorted(Counter(values).items()))


def _examples(suite, count: int):
    """One item from each of the first categories, so the examples show the suite's range;
    then the next items, when there are fewer categories than examples asked for."""
    seen, picked = set(), []
    for item in suite.items:
        if item.category not in seen and len(picked) < count:
            seen.add(item.category)
            picked.append(item)
    rest = [item for item in suite.items if item not in picked]
    return picked + rest[:count - len(picked)]


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
