"""Expert-routing agreement in `compare` on hand-built MoE runs written with RunStore: the
per-layer and per-suite shares against hand-computed values (k = 2, so the order of a
token's experts must not matter), items that do not line up, one-sided routing, and the
tables and plot of the JSON, Markdown, HTML and terminal outputs."""
from __future__ import annotations

import json

import pytest

from qfid.evals.compare import compare_runs
from qfid.evals.report import compare_many, write_report
from qfid.evals.routing import item_agreement
from tests.cli_helpers import run_cli
from tests.unit.test_compare import record, write_run

# (suite, id) -> (baseline, candidate) routing: per layer, k = 2 expert ids a token, token after token
ROUTING = {
    # layer 0: {0,1}={1,0} yes, {2,3}={2,3} yes, {1,0}!={1,2} no -> 2/3
    # layer 1: {3,2}={2,3} yes, {0,1}={1,0} yes, {2,3}!={3,1} no -> 2/3
    ("a", "a-1"): ([[0, 1, 2, 3, 1, 0], [3, 2, 0, 1, 2, 3]], [[1, 0, 2, 3, 1, 2], [2, 3, 1, 0, 3, 1]]),
    # layer 0: {0,1}!={0,3} no, {0,2}={2,0} yes -> 1/2;  layer 1: {1,2}={2,1}, {1,3}={1,3} -> 2/2
    ("a", "a-2"): ([[0, 1, 0, 2], [1, 2, 1, 3]], [[0, 3, 2, 0], [2, 1, 1, 3]]),
    # layer 0: {0,1}!={2,3} -> 0/1;  layer 1: {2,3}={3,2} -> 1/1
    ("b", "b-1"): ([[0, 1], [2, 3]], [[2, 3], [3, 2]]),
}


def _routed_runs(runs_dir, cand_routing=ROUTING, base_k=2, cand_k=2):
    for name, side, k in (("base", 0, base_k), ("cand", 1, cand_k)):
        routing = ROUTING if side == 0 else cand_routing
        write_run(runs_dir, name, [record(suite, item_id, True, expert_ids=ids[side], expert_k=k)
                                   for (suite, item_id), ids in routing.items()])


def test_agreement_per_layer_and_suite_equals_the_hand_count(tmp_path):
    _routed_runs(tmp_path)
    comparison = compare_runs("base", "cand", tmp_path, n_boot=20)
    overall, a, b = (comparison.routing_group(*key) for key in (("overall", "all"), ("suite", "a"), ("suite", "b")))
    assert (overall.items, overall.tokens) == (3, 6) and (a.items, a.tokens) == (2, 5) and (b.items, b.tokens) == (1, 1)
    assert a.per_layer == pytest.approx([3 / 5, 4 / 5]) and a.agreement == pytest.approx(7 / 10)
    assert b.per_layer == pytest.approx([0.0, 1.0]) and b.agreement == pytest.approx(1 / 2)
    assert overall.per_layer == pytest.approx([3 / 6, 5 / 6]) and overall.agreement == pytest.approx(8 / 12)
    assert [(r.level, r.name) for r in comparison.routing] == [("overall", "all"), ("suite", "a"), ("suite", "b")]
    assert any(note.startswith("expert-routing agreement:") for note in comparison.notes)


def test_a_run_against_itself_agrees_everywhere(tmp_path):
    _routed_runs(tmp_path, cand_routing={key: (ids[0], ids[0]) for key, ids in ROUTING.items()})
    assert all(r.per_layer == [1.0, 1.0] and r.agreement == 1.0 for r in compare_runs("base", "cand", tmp_path, n_boot=20).routing)


def test_sets_are_compared_token_by_token_not_over_the_whole_row():
    """Both rows hold the same ids overall, but token 0 is {0,1} vs {0,2}: nothing agrees."""
    agree, tokens = item_agreement([[0, 1, 2, 3]], 2, [[0, 2, 1, 3]], 2)
    assert tokens == 2 and agree.tolist() == [0]


def test_items_that_do_not_line_up_are_left_out_and_counted(tmp_path):
    shorter = {**ROUTING, ("a", "a-2"): (ROUTING[("a", "a-2")][0], [[0, 1], [1, 2]])}  # one token instead of two
    _routed_runs(tmp_path, cand_routing=shorter)
    comparison = compare_runs("base", "cand", tmp_path, n_boot=20)
    assert comparison.routing_group("suite", "a").per_layer == pytest.approx([2 / 3, 2 / 3])
    assert comparison.routing_group("overall", "all").items == 2
    assert any("1 of 3 scored items have no routing that lines up" in note for note in comparison.notes)
    assert item_agreement([[0, 1, 2, 3]], 2, [[0, 1, 2, 3]], 1) is None  # another k
    assert item_agreement([[0, 1]], 2, [[0, 1], [0, 1]], 2) is None  # another layer count


def test_routing_in_one_run_only_is_not_compared_and_says_why(tmp_path):
    write_run(tmp_path, "base", [record(s, i, True, expert_ids=ids[0], expert_k=2) for (s, i), ids in ROUTING.items()])
    write_run(tmp_path, "dense", [record(s, i, True) for s, i in ROUTING])
    comparison = compare_runs("base", "dense", tmp_path, n_boot=20)
    assert comparison.routing == []
    assert any(note.startswith("expert routing: only run base recorded it") for note in comparison.notes)
    dense = compare_runs("dense", "dense", tmp_path, n_boot=20)
    assert dense.routing == [] and not any("rout" in note for note in dense.notes)


def test_json_markdown_html_and_plot_show_the_routing_table(tmp_path):
    _routed_runs(tmp_path / "runs")
    comparison = compare_many("base", ["cand"], tmp_path / "runs")[0]
    data = json.loads(json.dumps(comparison.to_dict()))
    assert data["routing"][0] == {"level": "overall", "name": "all", "items": 3, "tokens": 6,
                                  "agreement": pytest.approx(8 / 12), "per_layer": [0.5, pytest.approx(5 / 6)]}
    paths = write_report([comparison], tmp_path / "out" / "r.html")
    markdown, html = paths["md"].read_text(), paths["html"].read_text()
    assert "### Expert-routing agreement" in markdown
    assert "| MoE layer | all | a | b |" in markdown and "| all layers | 66.67% | 70.00% | 50.00% |" in markdown
    assert "| 0 | 50.00% | 60.00% | 0.00% |" in markdown and "| 1 | 83.33% | 80.00% | 100.00% |" in markdown
    assert "<h3>Expert-routing agreement</h3>" in html and "<td>66.67%</td>" in html
    assert (paths["plots"] / "routing_by_layer.png").is_file() and 'id="plot-routing_by_layer"' in html


def test_cli_compare_prints_the_routing_table(tmp_path, capsys, monkeypatch):
    _routed_runs(tmp_path)
    result = run_cli(["compare", "base", "cand", "--runs-dir", tmp_path], capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    assert "expert-routing agreement" in result.out and "66.67%" in result.out and "83.33%" in result.out
    md = run_cli(["compare", "base", "cand", "--format", "md", "--runs-dir", tmp_path], capsys, monkeypatch)
    assert "| all layers | 66.67% | 70.00% | 50.00% |" in md.out
