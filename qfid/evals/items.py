"""One eval item, validated on construction (rows become items in `item_rows`).

Items are the unit that `compare` pairs across runs, so the schema is strict: a stable
`id`, a `category` and `lang` to break results down by, the prompt `fields`, the gold
`answer`, and for multiple choice the `choices` with the gold index `label`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from qfid.evals.validation import SchemaError, require_type

ITEM_KEYS = ("id", "category", "lang", "fields", "answer", "choices", "label", "difficulty")
_LANG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


@dataclass(frozen=True, slots=True)
class Item:
    """`fields` fill the prompt template; extra fields may hold the inputs the answer was
    computed from (the finance check recomputes answers from them)."""

    id: str
    category: str
    lang: str
    fields: dict
    answer: str | int | float | None
    choices: tuple[str, ...] | None = None
    label: int | None = None
    difficulty: int | None = None

    def __post_init__(self) -> None:
        require_type("id", self.id, str, "a string")
        if not _ID.match(self.id):
            raise SchemaError("id", f"must be letters, digits and _.:- ; got {self.id!r}")
        require_type("category", self.category, str, "a string")
        if not self.category.strip():
            raise SchemaError("category", "must not be empty")
        require_type("lang", self.lang, str, "a string")
        if not _LANG.match(self.lang):
            raise SchemaError("lang", f"must be a language code such as en, zh, pt-BR; got {self.lang!r}")
        require_type("fields", self.fields, dict, "a mapping of prompt fields")
        if self.answer is not None:
            require_type("answer", self.answer, (str, int, float), "a string or a number")
        self._check_choices()
        if self.difficulty is not None:
            require_type("difficulty", self.difficulty, int, "an integer")
            if not 1 <= self.difficulty <= 5:
                raise SchemaError("difficulty", f"must be between 1 and 5; got {self.difficulty}")

    def _check_choices(self) -> None:
        if self.choices is None:
            if self.label is not None:
                raise SchemaError("label", "is given but the item has no choices")
            return
        if len(self.choices) < 2 or not all(isinstance(c, str) and c for c in self.choices):
            raise SchemaError("choices", "must be a list of at least 2 non-empty strings")
        if len(set(self.choices)) != len(self.choices):
            raise SchemaError("choices", "must be distinct")
        if self.label is None:
            raise SchemaError("label", "is required with choices (0-based index of the correct choice)")
        require_type("label", self.label, int, "an integer")
        if not 0 <= self.label < len(self.choices):
            raise SchemaError("label", f"must index the {len(self.choices)} choices; got {self.label}")

    @property
    def base_id(self) -> str:
        """Parallel items across languages share it: `mlg-0042-zh` -> `mlg-0042`."""
        suffix = f"-{self.lang}"
        return self.id[: -len(suffix)] if self.id.endswith(suffix) else self.id
