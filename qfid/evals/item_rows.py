"""Rows as users keep them -> Items: flat rows (every non-reserved column is a prompt field)
or the nested `fields` form, with the YAML's column mapping and lm-eval's `doc_to_target` /
`doc_to_choice` applied first.

Values are normalised so that the same data gives the same Items from any file type: null
and empty cells are absent, `label` / `difficulty` written as digit strings (CSV) are
integers, `choices` is a list, a JSON list in one cell, or numbered `choice_1..N` columns.
A row without an id gets one from a hash of its canonical content (numbers and their
digit strings hash alike), so it is stable across runs and file formats while the row is
unchanged; `compare` pairs items by id, so duplicates are an error.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from qfid.errors import QfidError
from qfid.evals.doc_to import DocTo
from qfid.evals.item_sources import Row
from qfid.evals.items import ITEM_KEYS, Item
from qfid.evals.validation import SchemaError, did_you_mean, reject_unknown_keys

RESERVED = ("id", "category", "lang", "answer", "choices", "label", "difficulty")
_NUMBERED_CHOICE = re.compile(r"^choice_(\d+)$")
_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True, slots=True)
class RowSpec:
    """How rows become items: `columns` maps a reserved name to the data's column
    (`{answer: gold, id: uid}`); `doc_to` holds lm-eval's target / choice rules."""

    columns: dict = field(default_factory=dict)
    doc_to: DocTo = field(default_factory=DocTo)

    def __post_init__(self) -> None:
        for key, column in self.columns.items():
            if key not in RESERVED:
                raise SchemaError(f"columns.{key}", f"unknown item key; mappable: {', '.join(RESERVED)}{did_you_mean(str(key), RESERVED)}")
            if not isinstance(column, str) or not column:
                raise SchemaError(f"columns.{key}", f"must be the name of a column in the data; got {column!r}")


def items_from_rows(rows: list[Row], spec: RowSpec) -> tuple[list[Item], list[str]]:
    """Every row as an Item (the first bad row fails at its place) and the warnings to show."""
    _check_mapped_columns(rows, spec)
    items, generated, first_at = [], 0, {}
    for row in rows:
        try:
            data = _normalised(row.data, spec)
            generated += "id" not in data
            item = _item(data)
        except SchemaError as exc:
            raise QfidError(f"{row.where}: {exc}") from None
        if item.id in first_at:
            raise QfidError(f"{row.where}: id: duplicate id {item.id!r} (first {first_at[item.id]}){_same_row_hint(generated)}")
        first_at[item.id] = row.where_short
        items.append(item)
    notes = [f"{generated} of {len(items)} items have no id; generated each from a hash of its row "
             "(stable while the row is unchanged; add an id column to edit rows freely)"] if generated else []
    return items, notes


def _same_row_hint(generated: int) -> str:
    return "; the two rows are identical and have no id column: give them ids" if generated else ""


def _check_mapped_columns(rows: list[Row], spec: RowSpec) -> None:
    """A mapping to a column the data does not have is a typo, not an empty column."""
    present = set().union(*(row.data.keys() for row in rows))
    for key, column in spec.columns.items():
        if column not in present:
            raise SchemaError(f"columns.{key}", f"maps to column {column!r}, which is not in the data; columns: {', '.join(sorted(map(str, present)))}{did_you_mean(column, map(str, present))}")
        if key in present and key != column:
            raise SchemaError(f"columns.{key}", f"the data has both {column!r} and {key!r}; rename or drop one")


def _normalised(raw: dict, spec: RowSpec) -> dict:
    """Mapping applied, nulls dropped, doc_to_* applied, choices collected, integers parsed."""
    data = {key: value for key, value in raw.items() if not _absent(value)}
    for key, column in spec.columns.items():
        if column in data:
            data[key] = data.pop(column)
    if isinstance(data.get("fields"), dict):
        data["fields"] = {key: value for key, value in data["fields"].items() if value is not None}
    _collect_choices(data)
    spec.doc_to.apply(data)
    for key in ("label", "difficulty"):
        if key in data:
            data[key] = _integer(data[key])
    return data


def _integer(value):
    """"2" (CSV) and 2.0 (pandas' int column with gaps) are the integer 2; others pass on to
    the Item's own type check."""
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _absent(value) -> bool:
    """null, NaN (pandas' missing number) and an empty cell all mean "not given"."""
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and value == "")


def _collect_choices(data: dict) -> None:
    """`choices` as a list: a JSON list written in one cell, or numbered `choice_N` columns."""
    numbered = sorted((int(m.group(1)), key) for key in data if (m := _NUMBERED_CHOICE.match(str(key))))
    if numbered:
        if "choices" in data:
            raise SchemaError("choices", "give either a choices column or choice_1, choice_2, ... columns, not both")
        if [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
            raise SchemaError("choices", f"numbered columns must run choice_1, choice_2, ... without gaps; got {', '.join(k for _, k in numbered)}")
        data["choices"] = [data.pop(key) for _, key in numbered]
    value = data.get("choices")
    if isinstance(value, str):
        try:
            data["choices"] = json.loads(value)
        except json.JSONDecodeError:
            raise SchemaError("choices", f'a text cell must hold a JSON list such as ["yes", "no"]; got {value!r}') from None
    if "choices" in data and not isinstance(data["choices"], (list, tuple)):
        raise SchemaError("choices", f"must be a list of strings; got {data['choices']!r}")


def _item(data: dict) -> Item:
    """The nested form keeps its strict keys; in the flat form the other columns are the fields."""
    if "fields" in data:
        reject_unknown_keys(data, ITEM_KEYS)
        fields = data["fields"]
    else:
        fields = {key: value for key, value in data.items() if key not in RESERVED}
    for key in ("category", "lang"):
        if key not in data:
            raise SchemaError(key, "is required (a column, or mapped with columns: in the suite YAML)")
    choices = data.get("choices")
    content = {"category": data["category"], "lang": data["lang"], "fields": fields, "answer": data.get("answer"),
               "choices": tuple(choices) if choices is not None else None, "label": data.get("label"),
               "difficulty": data.get("difficulty")}
    return Item(id=data["id"] if "id" in data else generated_id(content), **content)


def generated_id(content: dict) -> str:
    """`id-` + 12 hex digits of SHA-256 over the canonical JSON of the item's content."""
    canonical = json.dumps(_canonical(content), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "id-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _canonical(value):
    """Scalars as text (CSV's "4" and JSON's 4 are the same cell), containers recursively."""
    if isinstance(value, dict):
        return {str(key): _canonical(inner) for key, inner in value.items() if inner is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(inner) for inner in value]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None if value is None else str(value)

