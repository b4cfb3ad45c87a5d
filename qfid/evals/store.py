"""A run on disk: `reports/runs/NAME/manifest.json` + per-item records pandas reads.

Records are appended as parquet parts (`records/part-00000.parquet`, one per finished
batch, each written to a temp name and renamed), so an interrupted run resumes without
redoing finished items; `finish` merges them into `records.parquet`. The manifest's
`identity` (model, backend, activation dtype, suites, limit, seed, prompt style) must match to resume.

Records are `EvalRecord`s (record.py); the manifest's `record_format` says which layout the
files hold. A run written before the format had a number (format 1) still reads, compares
and resumes (resuming rewrites its records in today's format first); a file of the current
format with a field more or less is refused with one line naming it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from qfid.errors import QfidError
from qfid.evals.record import FIELD_NAMES, RECORD_FORMAT, EvalRecord, check_fields, record_fields, record_schema
from qfid.utils.fs import atomic_write_text

# Format 1 (a run whose manifest has no `record_format`) had today's fields except those
# added during its life, which its older files lack: read as null.
V1_ADDED_LATER = ("correct_norm", "expert_ids", "expert_k")


class RunStore:
    def __init__(self, runs_dir: Path | str, name: str):
        if not name or "/" in name or name.startswith("."):
            raise QfidError(f"run name must be a plain folder name; got {name!r}")
        self.path = Path(runs_dir) / name
        self.parts = self.path / "records"
        self.records_file = self.path / "records.parquet"
        self.manifest_file = self.path / "manifest.json"

    def open(self, manifest: dict, overwrite: bool = False) -> None:
        """Start or resume: an existing run must have the same identity unless overwritten."""
        if self.manifest_file.is_file() and not overwrite:
            existing = self.manifest()
            if existing.get("identity") != manifest["identity"]:
                raise QfidError(f"run {self.path} exists with other settings ({_difference(existing.get('identity', {}), manifest['identity'])}); "
                                "use another --name or pass --overwrite")
            manifest = {**manifest, "started": existing.get("started", manifest.get("started"))}
            if _format_of(existing) != RECORD_FORMAT:
                self._upgrade()
        elif self.path.exists() and overwrite:
            shutil.rmtree(self.path)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.write_manifest({**manifest, "record_format": RECORD_FORMAT, "status": "running"})

    def manifest(self) -> dict:
        return json.loads(self.manifest_file.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_file, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    def done_keys(self) -> set[tuple[str, str]]:
        frame = self.records(columns=["suite", "id"])
        return set(zip(frame["suite"], frame["id"])) if len(frame) else set()

    def append(self, records: list[EvalRecord]) -> None:
        import pyarrow as pa

        if not records:
            return
        for record in records:
            if not isinstance(record, EvalRecord):
                raise QfidError(f"run {self.path}: a record must be an EvalRecord; got {type(record).__name__}")
        index = len(list(self.parts.glob("part-*.parquet")))
        _write(pa.Table.from_pylist([r.to_dict() for r in records], schema=record_schema()),
               self.parts / f"part-{index:05d}.parquet")

    def records(self, columns: list[str] | None = None):
        """Every record so far (merged file and pending parts) as a DataFrame."""
        import pandas as pd
        import pyarrow as pa

        if columns is not None:
            record_fields(*columns)
        files = self._files()
        if not files:
            return pd.DataFrame(columns=columns or list(FIELD_NAMES))
        read = _read_v1 if self.record_format() == 1 else _read_current
        return pa.concat_tables([read(f, columns) for f in files]).to_pandas()

    def record_format(self) -> int:
        """The format the run's files hold (1 for runs written before formats had numbers)."""
        return _format_of(self.manifest()) if self.manifest_file.is_file() else RECORD_FORMAT

    def _files(self) -> list[Path]:
        return ([self.records_file] if self.records_file.is_file() else []) + sorted(self.parts.glob("part-*.parquet"))

    def _upgrade(self) -> None:
        """Rewrite an older run's records (merged file and parts) as one file of today's format."""
        import pyarrow as pa

        frame = self.records()
        files = self._files()
        _write(pa.Table.from_pandas(frame, schema=record_schema(), preserve_index=False), self.records_file)
        for part in files:
            if part != self.records_file:
                part.unlink()

    def finish(self, results: dict, finished: str) -> None:
        """Merge the parts into records.parquet and mark the run complete."""
        import pyarrow as pa

        _write(pa.Table.from_pandas(self.records(), schema=record_schema(), preserve_index=False), self.records_file)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.write_manifest({**self.manifest(), "status": "complete", "finished": finished, "results": results})


def _format_of(manifest: dict) -> int:
    version = manifest.get("record_format", 1)
    if version not in (1, RECORD_FORMAT):
        raise QfidError(f"run {manifest.get('name')!r} holds records in format {version!r}; this qfid reads formats 1 and {RECORD_FORMAT}")
    return version


def _write(table, target: Path) -> None:
    """Write to a temp name and rename, so a reader never sees half a file."""
    import pyarrow.parquet as pq

    tmp = target.with_name(f".{target.stem}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def _read_current(path: Path, columns: list[str] | None):
    """A file of today's format: exactly the record's fields, or one line naming the odd one."""
    import pyarrow.parquet as pq

    where = f"records file {path}"
    stored = pq.read_schema(path)
    check_fields(stored.names, where)
    for want in record_schema():
        if stored.field(want.name).type != want.type:
            raise QfidError(f"{where}: field {want.name!r} holds {stored.field(want.name).type}, not {want.type}")
    return pq.read_table(path, columns=columns or list(FIELD_NAMES))


def _read_v1(path: Path, columns: list[str] | None):
    """A format-1 file in today's schema: a file written before a field was added (say
    `correct_norm`) reads with that field null; any other difference is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    present = pq.read_schema(path).names
    check_fields(present + [name for name in V1_ADDED_LATER if name not in present], f"format-1 records file {path}")
    schema = record_schema()
    wanted = columns or list(FIELD_NAMES)
    table = pq.read_table(path, columns=[c for c in wanted if c in present])
    return pa.table({c: (table[c].cast(schema.field(c).type) if c in table.column_names else pa.nulls(len(table), schema.field(c).type))
                     for c in wanted})


def _difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
