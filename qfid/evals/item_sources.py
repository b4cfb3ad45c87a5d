"""Read a suite's rows from wherever the user keeps them: JSONL, CSV, Parquet or a
`datasets` dataset (`datasets:NAME[:CONFIG]:SPLIT`, a local folder or the hub).

Every reader returns `Row`s: the row as plain Python values plus where it came from
(`file:line` or `file: row N`), so a bad row is reported at its place. Parsing is left to
the libraries people already use (pandas for CSV, pyarrow for Parquet, `datasets`); CSV
cells are read as strings so "001" stays "001".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from qfid.errors import QfidError

DATASETS_PREFIX = "datasets:"
FILE_TYPES = (".jsonl", ".csv", ".parquet")
SOURCE_HELP = "a .jsonl, .csv or .parquet file, or datasets:NAME[:CONFIG]:SPLIT"


@dataclass(frozen=True, slots=True)
class Row:
    """One row and its place: `line` in a text file (JSONL, CSV), else its 1-based `index`."""

    origin: str
    data: dict
    line: int | None = None
    index: int = 0

    @property
    def where(self) -> str:
        return f"{self.origin}:{self.line}" if self.line is not None else f"{self.origin}: row {self.index}"

    @property
    def where_short(self) -> str:
        return f"on line {self.line}" if self.line is not None else f"at row {self.index}"


def read_rows(source: str, base: Path) -> list[Row]:
    """The rows of `source` (a path relative to the suite file's folder `base`)."""
    if source.startswith(DATASETS_PREFIX):
        return _dataset_rows(source, base)
    path = (base / source).resolve()
    reader = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}.get(path.suffix.lower())
    if reader is None:
        raise QfidError(f"items: unsupported file type {path.suffix or '(none)'!r} ({path.name}); use {SOURCE_HELP}")
    if not path.is_file():
        raise QfidError(f"items file not found: {path}")
    rows = reader(path)
    if not rows:
        raise QfidError(f"{path}: no items")
    return rows


def _jsonl_rows(path: Path) -> list[Row]:
    """One JSON object a line; blank lines are skipped, a bad line fails with its number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QfidError(f"{path}:{line_no}: not valid JSON: {exc.msg} at column {exc.colno}") from None
            rows.append(Row(str(path), data, line=line_no))
    return _objects_only(rows)


def _objects_only(rows: list[Row]) -> list[Row]:
    """A JSON line may hold any value; an item row is an object."""
    for row in rows:
        if not isinstance(row.data, dict):
            raise QfidError(f"{row.where}: item: must be a JSON object; got {type(row.data).__name__}")
    return rows


def _csv_rows(path: Path) -> list[Row]:
    """Every cell a string (empty cells ""), each row located at its first line in the file:
    line 1 is the header, and a quoted cell spanning lines moves the rows after it down."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise QfidError(f"{path}: not valid CSV: {' '.join(str(exc).split())}") from None
    rows, line = [], 2
    for data in frame.to_dict("records"):
        rows.append(Row(str(path), data, line=line))
        line += 1 + sum(value.count("\n") for value in data.values())
    return rows


def _parquet_rows(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a corrupt or foreign file
        raise QfidError(f"{path}: not a readable Parquet file: {type(exc).__name__}: {exc}") from None
    return [Row(str(path), data, index=index) for index, data in enumerate(records, start=1)]


def parse_dataset_source(source: str) -> tuple[str, str | None, str]:
    """`datasets:NAME[:CONFIG]:SPLIT` -> (name, config, split)."""
    parts = source[len(DATASETS_PREFIX):].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise QfidError(f"items: {source!r} must be datasets:NAME:SPLIT or datasets:NAME:CONFIG:SPLIT")
    return parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]


def _dataset_rows(source: str, base: Path) -> list[Row]:
    name, config, split = parse_dataset_source(source)
    local = (base / name).expanduser()
    if not local.exists() and name.startswith((".", "/", "~")):
        raise QfidError(f"{source}: dataset folder not found: {local.resolve()}")
    dataset = _load_local_dataset(local, config, split, source) if local.exists() else _load_hub_dataset(name, config, split, source)
    rows = [Row(source, data, index=index) for index, data in enumerate(dataset.to_list(), start=1)]
    if not rows:
        raise QfidError(f"{source}: no items")
    return rows


def _load_local_dataset(path: Path, config: str | None, split: str, source: str):
    """A `save_to_disk` folder, or a folder of data files `load_dataset` understands."""
    import datasets

    saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    try:
        if not saved:
            return datasets.load_dataset(str(path), config, split=split)
        loaded = datasets.load_from_disk(str(path))
    except (ValueError, FileNotFoundError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise QfidError(f"{source}: cannot load the local dataset {path}: {_first_line(exc)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise QfidError(f"{source}: no split {split!r} in {path}; splits: {', '.join(loaded)}")
        return loaded[split]
    return loaded


def _load_hub_dataset(name: str, config: str | None, split: str, source: str):
    """The hub only when this machine has it: offline, one line saying so."""
    if _hub_offline():
        raise QfidError(f"{source}: {name!r} is not a local folder and the Hugging Face hub is offline here "
                        "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); download it where there is internet, "
                        "save_to_disk(), and point datasets: at that folder")
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network, auth, missing repo or split: all mean "not loadable from here"
        raise QfidError(f"{source}: {name!r} is not a local folder and loading it from the Hugging Face hub failed "
                        f"(no internet?): {type(exc).__name__}: {_first_line(exc)}") from None


def _hub_offline() -> bool:
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on")
               for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
