"""Schema errors that point at the file, line and field, plus "did you mean" hints.

Suites are written by hand by users; a typo in a key must fail loudly at load time with
the place to fix it, never be ignored (lm-eval's silent YAML surprises are the anti-pattern).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

import yaml

from qfid.errors import QfidError


class SchemaError(QfidError):
    """A bad value in one field; the loader adds the file and line before the user sees it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a close match, else ''; appended to unknown-name errors."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def reject_unknown_keys(data: Mapping, allowed: Iterable[str], prefix: str = "") -> None:
    """Unknown keys are typos until proven otherwise."""
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise SchemaError(f"{prefix}{key}", f"unknown key; allowed: {', '.join(allowed)}{did_you_mean(str(key), allowed)}")


def require_type(field: str, value, types: type | tuple[type, ...], what: str) -> None:
    """bool is an int in Python; a YAML `yes` must not pass as a number."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise SchemaError(field, f"must be {what}; got {value!r}")
    if not isinstance(value, types):
        raise SchemaError(field, f"must be {what}; got {type(value).__name__} {value!r}")


def yaml_key_lines(text: str) -> dict[str, int]:
    """1-based line of every mapping key, by dotted path (`scorer.type`, `fewshot.0.answer`)."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    _walk(root, "", lines)
    return lines


def _walk(node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}{key_node.value}"
            lines[path] = key_node.start_mark.line + 1
            _walk(value_node, path + ".", lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            lines[f"{prefix}{index}"] = child.start_mark.line + 1
            _walk(child, f"{prefix}{index}.", lines)


def line_of(field: str, lines: Mapping[str, int]) -> int | None:
    """The line of `field`, else of its nearest parent that has one."""
    parts = field.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line is not None:
            return line
        parts.pop()
    return None
