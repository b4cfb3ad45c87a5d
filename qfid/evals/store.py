"""A run on disk: `reports/runs/NAME/manifest.json` + per-item records pandas reads.

Records are appended as parquet parts (`records/part-00000.parquet`, one per finished
batch, each written to a temp name and renamed), so an interrupted run resumes without
redoing finished items; `finish` merges them into `records.parquet`. The manifest's
`identity` (model, backend, activation dtype, suites, limit, seed, prompt style) must match to resume.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from qfid.errors import QfidError
from qfid.utils.fs import atomic_write_text

RECORD_FIELDS = {
    "suite": "string", "id": "string", "base_id": "string", "category": "string", "lang": "string", "difficulty": "int32",
    "scorer": "string", "prompt": "string", "prediction": "string", "extracted": "string", "correct": "bool", "gold": "string",
    "pred_index": "int32", "choice_logprobs": "list<double>", "answer_logprob": "double", "answer_tokens": "int32",
    "answer_greedy": "bool", "topk_ids": "list<list<int32>>", "topk_logprobs": "list<list<float>>",
    "correct_norm": "bool",  # choice suites: lm-eval's acc_norm per item; added later, so last
    # MoE models: per MoE layer the top-k expert ids of every token of the gold request, token
    # after token (k = expert_k ids each, router order); null for dense models (evaluate.py)
    "expert_ids": "list<list<int16>>", "expert_k": "int32",
}


def record_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int32": pa.int32(), "bool": pa.bool_(), "double": pa.float64(),
             "list<double>": pa.list_(pa.float64()), "list<list<int32>>": pa.list_(pa.list_(pa.int32())),
             "list<list<int16>>": pa.list_(pa.list_(pa.int16())),
             "list<list<float>>": pa.list_(pa.list_(pa.float32()))}
    return pa.schema([(name, types[kind]) for name, kind in RECORD_FIELDS.items()])


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
        elif self.path.exists() and overwrite:
            shutil.rmtree(self.path)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.write_manifest({**manifest, "status": "running"})

    def manifest(self) -> dict:
        return json.loads(self.manifest_file.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_file, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    def done_keys(self) -> set[tuple[str, str]]:
        frame = self.records(columns=["suite", "id"])
        return set(zip(frame["suite"], frame["id"])) if len(frame) else set()

    def append(self, records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not records:
            return
        table = pa.Table.from_pylist([{k: r.get(k) for k in RECORD_FIELDS} for r in records], schema=record_schema())
        index = len(list(self.parts.glob("part-*.parquet")))
        tmp = self.parts / f".part-{index:05d}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.parts / f"part-{index:05d}.parquet")

    def records(self, columns: list[str] | None = None):
        """Every record so far (merged file and pending parts) as a DataFrame."""
        import pandas as pd
        import pyarrow as pa

        files = ([self.records_file] if self.records_file.is_file() else []) + sorted(self.parts.glob("part-*.parquet"))
        if not files:
            return pd.DataFrame(columns=columns or list(RECORD_FIELDS))
        return pa.concat_tables([_read_records(f, columns) for f in files]).to_pandas()

    def finish(self, results: dict, finished: str) -> None:
        """Merge the parts into records.parquet and mark the run complete."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(self.records(), schema=record_schema(), preserve_index=False)
        tmp = self.path / ".records.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.records_file)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.write_manifest({**self.manifest(), "status": "complete", "finished": finished, "results": results})


def _read_records(path: Path, columns: list[str] | None):
    """One records file in today's schema: a run written before a field was added (say
    `correct_norm`) still reads, resumes and merges, with that field null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = record_schema()
    wanted = columns or schema.names
    table = pq.read_table(path, columns=[c for c in wanted if c in pq.read_schema(path).names])
    return pa.table({c: table[c] if c in table.column_names else pa.nulls(len(table), schema.field(c).type) for c in wanted})


def _difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
