"""Does every item fit its suite? The prompt template and the scorer are the contract
between a suite file and its items; this checks both for every item and few-shot example
at load time (what `qfid suites check` reports and `qfid eval` runs before loading a model),
failing on the first that does not fit, named by its id.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from qfid.evals.items import Item
from qfid.evals.render import render_chat, render_plain
from qfid.evals.templates import RenderError, format_fields, is_jinja
from qfid.evals.validation import SchemaError

if TYPE_CHECKING:
    from qfid.evals.suite import Suite

COMPUTED_FIELDS = ("choices_block", "choices")


def template_fields(template: str, where: str) -> set[str]:
    """The fields a `{field}` template needs; a Jinja template is checked by rendering."""
    return set() if is_jinja(template) else format_fields(template, where)


def check_suite_consistency(suite: Suite) -> None:
    needed = template_fields(suite.prompt.plain, "prompt.plain") | template_fields(suite.prompt.chat or "", "prompt.chat")
    for index, shot in enumerate(suite.fewshot):
        missing = needed - set(shot.fields)
        if missing:  # few-shot fields are literal: a computed field must be written out
            raise SchemaError(f"fewshot.{index}.fields", f"misses {', '.join(sorted(missing))} used by the prompt")
    for item in suite.items:
        _check_item(suite, item, needed)
        _check_renders(suite, item)


def _item_error(item: Item, message: str) -> SchemaError:
    """Reported at the suite's `items:` line, naming the item."""
    return SchemaError("items", f"item {item.id}: {message}")


def _check_item(suite: Suite, item: Item, needed: set[str]) -> None:
    available = set(item.fields) | (set(COMPUTED_FIELDS) if item.choices else set())
    missing = needed - available
    if missing:
        raise _item_error(item, f"misses field(s) {', '.join(sorted(missing))} used by the prompt{_fields_hint(item)}")
    kind = suite.scorer.type
    if kind == "choice" and item.choices is None:
        raise _item_error(item, "the choice scorer needs choices and label on every item")
    if kind in ("numeric", "exact", "regex") and item.answer is None:
        raise _item_error(item, f"the {kind} scorer needs an answer (an answer column, or columns: {{answer: COLUMN}})")
    if kind == "numeric" and not _is_numeric(item.answer):
        raise _item_error(item, f"the numeric scorer needs a numeric answer; got {item.answer!r}")


def _fields_hint(item: Item) -> str:
    return f" (the item's fields: {', '.join(sorted(item.fields))})"


def _check_renders(suite: Suite, item: Item) -> None:
    """Render both prompt forms: a Jinja template's needs show only when it runs (loops,
    conditions, attribute access), and the few-shot blocks render with it."""
    try:
        render_plain(suite, item)
        render_chat(suite, item)
    except RenderError as exc:
        raise _item_error(item, f"{exc}{_fields_hint(item) if exc.missing else ''}") from None


def _is_numeric(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    from qfid.evals.numbers import parse_number

    return isinstance(value, str) and parse_number(value) is not None
