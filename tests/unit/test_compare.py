"""`compare` on hand-built runs written with RunStore: pairing and refusals, flips, McNemar and
the bootstrap CI per group, choice margins, perplexity rows, KL from stored top-k, and the CLI.

`record` / `write_run` / `paired_runs` build runs for test_gate.py and test_report.py too.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from qfid.errors import QfidError
from qfid.evals.compare import compare_runs
from qfid.evals.record import FIELD_NAMES, EvalRecord
from qfid.evals.stats import topk_kl
from qfid.evals.store import RunStore
from tests.cli_helpers import run_cli


def record(suite: str, item_id: str, correct: bool | None, category: str = "general", lang: str = "en",
           scorer: str = "exact", gold: str = "42", **fields) -> EvalRecord:
    """A record with the fields a test names; the rest None (as a backend leaves what it lacks)."""
    return EvalRecord.from_dict({**dict.fromkeys(FIELD_NAMES), "suite": suite, "id": item_id, "base_id": item_id.rsplit("-", 1)[0],
                                 "category": category, "lang": lang, "difficulty": 1, "scorer": scorer, "prompt": f"Q {item_id}",
                                 "prediction": "x", "extracted": "x", "correct": correct, "gold": gold, **fields})


def write_run(runs_dir, name: str, records: list[dict], versions: dict | None = None, complete: bool = True):
    store = RunStore(runs_dir, name)
    suites = versions or {r.suite: 1 for r in records}
    store.open({"name": name, "identity": {"model": f"model-{name}", "suites": suites}, "model": {"backend": "test"}}, overwrite=True)
    store.append(records)
    if complete:
        store.finish({}, "2025-01-01T00:00:00+00:00")
    return store.path


def paired_runs(runs_dir, base_correct: dict, cand_correct: dict, names=("base", "cand")):
    """Two runs from {(suite, category, lang): [bool, ...]} maps with the same item layout."""
    for name, layout in zip(names, (base_correct, cand_correct)):
        write_run(runs_dir, name, [record(suite, f"{suite}-{category}-{lang}-{i}", bool(ok), category, lang)
                                   for (suite, category, lang), column in layout.items() for i, ok in enumerate(column)])


def test_flips_accuracy_and_mcnemar_per_group(tmp_path):
    base = {("finance", "npv", "en"): [1, 1, 1, 0, 0, 1, 0, 1], ("finance", "tax", "en"): [1, 1, 0, 0]}
    cand = {("finance", "npv", "en"): [1, 0, 0, 1, 0, 1, 0, 1], ("finance", "tax", "en"): [1, 1, 0, 1]}
    paired_runs(tmp_path, base, cand)
    result = compare_runs("base", "cand", tmp_path, n_boot=500)
    npv = result.group("category", "finance/npv")
    assert (npv.n, npv.correct_to_wrong, npv.wrong_to_correct) == (8, 2, 1)
    assert (npv.base_acc, npv.cand_acc, npv.delta, npv.flip_rate) == pytest.approx((5 / 8, 4 / 8, -1 / 8, 3 / 8))
    assert npv.mcnemar_p == pytest.approx(binomtest(1, 3, 0.5).pvalue)
    suite = result.group("suite", "finance")
    assert (suite.n, suite.correct_to_wrong, suite.wrong_to_correct) == (12, 2, 2) and suite.delta == 0
    assert result.group("overall", "all").n == 12
    assert result.rows("lang") == []  # one language: the suite row already says it
    assert npv.ci_low <= npv.delta <= npv.ci_high


def test_bootstrap_ci_of_a_group_matches_a_direct_resample(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.random(120) < 0.7
    cand = base.copy()
    cand[rng.choice(120, 25, replace=False)] ^= True
    paired_runs(tmp_path, {("s", "c", "en"): base.tolist()}, {("s", "c", "en"): cand.tolist()})
    group = compare_runs("base", "cand", tmp_path, n_boot=3000, seed=11).group("suite", "s")
    diff = cand.astype(float) - base.astype(float)
    means = diff[np.random.default_rng(11).integers(0, 120, size=(3000, 120))].mean(axis=1)
    assert (group.ci_low, group.ci_high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))


def test_languages_get_rows_within_multilingual_suites(tmp_path):
    layout = {("multi", "age", lang): [1] * 10 for lang in ("en", "ar", "zh")}
    dropped = {**layout, ("multi", "age", "ar"): [0] * 8 + [1] * 2}
    paired_runs(tmp_path, layout, dropped)
    result = compare_runs("base", "cand", tmp_path, n_boot=200)
    assert [g.name for g in result.rows("lang")] == ["multi/ar", "multi/en", "multi/zh"]
    assert result.group("lang", "multi/ar").delta == pytest.approx(-0.8)
    assert result.group("lang", "multi/en").delta == 0


def test_significant_regression_is_flagged_and_noise_is_not(tmp_path):
    base = {("s", "big", "en"): [1] * 100, ("s", "small", "en"): [1] * 100}
    cand = {("s", "big", "en"): [0] * 30 + [1] * 70, ("s", "small", "en"): [0] + [1] * 99}
    paired_runs(tmp_path, base, cand)
    result = compare_runs("base", "cand", tmp_path, n_boot=500)
    assert result.group("category", "s/big").significant_regression
    assert not result.group("category", "s/small").significant_regression
    assert result.group("category", "s/small").min_detectable_drop > 0.01


def test_mismatched_item_sets_are_refused_unless_intersect(tmp_path):
    write_run(tmp_path, "base", [record("s", f"s-{i}", True) for i in range(6)])
    write_run(tmp_path, "cand", [record("s", f"s-{i}", True) for i in range(2, 8)])
    with pytest.raises(QfidError) as refused:
        compare_runs("base", "cand", tmp_path)
    assert refused.value.exit_code == 2
    assert "2 s item(s) only in base (e.g. s-0, s-1)" in str(refused.value) and "--intersect" in str(refused.value)
    result = compare_runs("base", "cand", tmp_path, intersect=True, n_boot=100)
    assert result.group("suite", "s").n == 4
    assert any("--intersect" in note for note in result.notes)


def test_suite_version_mismatch_is_refused(tmp_path):
    items = [record("s", f"s-{i}", True) for i in range(4)]
    write_run(tmp_path, "base", items, versions={"s": 1})
    write_run(tmp_path, "cand", items, versions={"s": 2})
    with pytest.raises(QfidError, match="suite s is version 1 in base but 2 in cand"):
        compare_runs("base", "cand", tmp_path)


def test_same_id_with_another_gold_is_refused_even_with_intersect(tmp_path):
    write_run(tmp_path, "base", [record("s", "s-1", True, gold="10")])
    write_run(tmp_path, "cand", [record("s", "s-1", True, gold="11")])
    with pytest.raises(QfidError, match="share an id but not the gold answer"):
        compare_runs("base", "cand", tmp_path, intersect=True)


def test_unknown_run_lists_the_known_ones(tmp_path):
    write_run(tmp_path, "fp16", [record("s", "s-1", True)])
    with pytest.raises(QfidError, match="no eval run 'int4'.*fp16"):
        compare_runs("fp16", "int4", tmp_path)


def test_choice_margin_change(tmp_path):
    # gold is the choice whose log-prob equals answer_logprob; margin = gold - best wrong
    base = [record("mc", "mc-1", True, scorer="choice", choice_logprobs=[-1.0, -3.0, -2.0], answer_logprob=-1.0),
            record("mc", "mc-2", False, scorer="choice", choice_logprobs=[-1.0, -4.0, -2.5], answer_logprob=-2.5)]
    cand = [record("mc", "mc-1", True, scorer="choice", choice_logprobs=[-1.5, -3.0, -2.0], answer_logprob=-1.5),
            record("mc", "mc-2", False, scorer="choice", choice_logprobs=[-1.0, -4.0, -3.5], answer_logprob=-3.5)]
    write_run(tmp_path, "base", base)
    write_run(tmp_path, "cand", cand)
    group = compare_runs("base", "cand", tmp_path, n_boot=100).group("suite", "mc")
    # mc-1: 1.0 -> 0.5 ; mc-2: -1.5 -> -2.5
    assert group.margin_items == 2 and group.margin_delta == pytest.approx((-0.5 - 1.0) / 2)


def test_a_run_written_before_correct_norm_still_resumes_and_compares(tmp_path):
    import pyarrow.parquet as pq

    path = write_run(tmp_path, "old", [record("mc", "mc-1", True, scorer="choice")])
    old_file = path / "records.parquet"
    pq.write_table(pq.read_table(old_file).drop_columns(["correct_norm"]), old_file)  # the schema before the field
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["record_format"]  # ... written before record formats had numbers (format 1)
    (path / "manifest.json").write_text(json.dumps(manifest))
    store = RunStore(tmp_path, "old")
    store.open(store.manifest())  # resume it
    store.append([record("mc", "mc-2", False, scorer="choice", correct_norm=True)])
    assert store.records()["correct_norm"].tolist() == [None, True]
    assert store.records(columns=["id", "correct_norm"]).shape == (2, 2)
    store.finish({}, "2025-01-01T00:00:00+00:00")
    write_run(tmp_path, "new", [record("mc", f"mc-{i}", True, scorer="choice", correct_norm=True) for i in (1, 2)])
    assert compare_runs("old", "new", tmp_path, n_boot=100).group("suite", "mc").n == 2


def test_perplexity_rows(tmp_path):
    def texts(logprobs):
        return [record("ppl", f"ppl-{i}", None, category="text", scorer="perplexity", gold="", answer_logprob=lp, answer_tokens=10)
                for i, lp in enumerate(logprobs)]

    write_run(tmp_path, "base", texts([-20.0, -30.0]) + [record("s", "s-1", True)])
    write_run(tmp_path, "cand", texts([-22.0, -31.0]) + [record("s", "s-1", True)])
    result = compare_runs("base", "cand", tmp_path, n_boot=100)
    (row,) = result.perplexity
    assert (row.suite, row.n, row.base_tokens) == ("ppl", 2, 20)
    assert row.base_ppl == pytest.approx(math.exp(50 / 20)) and row.cand_ppl == pytest.approx(math.exp(53 / 20))
    assert row.change == pytest.approx(math.exp(3 / 20) - 1)
    assert result.group("overall", "all").n == 1  # texts are not scored items


def _topk(logits, k):
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[:, :k]
    return ids, np.take_along_axis(logp, ids, axis=-1)


def test_mean_kl_is_token_weighted_over_stored_topk(tmp_path):
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(n, 40)) * 2 for n in (3, 5)]
    base_recs, cand_recs, expected = [], [], []
    for i, item_logits in enumerate(logits):
        b_ids, b_lp = _topk(item_logits, 6)
        c_ids, c_lp = _topk(item_logits + rng.normal(size=item_logits.shape) * 0.3, 6)
        expected.append(topk_kl(b_ids, b_lp.astype(np.float32).astype(float), c_ids, c_lp.astype(np.float32).astype(float)))
        base_recs.append(record("s", f"s-{i}", True, topk_ids=b_ids.tolist(), topk_logprobs=b_lp.tolist(), answer_tokens=len(b_ids)))
        cand_recs.append(record("s", f"s-{i}", True, topk_ids=c_ids.tolist(), topk_logprobs=c_lp.tolist(), answer_tokens=len(c_ids)))
    cand_recs.append(record("s", "s-9", True, topk_ids=[[1, 2]], topk_logprobs=[[-0.1, -3.0]]))
    base_recs.append(record("s", "s-9", True, topk_ids=[[1, 2], [3, 4]], topk_logprobs=[[-0.1, -3.0], [-0.2, -2.0]]))
    write_run(tmp_path, "base", base_recs)
    write_run(tmp_path, "cand", cand_recs)
    result = compare_runs("base", "cand", tmp_path, n_boot=100)
    group = result.group("suite", "s")
    assert group.kl_tokens == 8
    assert group.mean_kl == pytest.approx(np.concatenate(expected).mean(), rel=1e-5)
    assert any("1 of 3 scored items have no comparable top-k" in note for note in result.notes)
    assert compare_runs("base", "base", tmp_path, n_boot=100).group("suite", "s").mean_kl == pytest.approx(0, abs=1e-9)


def test_comparison_is_plain_json(tmp_path):
    paired_runs(tmp_path, {("s", "c", "en"): [1, 0]}, {("s", "c", "en"): [1, 1]})
    data = compare_runs("base", "cand", tmp_path, n_boot=100).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["groups"][0]["name"] == "all"
    assert data["groups"][0]["mean_kl"] is None and data["baseline"]["name"] == "base"


def test_cli_compare_table_and_files(tmp_path, capsys, monkeypatch):
    base = {("legal", "negation", "en"): [1] * 40, ("legal", "roles", "en"): [1] * 40}
    cand = {("legal", "negation", "en"): [0] * 15 + [1] * 25, ("legal", "roles", "en"): [1] * 40}
    paired_runs(tmp_path / "runs", base, cand)
    table = run_cli(["compare", "base", "cand", "--by", "category", "--runs-dir", tmp_path / "runs"], capsys, monkeypatch)
    assert table.exit_code == 0, table.err
    assert "legal/negation" in table.out and "legal/roles" in table.out and "-37.5" in table.out
    out = tmp_path / "out"
    written = run_cli(["compare", "base", "cand", "--format", "md", "-o", out, "--runs-dir", tmp_path / "runs"], capsys, monkeypatch)
    assert written.exit_code == 0, written.err
    markdown = (out / "cand-vs-base.md").read_text()
    assert "| legal **(!)** |" in markdown
    assert json.loads((out / "cand-vs-base.json").read_text())["candidate"]["name"] == "cand"


def test_cli_compare_refuses_mismatch_with_exit_2_and_accepts_intersect(tmp_path, capsys, monkeypatch):
    write_run(tmp_path, "base", [record("s", f"s-{i}", True) for i in range(5)])
    write_run(tmp_path, "cand", [record("s", f"s-{i}", True) for i in range(4)])
    refused = run_cli(["compare", "base", "cand", "--runs-dir", tmp_path], capsys, monkeypatch)
    assert refused.exit_code == 2 and "only in base" in refused.err and refused.err.count("\n") == 1
    accepted = run_cli(["compare", "base", "cand", "--runs-dir", tmp_path, "--intersect", "--format", "json"], capsys, monkeypatch)
    assert accepted.exit_code == 0 and json.loads(accepted.out)["groups"][0]["n"] == 4
