"""lm-eval's `doc_to_target` and `doc_to_choice`, read the way lm-eval reads them, so a task
YAML's data rules carry over: each is a column name, a Jinja template over the row, or a
literal (a fixed list of choices; a fixed target).

`doc_to_choice` gives the item's choices (a template renders a Python list, read with
`ast.literal_eval` as lm-eval does). `doc_to_target` gives the gold: for a choice suite an
index into the choices or the text of one of them (-> `label`), otherwise the `answer`.
`doc_to_text` needs no rule here: it is the suite's plain prompt.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from qfid.evals.templates import RenderError, check_template, is_jinja, render
from qfid.evals.validation import SchemaError


@dataclass(frozen=True, slots=True)
class DocTo:
    target: str | int | None = None
    choice: str | list | None = None
    choice_scorer: bool = False

    def __post_init__(self) -> None:
        for name, value, types in (("doc_to_target", self.target, (str, int)), ("doc_to_choice", self.choice, (str, list))):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, types):
                raise SchemaError(name, f"must be a column name, a Jinja template{' or a list' if name == 'doc_to_choice' else ' or an index'}; got {value!r}")
            if isinstance(value, str):
                check_template(value, name)
        if isinstance(self.choice, list) and not all(isinstance(c, str) for c in self.choice):
            raise SchemaError("doc_to_choice", f"must be a list of strings; got {self.choice!r} "
                              "(YAML reads unquoted yes/no/on/off as true/false and digits as numbers: quote them)")

    def apply(self, data: dict) -> None:
        """Sets `choices`, then `label` or `answer`, on one normalised row, in place."""
        if self.choice is not None:
            data["choices"] = self._choices(data)
        if self.target is None:
            return
        target = _value(self.target, data, "doc_to_target")
        if self.choice_scorer:
            data["label"] = _label(target, data.get("choices"))
        else:
            data["answer"] = target

    def _choices(self, data: dict) -> list:
        if isinstance(self.choice, list):
            return list(self.choice)
        value = _value(self.choice, data, "doc_to_choice")
        if isinstance(value, str) and is_jinja(self.choice):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise SchemaError("doc_to_choice", f"must render a list such as ['yes', 'no']; rendered {value!r}") from None
        if not isinstance(value, (list, tuple)):
            raise SchemaError("doc_to_choice", f"must give a list of choices; got {value!r}")
        return list(value)


def _value(rule: str | int, data: dict, where: str):
    """A literal index, a rendered template, or a column's value (taken out of the row)."""
    if isinstance(rule, int):
        return rule
    if is_jinja(rule):
        try:
            return render(rule, data, where)
        except RenderError as exc:
            raise SchemaError(where, str(exc).removeprefix(f"{where}: ")) from None
    if rule not in data:
        raise SchemaError(where, f"column {rule!r} is not in this row")
    return data.pop(rule)  # consumed: the gold is not also a prompt field


def _label(target, choices) -> int:
    """An index (as lm-eval's integer target), a digit string, or the text of a choice."""
    if isinstance(target, int):
        return target
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if choices and text in choices:
        return list(choices).index(text)
    raise SchemaError("doc_to_target", f"must give a choice index or one of the choices; got {target!r}")
