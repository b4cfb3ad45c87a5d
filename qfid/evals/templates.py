"""Prompt templates in two spellings: `{field}` (str.format) and Jinja (`{{ field }}`, `{% for %}`).

Users coming from lm-eval write `doc_to_text` as Jinja over a row; qfid's built-in suites use
`{field}`. A template is Jinja when it contains `{{` or `{%` (and `{{`/`}}` are also how a
`{field}` template writes a literal brace, so a template with `{{` is never a format string
with literal braces: write those as Jinja's `{{ '{' }}`). Jinja renders in a sandbox with
StrictUndefined, so a suite file cannot run code and a misspelt field is an error, never an
empty string.
"""
from __future__ import annotations

import functools
import re
import string

from qfid.evals.validation import SchemaError

_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")


class RenderError(Exception):
    """A template that does not fit one item's values; the caller names the item.
    `missing` is the undefined field when that is the cause."""

    def __init__(self, message: str, missing: str | None = None):
        super().__init__(message)
        self.missing = missing


def is_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template


def check_template(template: str, where: str) -> None:
    """Fails at load time on a template that cannot parse, naming the YAML field."""
    if is_jinja(template):
        _compiled(template, where)
    else:
        format_fields(template, where)


def format_fields(template: str, where: str) -> set[str]:
    """The `{name}` placeholders of a format template; positional or indexed ones are errors."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SchemaError(where, f"bad template ({exc}); for a literal brace write the template in Jinja: {{{{ '{{' }}}}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise SchemaError(where, f"placeholder {{{name}}} must be a plain field name")
        names.add(name)
    return names


def render(template: str, values: dict, where: str = "template") -> str:
    """One template filled from `values`; a missing field raises RenderError naming it."""
    if not is_jinja(template):
        try:
            return template.format_map(values)
        except KeyError as exc:
            name = exc.args[0]
            raise RenderError(f"{where}: misses field {name!r}", missing=name) from None
    import jinja2

    try:
        return _compiled(template, where).render(values)
    except jinja2.UndefinedError as exc:
        found = _UNDEFINED_NAME.search(str(exc))
        raise RenderError(f"{where}: {exc}", missing=found.group(1) if found else None) from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"{where}: {type(exc).__name__}: {exc}") from None


@functools.lru_cache(maxsize=256)
def _compiled(template: str, where: str):
    """Compiled once per template text: a suite renders the same template for every item."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    environment = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise SchemaError(where, f"bad Jinja template: {exc.message} (template line {exc.lineno})") from None
