"""A suite: one YAML file validated against one small schema, plus its items.

    name: finance                      # what --suite and run records call it
    version: 1
    description: one paragraph
    prompt: {plain: "Q: {question}\nA:", chat: "{question}", system: optional}
    fewshot: [{fields: {question: ...}, target: "42"}]
    scorer: {type: numeric, rel_tol: 0.005}   # numeric | exact | regex | choice | perplexity
    generation: {max_tokens: 64, stop: ["\n\n"]}
    items: items.jsonl                 # relative to this file (.jsonl/.csv/.parquet, datasets:...); or `text: file.txt` (perplexity)
    columns: {answer: gold}            # optional: reserved item key -> the data's column

Users bring data as they keep it: `items:` is a .jsonl, .csv or .parquet file or
`datasets:NAME[:CONFIG]:SPLIT`, in flat rows (non-reserved columns are prompt fields) or the
nested `fields` form; `columns: {answer: gold}` maps reserved names to the data's columns;
prompts are `{field}` or Jinja templates, and lm-eval's `doc_to_text` / `doc_to_target` /
`doc_to_choice` are accepted (see item_rows.py, doc_to.py, templates.py).

Suites are resolved by name (a folder under the bundled `evalsuites/`) or by path (a user's
YAML). Only the suites asked for are read; nothing is indexed at import. Loading checks every
item against the prompt and the scorer, so a broken suite fails before a model is loaded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qfid.errors import QfidError
from qfid.evals.doc_to import DocTo
from qfid.evals.item_rows import RowSpec, items_from_rows
from qfid.evals.item_sources import Row, read_rows
from qfid.evals.items import Item
from qfid.evals.suite_check import check_suite_consistency
from qfid.evals.templates import check_template
from qfid.evals.validation import (
    SchemaError, did_you_mean, line_of, reject_unknown_keys, require_type, yaml_key_lines,
)
from qfid.paths import bundled_dir

SUITE_KEYS = ("name", "version", "description", "prompt", "fewshot", "scorer", "generation", "items", "text", "lang",
              "columns", "doc_to_text", "doc_to_target", "doc_to_choice", "calib_items")
SCORER_OPTIONS = {
    "numeric": ("rel_tol", "abs_tol", "markers"),
    "exact": ("markers",),
    "regex": ("pattern",),
    "choice": ("target", "method"),
    "perplexity": (),
}
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScorerSpec:
    """How a prediction is judged. `choice` compares the log-likelihood of each choice
    (`method: loglikelihood`) or reads a letter from generated text (`method: generate`)."""

    type: str
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    markers: tuple[str, ...] = ()
    pattern: str | None = None
    target: str = "text"
    method: str = "loglikelihood"

    def __post_init__(self) -> None:
        if self.type not in SCORER_OPTIONS:
            raise SchemaError("scorer.type", f"unknown scorer {self.type!r}; one of {', '.join(SCORER_OPTIONS)}{did_you_mean(self.type, SCORER_OPTIONS)}")
        for name, upper in (("rel_tol", 1.0), ("abs_tol", float("inf"))):
            value = getattr(self, name)
            require_type(f"scorer.{name}", value, (int, float), "a number")
            if not 0 <= value < upper:
                raise SchemaError(f"scorer.{name}", f"must be >= 0 and < {upper}; got {value}")
        if self.type == "regex":
            self._check_pattern()
        if self.target not in ("text", "letter"):
            raise SchemaError("scorer.target", f"must be text or letter; got {self.target!r}")
        if self.method not in ("loglikelihood", "generate"):
            raise SchemaError("scorer.method", f"must be loglikelihood or generate; got {self.method!r}")
        if self.method == "generate" and self.target != "letter":
            raise SchemaError("scorer.method", "generate reads a choice letter from the output; set target: letter")

    def _check_pattern(self) -> None:
        import re

        if not self.pattern:
            raise SchemaError("scorer.pattern", "is required for the regex scorer")
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise SchemaError("scorer.pattern", f"is not a valid regular expression: {exc}") from None
        if compiled.groups < 1:
            raise SchemaError("scorer.pattern", "needs one capture group: the extracted answer")

    @property
    def uses_loglikelihood(self) -> bool:
        return self.type == "perplexity" or (self.type == "choice" and self.method == "loglikelihood")


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """`plain` is what a base model sees; `chat` the user turn under a chat template."""

    plain: str
    chat: str | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        require_type("prompt.plain", self.plain, str, "a template string")
        for name in ("chat", "system"):
            if getattr(self, name) is not None:
                require_type(f"prompt.{name}", getattr(self, name), str, "a template string")
        for name in ("plain", "chat"):
            check_template(getattr(self, name) or "", f"prompt.{name}")

    @property
    def chat_template(self) -> str:
        return self.chat or self.plain


@dataclass(frozen=True, slots=True)
class FewShot:
    fields: dict
    target: str

    def __post_init__(self) -> None:
        require_type("fewshot.fields", self.fields, dict, "a mapping of prompt fields")
        require_type("fewshot.target", self.target, str, "a string (the text after the prompt)")


@dataclass(frozen=True, slots=True)
class GenerationSpec:
    max_tokens: int = 64
    stop: tuple[str, ...] = ("\n\n",)

    def __post_init__(self) -> None:
        require_type("generation.max_tokens", self.max_tokens, int, "an integer")
        if not 1 <= self.max_tokens <= 4096:
            raise SchemaError("generation.max_tokens", f"must be between 1 and 4096; got {self.max_tokens}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise SchemaError("generation.stop", "must be a list of non-empty strings")


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    version: str
    description: str
    prompt: PromptSpec
    scorer: ScorerSpec
    generation: GenerationSpec
    source: Path
    items: tuple[Item, ...] = ()
    fewshot: tuple[FewShot, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = ()
    calib_items: str | None = None   # rows for `--calib suite:NAME`, same columns as items (never eval items)

    @property
    def categories(self) -> list[str]:
        return sorted({item.category for item in self.items})

    @property
    def languages(self) -> list[str]:
        return sorted({item.lang for item in self.items})


def builtin_suite_names() -> list[str]:
    """Folders of the bundled evalsuites/ that hold a suite.yaml (a directory listing, no parsing)."""
    root = bundled_dir("evalsuites")
    return sorted(p.parent.name for p in root.glob("*/suite.yaml"))


def resolve_suite_path(spec: str) -> Path:
    """A built-in name, a suite folder, or a path to a user's YAML -> the YAML file."""
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise QfidError(f"suite file not found: {path}")
        return path
    if path.is_dir() and (path / "suite.yaml").is_file():
        return path / "suite.yaml"
    builtin = bundled_dir("evalsuites") / spec / "suite.yaml"
    if "/" not in spec and builtin.is_file():
        return builtin
    names = builtin_suite_names()
    raise QfidError(f"unknown suite {spec!r}{did_you_mean(spec, names)}; built-in suites: {', '.join(names)} (or give a path to a suite.yaml)")


def load_suites(specs: str | list[str]) -> list[Suite]:
    """`"finance,legal"` or a list -> suites, in order, each loaded once."""
    names = [s.strip() for s in specs.split(",")] if isinstance(specs, str) else list(specs)
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        raise QfidError("no suite given (e.g. --suite finance,legal)")
    suites = [load_suite(name) for name in names]
    for suite in suites:  # `qfid eval` shows them; `qfid suites check` prints suite.warnings itself
        for warning in suite.warnings:
            log.warning("warning: suite %s: %s", suite.name, warning)
    return suites


def load_suite(spec: str | Path) -> Suite:
    path = resolve_suite_path(str(spec))
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise QfidError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        suite = _suite_from_dict(data, path)
    except SchemaError as exc:
        line = line_of(exc.field, yaml_key_lines(text))
        raise QfidError(f"{path}{f':{line}' if line else ''}: {exc}") from None
    return suite


def _suite_from_dict(data, path: Path) -> Suite:
    if not isinstance(data, dict):
        raise SchemaError("suite", "the file must be a YAML mapping (name:, prompt:, scorer:, items: ...)")
    reject_unknown_keys(data, SUITE_KEYS)
    for key in ("name", "scorer"):
        if key not in data:
            raise SchemaError(key, "is required")
    require_type("name", data["name"], str, "a string")
    scorer = _scorer(data["scorer"])
    prompt = _prompt(_prompt_or_doc_to_text(data), scorer)
    items, warnings = _items(data, path, scorer)
    suite = Suite(
        name=data["name"], version=str(data.get("version", "1")), description=str(data.get("description", "")).strip(),
        prompt=prompt, scorer=scorer, generation=_generation(data.get("generation") or {}), source=path,
        items=tuple(items), fewshot=_fewshot(data.get("fewshot") or []), warnings=tuple(warnings),
        calib_items=_calib_items(data),
    )
    check_suite_consistency(suite)
    return suite


def _scorer(raw) -> ScorerSpec:
    if isinstance(raw, str):
        raw = {"type": raw}
    require_type("scorer", raw, dict, "a mapping with a type")
    if "type" not in raw:
        raise SchemaError("scorer.type", "is required")
    require_type("scorer.type", raw["type"], str, "a scorer name")
    if raw["type"] not in SCORER_OPTIONS:  # a bad type first: its options cannot be judged without it
        raise SchemaError("scorer.type", f"unknown scorer {raw['type']!r}; one of {', '.join(SCORER_OPTIONS)}{did_you_mean(raw['type'], SCORER_OPTIONS)}")
    reject_unknown_keys(raw, ("type", *SCORER_OPTIONS[raw["type"]]), "scorer.")
    options = dict(raw)
    if "markers" in options:
        options["markers"] = tuple(options["markers"] or ())
    return ScorerSpec(**options)


def _prompt_or_doc_to_text(data: dict):
    """lm-eval's `doc_to_text` is the plain prompt; it cannot be given twice."""
    if "doc_to_text" not in data:
        return data.get("prompt")
    if "prompt" in data:
        raise SchemaError("doc_to_text", "is the plain prompt; give it or prompt:, not both")
    return {"plain": data["doc_to_text"]}


def _prompt(raw, scorer: ScorerSpec) -> PromptSpec:
    if raw is None:
        if scorer.type == "perplexity":
            return PromptSpec(plain="{text}")
        raise SchemaError("prompt", "is required (prompt: {plain: ..., chat: ...})")
    if isinstance(raw, str):
        raw = {"plain": raw}
    require_type("prompt", raw, dict, "a mapping with plain (and optionally chat, system)")
    reject_unknown_keys(raw, ("plain", "chat", "system"), "prompt.")
    if "plain" not in raw:
        raise SchemaError("prompt.plain", "is required")
    return PromptSpec(**raw)


def _fewshot(raw) -> tuple[FewShot, ...]:
    require_type("fewshot", raw, list, "a list of {fields, target}")
    shots = []
    for index, entry in enumerate(raw):
        require_type(f"fewshot.{index}", entry, dict, "a mapping {fields, target}")
        reject_unknown_keys(entry, ("fields", "target"), f"fewshot.{index}.")
        try:
            shots.append(FewShot(fields=entry.get("fields"), target=entry.get("target")))
        except SchemaError as exc:
            raise SchemaError(exc.field.replace("fewshot.", f"fewshot.{index}."), exc.reason) from None
    return tuple(shots)


def _generation(raw) -> GenerationSpec:
    require_type("generation", raw, dict, "a mapping {max_tokens, stop}")
    reject_unknown_keys(raw, ("max_tokens", "stop"), "generation.")
    stop = raw.get("stop", ["\n\n"])
    require_type("generation.stop", stop, list, "a list of strings")
    return GenerationSpec(max_tokens=raw.get("max_tokens", 64), stop=tuple(stop))


def _items(data: dict, path: Path, scorer: ScorerSpec) -> tuple[list[Item], list[str]]:
    if ("items" in data) == ("text" in data):
        raise SchemaError("items", "give exactly one of items: (a JSONL file) or text: (a text file, perplexity only)")
    if "text" in data:
        if scorer.type != "perplexity":
            raise SchemaError("text", "a plain text file is only for the perplexity scorer; use items: for the others")
        from qfid.evals.text_items import paragraph_items

        return paragraph_items(_relative_file(data, "text", path), str(data["name"]), data.get("lang", "en")), []
    if "lang" in data:
        raise SchemaError("lang", "only with text: (items carry their own lang)")
    require_type("items", data["items"], str, "a file path relative to the suite YAML, or datasets:NAME[:CONFIG]:SPLIT")
    return items_from_rows(read_rows(data["items"], path.parent), _row_spec(data, scorer))


def _calib_items(data: dict) -> str | None:
    if "calib_items" not in data:
        return None
    require_type("calib_items", data["calib_items"], str, "a file path relative to the suite YAML")
    return data["calib_items"]


def items_from_suite_rows(suite: Suite, rows: list[dict], origin: str) -> list[Item]:
    """Rows in the suite's own item format (e.g. a generator's output, or `calib_items`)
    read as Items with the suite's column mapping."""
    data = yaml.safe_load(suite.source.read_text(encoding="utf-8"))
    wrapped = [Row(origin, row, index=i + 1) for i, row in enumerate(rows)]
    return items_from_rows(wrapped, _row_spec(data, suite.scorer))[0]


def _row_spec(data: dict, scorer: ScorerSpec) -> RowSpec:
    columns = data.get("columns") or {}
    require_type("columns", columns, dict, "a mapping {item key: column in the data}")
    doc_to = DocTo(target=data.get("doc_to_target"), choice=data.get("doc_to_choice"), choice_scorer=scorer.type == "choice")
    return RowSpec(columns=dict(columns), doc_to=doc_to)


def _relative_file(data: dict, key: str, path: Path) -> Path:
    require_type(key, data[key], str, "a file path relative to the suite YAML")
    return (path.parent / data[key]).resolve()

