"""`qfid gate` on hand-built runs: a planted regression fails with exit 1 and the right line,
an identical candidate passes, malformed thresholds exit 2, JUnit XML and the Markdown summary."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from qfid.errors import QfidError
from qfid.evals.compare import compare_runs
from qfid.evals.gate import evaluate_gate
from qfid.evals.gate_config import GateConfig, load_gate_config, parse_gate_table
from tests.cli_helpers import run_cli
from tests.unit.test_compare import paired_runs, record, write_run

CATEGORIES = ("negation_exceptions", "party_roles", "deadline_arithmetic")


def _layout(wrong_in_negation: int = 0) -> dict:
    layout = {("legal", c, "en"): [1] * 54 + [0] * 6 for c in CATEGORIES}
    layout[("finance", "npv", "en")] = [1] * 50 + [0] * 10
    if wrong_in_negation:
        layout[("legal", "negation_exceptions", "en")] = [0] * wrong_in_negation + [1] * (54 - wrong_in_negation) + [0] * 6
    return layout


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """base, a candidate with a planted regression in legal/negation_exceptions, an identical one."""
    monkeypatch.chdir(tmp_path)  # no qfid.toml / pyproject.toml here: built-in defaults
    paired_runs(tmp_path / "runs", _layout(), _layout(wrong_in_negation=20), names=("base", "int4"))
    paired_runs(tmp_path / "runs", _layout(), _layout(), names=("base", "same"))
    return tmp_path / "runs"


def _gate(args, capsys, monkeypatch):
    return run_cli(["gate", *args], capsys, monkeypatch)


def test_planted_category_regression_fails_with_exit_1_and_names_it(runs, capsys, monkeypatch):
    result = _gate(["base", "int4", "--runs-dir", runs], capsys, monkeypatch)
    assert result.exit_code == 1
    lines = [line for line in result.out.splitlines() if line.startswith("FAIL")]
    category_line = next(line for line in lines if "legal/negation_exceptions" in line)
    assert "category legal/negation_exceptions: accuracy drop 33.3 points" in category_line
    assert "> limit 5 points" in category_line and "n=60" in category_line
    assert not any(c in line for line in lines for c in ("party_roles", "deadline_arithmetic", "finance"))
    assert "gate failed for int4 vs base" in result.err and result.err.count("\n") == 1


def test_identical_candidate_passes(runs, capsys, monkeypatch):
    result = _gate(["base", "same", "--runs-dir", runs], capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    assert "PASS same vs base: 0 of" in result.out and "FAIL" not in result.out


def test_override_can_make_the_same_drop_pass(runs, capsys, monkeypatch, tmp_path):
    (tmp_path / "qfid.toml").write_text('[gate]\nmax_flip_rate = 0.5\n[gate.category]\nnegation_exceptions = 40.0\n'
                                        '[gate.suite]\nlegal = 15.0\n')
    result = _gate(["base", "int4", "--runs-dir", runs], capsys, monkeypatch)
    assert result.exit_code == 0, result.out + result.err


def test_junit_xml_lists_every_threshold_and_the_failures(runs, capsys, monkeypatch, tmp_path):
    junit, summary = tmp_path / "out" / "gate.xml", tmp_path / "out" / "summary.md"
    result = _gate(["base", "int4", "--runs-dir", runs, "--junit", junit, "--summary", summary], capsys, monkeypatch)
    assert result.exit_code == 1
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    # accuracy: 2 suites + 4 categories; flip rate and KL: 2 suites each
    assert len(cases) == 10 == int(root.get("tests"))
    failed = {(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None}
    assert failed == {("qfid.gate.category.accuracy_drop", "legal/negation_exceptions"), ("qfid.gate.suite.accuracy_drop", "legal")}
    assert int(root.get("failures")) == 2
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert {c.get("classname") for c in skipped} == {"qfid.gate.suite.mean_kl"}  # the runs stored no top-k
    text = summary.read_text()
    assert text.startswith("## qfid gate FAILED: int4 vs base") and "legal/negation_exceptions" in text


def test_insignificant_drop_over_the_limit_is_inconclusive_unless_significance_is_off(tmp_path):
    paired_runs(tmp_path, {("s", "c", "en"): [1] * 10}, {("s", "c", "en"): [0, 0] + [1] * 8})
    comparison = compare_runs("base", "cand", tmp_path, n_boot=300)
    lenient = evaluate_gate(comparison, GateConfig(max_flip_rate=1.0))
    assert lenient.passed and any("not significant" in w and "s/c" in w for w in lenient.warnings)
    strict = evaluate_gate(comparison, GateConfig(max_flip_rate=1.0, require_significance=False))
    assert {c.group for c in strict.failures} == {"s", "s/c"}


def test_flip_rate_kl_and_perplexity_limits(tmp_path):
    def items(flip: bool, shift: float):
        lp = [[-0.1, -2.5 - shift]]
        return [record("s", f"s-{i}", (i % 2 == 0) != (flip and i < 4), topk_ids=[[1, 2]], topk_logprobs=lp) for i in range(8)] + \
               [record("ppl", "ppl-0", None, scorer="perplexity", gold="", answer_logprob=-10.0 - shift, answer_tokens=5)]

    write_run(tmp_path, "base", items(False, 0.0))
    write_run(tmp_path, "cand", items(True, 1.0))
    comparison = compare_runs("base", "cand", tmp_path, n_boot=200)
    result = evaluate_gate(comparison, GateConfig(max_accuracy_drop=100, max_flip_rate=0.25, max_mean_kl=1e-4,
                                                  max_perplexity_increase=10.0))
    messages = {c.metric: c.message for c in result.failures}
    assert set(messages) == {"flip_rate", "mean_kl", "perplexity_increase"}
    assert messages["flip_rate"].startswith("suite s: flip rate 50.0% (correct->wrong 2, wrong->correct 2 of 8) > limit 25%")
    assert "perplexity +22.1%" in messages["perplexity_increase"]


def test_limit_lookup_prefers_the_most_specific_name():
    config = parse_gate_table({"max_accuracy_drop": 5, "category": {"*": 8, "negation": 4, "legal/negation": 2}, "lang": {"sw": 10}})
    assert config.accuracy_drop_limit("category", "legal/negation") == 2
    assert config.accuracy_drop_limit("category", "legal-short/negation") == 4
    assert config.accuracy_drop_limit("category", "legal/roles") == 8
    assert config.accuracy_drop_limit("lang", "multilingual/sw") == 10
    assert config.accuracy_drop_limit("suite", "legal") == 5


def test_unused_override_is_warned_about(tmp_path):
    paired_runs(tmp_path, {("s", "c", "en"): [1] * 4}, {("s", "c", "en"): [1] * 4})
    config = parse_gate_table({"category": {"s/typo": 1.0}})
    result = evaluate_gate(compare_runs("base", "cand", tmp_path, n_boot=100), config)
    assert result.passed and any("'s/typo' matches no category" in w for w in result.warnings)


@pytest.mark.parametrize("toml, message", [
    ("[gate]\nmax_acuracy_drop = 3\n", "unknown key 'max_acuracy_drop' (did you mean 'max_accuracy_drop'?)"),
    ("[gate]\nmax_flip_rate = \"high\"\n", "max_flip_rate must be a number (a fraction); got 'high'"),
    ("[gate]\nmax_flip_rate = 15\n", "max_flip_rate must be between 0 and 1"),
    ("[gate]\nrequire_significance = 1\n", "require_significance must be true or false"),
    ("[gate]\nalpha = true\n", "alpha must be a number"),
    ("[gate.category]\nnpv = \"3\"\n", "[gate].category 'npv' must be a number"),
    ("[gate]\ncategory = 3\n", "[gate].category must be a table"),
    ("[gate\nalpha = 0.1\n", "is not valid TOML"),
    ("[other]\nalpha = 0.1\n", "has no [gate] table"),
])
def test_malformed_thresholds_exit_2_with_a_clear_message(runs, capsys, monkeypatch, tmp_path, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = _gate(["base", "same", "--runs-dir", runs, "--config", config], capsys, monkeypatch)
    assert result.exit_code == 2
    assert message in result.err and result.err.startswith("error: ") and result.err.count("\n") == 1


def test_config_lookup_order(tmp_path):
    assert load_gate_config(cwd=tmp_path) == GateConfig()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n[tool.qfid.gate]\nmax_accuracy_drop = 3.0\n")
    assert load_gate_config(cwd=tmp_path).max_accuracy_drop == 3.0
    (tmp_path / "qfid.toml").write_text("[gate]\nmax_accuracy_drop = 2.0\n")
    assert load_gate_config(cwd=tmp_path).max_accuracy_drop == 2.0
    assert load_gate_config(tmp_path / "pyproject.toml").max_accuracy_drop == 3.0
    with pytest.raises(QfidError, match="does not exist"):
        load_gate_config(tmp_path / "missing.toml")


def test_repository_pyproject_gate_table_is_valid():
    from pathlib import Path

    config = load_gate_config(Path(__file__).resolve().parents[2] / "pyproject.toml")
    assert config.source.endswith("[tool.qfid.gate]") and 0 < config.alpha < 1


@pytest.mark.parametrize("args", [["base"], ["base", "same", "--bogus"], ["base", "nope"]])
def test_usage_and_data_errors_exit_2(runs, capsys, monkeypatch, args):
    assert _gate([*args, "--runs-dir", runs], capsys, monkeypatch).exit_code == 2
