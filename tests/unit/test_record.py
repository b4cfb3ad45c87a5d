"""The eval record as one typed contract (record.py): the parquet schema derived from the
dataclass, one clear line for an unknown or a missing field (in code and in a records file),
and runs written by the pre-contract code (tests/data/runs_v1, format 1) that still load,
compare against a new-format run and resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qfid.errors import QfidError
from qfid.evals.compare import compare_runs
from qfid.evals.pairing import load_run
from qfid.evals.record import FIELD_NAMES, RECORD_FORMAT, EvalRecord, record_fields, record_schema
from qfid.evals.store import RunStore
from tests.cli_helpers import run_cli
from tests.unit.test_compare import record, write_run

V1_RUNS = Path(__file__).parents[1] / "data" / "runs_v1"
# The layout format 1 wrote (store.RECORD_FIELDS before #13), column by column.
V1_TYPES = {
    "suite": "string", "id": "string", "base_id": "string", "category": "string", "lang": "string", "difficulty": "int32",
    "scorer": "string", "prompt": "string", "prediction": "string", "extracted": "string", "correct": "bool", "gold": "string",
    "pred_index": "int32", "choice_logprobs": "list<item: double>", "answer_logprob": "double", "answer_tokens": "int32",
    "answer_greedy": "bool", "topk_ids": "list<item: list<item: int32>>", "topk_logprobs": "list<item: list<item: float>>",
    "correct_norm": "bool", "expert_ids": "list<item: list<item: int16>>", "expert_k": "int32",
}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_the_schema_is_derived_from_the_dataclass_and_keeps_format_1_columns():
    schema = record_schema()
    assert tuple(schema.names) == FIELD_NAMES == tuple(V1_TYPES)
    assert {f.name: str(f.type) for f in schema} == V1_TYPES
    assert not schema.field("id").nullable and schema.field("correct").nullable and schema.field("expert_ids").nullable
    stored = pq.read_schema(V1_RUNS / "tiny-mixtral" / "records.parquet")
    assert {f.name: f.type for f in stored} == {f.name: f.type for f in schema}


def test_no_field_has_a_default():
    with pytest.raises(TypeError):
        EvalRecord(suite="s", id="s-1")  # type: ignore[call-arg]


def test_an_unknown_field_fails_with_one_line_naming_it():
    data = record("s", "s-1", True).to_dict()
    data["topk_id"] = [[1]]
    with pytest.raises(QfidError) as exc:
        EvalRecord.from_dict(data)
    assert _one_line(exc) == "eval record: unknown field 'topk_id' (did you mean 'topk_ids'?)"
    with pytest.raises(QfidError, match="'topk_logprob' is not an eval record field"):
        record_fields("topk_logprob")


def test_a_missing_field_fails_with_one_line_naming_it():
    data = record("s", "s-1", True).to_dict()
    del data["answer_greedy"]
    with pytest.raises(QfidError) as exc:
        EvalRecord.from_dict(data)
    assert _one_line(exc) == "eval record: missing field 'answer_greedy'"


def test_the_store_writes_records_only(tmp_path):
    store = RunStore(tmp_path, "run")
    store.open({"name": "run", "identity": {"suites": {"s": 1}}})
    with pytest.raises(QfidError, match="a record must be an EvalRecord; got dict"):
        store.append([record("s", "s-1", True).to_dict()])


@pytest.mark.parametrize("change, message", [
    (lambda t: t.append_column("correct_normalised", pa.array([True])), "unknown field 'correct_normalised' (did you mean 'correct_norm'?)"),
    (lambda t: t.drop_columns(["topk_ids"]), "missing field 'topk_ids'"),
    (lambda t: t.set_column(t.schema.get_field_index("expert_k"), "expert_k", pa.array([2.5])), "field 'expert_k' holds double, not int32"),
])
def test_a_records_file_with_a_field_more_or_less_fails_with_one_line(tmp_path, change, message):
    path = write_run(tmp_path, "run", [record("s", "s-1", True)])
    file = path / "records.parquet"
    pq.write_table(change(pq.read_table(file)), file)
    with pytest.raises(QfidError) as exc:
        RunStore(tmp_path, "run").records()
    assert _one_line(exc) == f"records file {file}: {message}"
    with pytest.raises(QfidError, match="no_such_field"):
        RunStore(tmp_path, "run").records(columns=["id", "no_such_field"])


def test_a_new_run_records_its_format_and_reads_back_the_records_it_was_given(tmp_path):
    given = [record("s", "s-1", True, topk_ids=[[1, 2]], topk_logprobs=[[-0.5, -1.5]], expert_ids=[[1, 0]], expert_k=1),
             record("s", "s-2", None, scorer="perplexity", answer_logprob=-3.0, answer_tokens=4)]
    path = write_run(tmp_path, "run", given)
    assert json.loads((path / "manifest.json").read_text())["record_format"] == RECORD_FORMAT == 2
    assert _records(RunStore(tmp_path, "run").records()) == given


def _python(value):
    """A DataFrame cell as the record holds it: nested arrays as lists, NaN (a null number) as None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_python(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _records(frame) -> list[EvalRecord]:
    return [EvalRecord.from_dict({k: _python(v) for k, v in row.items()}) for row in frame.to_dict("records")]


def test_format_1_runs_still_load():
    llama = load_run(V1_RUNS / "tiny-llama")
    assert RunStore(V1_RUNS, "tiny-llama").record_format() == 1
    assert list(llama.records.columns) == list(FIELD_NAMES) and len(llama.records) == 6
    assert sorted(llama.records.suite.unique()) == ["finance", "general-ppl", "legal"]
    assert llama.records.expert_ids.isna().all() and llama.records.topk_ids.notna().sum() == 4
    moe = load_run(V1_RUNS / "tiny-mixtral").records
    assert (moe.expert_k == 2).all() and moe.expert_ids.map(len).gt(0).all()


def _rewritten(runs_dir: Path, name: str) -> Path:
    """The v1 run's records written again as EvalRecords by today's store (format 2)."""
    old = load_run(V1_RUNS / name)
    records = _records(old.records)
    store = RunStore(runs_dir, f"{name}-v2")
    store.open({**old.manifest, "name": f"{name}-v2"})
    store.append(records)
    store.finish(old.manifest["results"], "2026-12-07T00:00:00+00:00")
    return store.path


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mixtral"])
def test_a_format_1_run_compares_against_a_format_2_run(tmp_path, name):
    new = _rewritten(tmp_path, name)
    assert RunStore(tmp_path, new.name).record_format() == 2
    comparison = compare_runs(V1_RUNS / name, new, tmp_path, n_boot=100)
    legal = comparison.group("suite", "legal")
    assert legal.n == 2 and legal.delta == 0 and legal.correct_to_wrong == legal.wrong_to_correct == 0
    assert legal.mean_kl == pytest.approx(0.0, abs=1e-6) and legal.kl_tokens > 0
    if name == "tiny-mixtral":
        assert comparison.routing_group("overall", "all").agreement == 1.0
    else:
        assert comparison.group("suite", "finance").n == 2
        assert [p.change for p in comparison.perplexity] == [pytest.approx(0.0)]


def test_qfid_compare_takes_a_format_1_baseline(tmp_path, capsys, monkeypatch):
    new = _rewritten(tmp_path, "tiny-llama")
    result = run_cli(["compare", V1_RUNS / "tiny-llama", new, "--runs-dir", tmp_path, "--format", "json"], capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    assert json.loads(result.out)["baseline"]["name"] == "tiny-llama"


def test_resuming_a_format_1_run_rewrites_it_in_todays_format(tmp_path):
    shutil.copytree(V1_RUNS / "tiny-llama", tmp_path / "old")
    before = RunStore(tmp_path, "old").records()
    store = RunStore(tmp_path, "old")
    store.open(store.manifest())
    assert store.record_format() == 2 and not list(store.parts.glob("*.parquet"))
    assert pq.read_schema(store.records_file).equals(record_schema())
    store.append([record("extra", "extra-1", True)])
    after = _records(store.records())
    assert after[:-1] == _records(before) and after[-1] == record("extra", "extra-1", True)
