"""The sweep's size/fidelity front and its overall pick, on hand-built runs."""
from __future__ import annotations

from qfid.evals.report import compare_many
from qfid.evals.verdict import ship_verdict
from qfid.sweep.pareto import fidelity, pareto_front
from tests.unit.test_compare import paired_runs, record, write_run


def test_front_keeps_the_points_no_other_point_beats_on_both_axes():
    points = [("a", 10, 5.0), ("b", 20, 1.0), ("c", 30, 1.0), ("d", 15, 6.0), ("e", 5, 9.0)]
    assert pareto_front(points) == ["a", "b", "e"]   # c: b is smaller and as good; d: a beats it on both


def test_fidelity_takes_the_worst_domain_group_of_enough_items_and_ignores_the_control(tmp_path):
    base = {("finance", "npv", "en"): [1] * 40, ("finance", "tax", "en"): [1] * 5, ("general", "science", "en"): [1] * 40}
    cand = {("finance", "npv", "en"): [0] * 4 + [1] * 36, ("finance", "tax", "en"): [0] * 5, ("general", "science", "en"): [0] * 40}
    paired_runs(tmp_path, base, cand)
    (comparison,) = compare_many("base", ["cand"], tmp_path)
    f = fidelity(comparison, 10.0)
    # tax (5 items, -100 pts) is below the item floor; general is the control; finance/npv -10 pts is
    # beaten by the finance suite total (-9 of 45 = -20 pts)
    assert f.worst_group == "suite finance" and round(f.worst_delta_pts, 1) == -20.0


def test_overall_pick_is_the_smallest_scheme_that_breaks_nothing(tmp_path):
    write_run(tmp_path, "bf16", [record("finance", f"finance-x-en-{i}", True, "x") for i in range(100)])
    write_run(tmp_path, "small", [record("finance", f"finance-x-en-{i}", i >= 30, "x") for i in range(100)])
    write_run(tmp_path, "mid", [record("finance", f"finance-x-en-{i}", i >= 1, "x") for i in range(100)])
    write_run(tmp_path, "big", [record("finance", f"finance-x-en-{i}", True, "x") for i in range(100)])
    comparisons = compare_many("bf16", ["small", "mid", "big"], tmp_path)
    verdict = ship_verdict(comparisons, {"small": 10.0, "mid": 20.0, "big": 30.0}, baseline="bf16")
    assert verdict["overall"]["scheme"] == "mid" and verdict["overall"]["passes"]
    assert list(verdict["overall"]["broken"]) == ["small"]
    nothing = ship_verdict(comparisons[:1], {"small": 10.0}, baseline="bf16")["overall"]
    assert nothing == {**nothing, "scheme": "bf16", "passes": False} and nothing["broken"]["small"]
