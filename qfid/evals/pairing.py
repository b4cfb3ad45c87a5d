"""Load two eval runs and pair their records item by item, refusing unlike comparisons.

A paired test is only valid when both runs answered the same items of the same suite
versions; anything else silently compares different questions. So a mismatch is an error
(exit 2) that names what differs, unless the caller asks to `intersect` (keep the shared
items, and say so in the notes). The same id with a different gold answer is always an
error: those are different items, whatever the flags.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qfid.errors import QfidError
from qfid.evals.record import record_fields
from qfid.evals.store import RunStore

# What compare needs of each run's EvalRecords, named against the record (a typo fails on import).
KEY = record_fields("suite", "id")
SHARED_FIELDS = record_fields("base_id", "category", "lang", "scorer", "gold")
PER_RUN_FIELDS = record_fields("correct", "choice_logprobs", "answer_logprob", "answer_tokens", "topk_ids", "topk_logprobs",
                               "expert_ids", "expert_k")


@dataclass(frozen=True)
class LoadedRun:
    name: str
    path: Path
    manifest: dict
    records: object  # pandas.DataFrame, one row per item

    @property
    def suite_versions(self) -> dict:
        return dict(self.manifest.get("identity", {}).get("suites", {}))

    def describe(self) -> dict:
        """What a comparison records about the run (JSON-ready)."""
        model = self.manifest.get("model", {})
        return {"name": self.name, "path": str(self.path), "status": self.manifest.get("status"),
                "model": self.manifest.get("identity", {}).get("model") or model.get("model"), "items": int(len(self.records))}


@dataclass
class Pairing:
    frame: object  # pandas.DataFrame: KEY + SHARED_FIELDS + `<field>_base` / `<field>_cand`
    notes: list[str] = field(default_factory=list)


def resolve_run_dir(ref: str | Path, runs_dir: str | Path) -> Path:
    """A run directory given as a path, or a run name under `runs_dir`."""
    as_path = Path(ref)
    for candidate in (as_path, Path(runs_dir) / str(ref)):
        if (candidate / "manifest.json").is_file():
            return candidate
    known = sorted(p.parent.name for p in Path(runs_dir).glob("*/manifest.json"))
    hint = f"; runs in {runs_dir}: {', '.join(known)}" if known else f"; {runs_dir} holds no runs (create one with qfid eval)"
    raise QfidError(f"no eval run {str(ref)!r} (neither a run folder nor a name under {runs_dir}){hint}")


def load_run(ref: str | Path, runs_dir: str | Path = "reports/runs") -> LoadedRun:
    path = resolve_run_dir(ref, runs_dir)
    store = RunStore(path.parent, path.name)
    records = store.records()
    duplicated = records.duplicated(KEY)
    if duplicated.any():
        first = records[duplicated].iloc[0]
        raise QfidError(f"run {path} holds item {first['suite']}/{first['id']} more than once; re-run it with --overwrite")
    return LoadedRun(path.name, path, store.manifest(), records)


def pair_runs(base: LoadedRun, cand: LoadedRun, intersect: bool = False) -> Pairing:
    """Inner-join the two runs on (suite, id) after checking they hold the same items."""
    problems = _version_differences(base, cand) + _item_differences(base, cand)
    if problems and not intersect:
        raise QfidError(f"runs {base.name} and {cand.name} are not comparable item by item: {'; '.join(problems)}. "
                        "Re-run with the same suites and --limit/--seed, or pass --intersect to compare the shared items only")
    frame = _join(base, cand)
    if frame.empty:
        raise QfidError(f"runs {base.name} and {cand.name} have no item in common")
    frame = _require_same_items(frame, base, cand)
    notes = [f"--intersect: {p}; compared on the {len(frame)} shared items" for p in problems]
    return Pairing(frame, notes)


def _version_differences(base: LoadedRun, cand: LoadedRun) -> list[str]:
    b, c = base.suite_versions, cand.suite_versions
    return [f"suite {s} is version {b[s]} in {base.name} but {c[s]} in {cand.name}" for s in sorted(set(b) & set(c)) if b[s] != c[s]]


def _item_differences(base: LoadedRun, cand: LoadedRun) -> list[str]:
    base_keys = _keys_by_suite(base.records)
    cand_keys = _keys_by_suite(cand.records)
    problems = []
    for suite in sorted(set(base_keys) | set(cand_keys)):
        only_base = base_keys.get(suite, set()) - cand_keys.get(suite, set())
        only_cand = cand_keys.get(suite, set()) - base_keys.get(suite, set())
        if suite not in cand_keys or suite not in base_keys:
            owner = base.name if suite in base_keys else cand.name
            problems.append(f"suite {suite} is only in {owner}")
            continue
        for run_name, extra in ((base.name, only_base), (cand.name, only_cand)):
            if extra:
                problems.append(f"{len(extra)} {suite} item(s) only in {run_name} (e.g. {', '.join(sorted(extra)[:3])})")
    return problems


def _keys_by_suite(records) -> dict[str, set[str]]:
    return {suite: set(ids) for suite, ids in records.groupby("suite")["id"]}


def _join(base: LoadedRun, cand: LoadedRun):
    columns = KEY + SHARED_FIELDS + PER_RUN_FIELDS
    left = base.records[columns]
    right = cand.records[KEY + ["gold"] + PER_RUN_FIELDS].rename(columns={"gold": "gold_cand"})
    merged = left.merge(right, on=KEY, how="inner", suffixes=("_base", "_cand"))
    return merged.reset_index(drop=True)


def _require_same_items(frame, base: LoadedRun, cand: LoadedRun):
    differing = frame[frame["gold"].fillna("") != frame["gold_cand"].fillna("")]
    if len(differing):
        row = differing.iloc[0]
        raise QfidError(f"{len(differing)} item(s) share an id but not the gold answer between {base.name} and {cand.name} "
                        f"(e.g. {row['suite']}/{row['id']}: {row['gold']!r} vs {row['gold_cand']!r}); these are different items")
    return frame.drop(columns=["gold_cand"])
