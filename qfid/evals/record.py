"""The eval record: one item's result, the contract between the code that evaluates an item
(`evaluate.py`, from a backend's answers), the run on disk (`store.py`) and `compare`
(`pairing.py`).

`EvalRecord` is the one definition: its fields are the columns of a run's
`records.parquet`, in this order, and the parquet schema is derived from their types
(`list[list[F32]]` is a list of lists of float32; a plain `int` is int32, a `float` float64).
No field has a default, so a record built with a misspelt or a forgotten field fails at once
with one line naming it, instead of becoming a null column that `compare` then reads as "no
comparable top-k".

Record formats: 1 is every run written before the record had a version (no
`record_format` in the manifest; its reader is in `store.py`); 2 is this definition.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, fields
from functools import cache
from typing import Annotated, Union, get_args, get_origin, get_type_hints

from qfid.errors import QfidError
from qfid.evals.validation import did_you_mean

RECORD_FORMAT = 2

F32 = Annotated[float, "float32"]
I16 = Annotated[int, "int16"]


@dataclass(frozen=True, slots=True)
class EvalRecord:
    """One evaluated item. The item's identity and what it asked (`suite` .. `gold`, with
    `difficulty`), then what the model did: `prediction` / `extracted` / `correct` (None for
    perplexity); for choice suites `pred_index`, `choice_logprobs` and lm-eval's
    `correct_norm`; the gold answer's `answer_logprob`, `answer_tokens`, `answer_greedy`
    and its top-k next-token log-probs per position (`topk_ids`, `topk_logprobs`, for KL);
    on MoE models the routing of the gold request (`expert_ids`: per MoE layer the top-k
    expert ids of every token, `expert_k` ids a token; None for dense models)."""

    suite: str
    id: str
    base_id: str
    category: str
    lang: str
    difficulty: int | None
    scorer: str
    prompt: str
    prediction: str | None
    extracted: str | None
    correct: bool | None
    gold: str
    pred_index: int | None
    choice_logprobs: list[float] | None
    answer_logprob: float | None
    answer_tokens: int | None
    answer_greedy: bool | None
    topk_ids: list[list[int]] | None
    topk_logprobs: list[list[F32]] | None
    correct_norm: bool | None
    expert_ids: list[list[I16]] | None
    expert_k: int | None

    @classmethod
    def from_dict(cls, data: dict, where: str = "eval record") -> EvalRecord:
        """A record from a mapping that must hold exactly the record's fields."""
        check_fields(data.keys(), where)
        return cls(**data)

    def to_dict(self) -> dict:
        """Field -> value, in field order (the values themselves, not copies)."""
        return {name: getattr(self, name) for name in FIELD_NAMES}


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(EvalRecord))


def check_fields(names, where: str) -> None:
    """Raise one line naming the first unknown field, else the first missing one."""
    given = list(names)
    for name in given:
        if name not in FIELD_NAMES:
            raise QfidError(f"{where}: unknown field {name!r}{did_you_mean(str(name), FIELD_NAMES)}")
    missing = [name for name in FIELD_NAMES if name not in given]
    if missing:
        raise QfidError(f"{where}: missing field {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def record_fields(*names: str) -> list[str]:
    """Field names checked against the record, for code that selects columns by name."""
    for name in names:
        if name not in FIELD_NAMES:
            raise QfidError(f"{name!r} is not an eval record field{did_you_mean(name, FIELD_NAMES)}")
    return list(names)


@cache
def record_schema():
    """The parquet schema of `EvalRecord`: one column per field, nullable where the type allows None."""
    import pyarrow as pa

    hints = get_type_hints(EvalRecord, include_extras=True)
    columns = []
    for name in FIELD_NAMES:
        hint, nullable = _strip_none(hints[name])
        columns.append(pa.field(name, _arrow_type(hint), nullable=nullable))
    return pa.schema(columns)


def _strip_none(hint) -> tuple[object, bool]:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(get_args(hint))
    return hint, False


def _arrow_type(hint):
    import pyarrow as pa

    if get_origin(hint) is Annotated:
        base, width = get_args(hint)
        return {"float32": pa.float32(), "int16": pa.int16()}[width]
    if get_origin(hint) is list:
        return pa.list_(_arrow_type(get_args(hint)[0]))
    return {str: pa.string(), int: pa.int32(), float: pa.float64(), bool: pa.bool_()}[hint]
