"""`+keep:auto`'s bisection, judged by the real gate on hand-built runs: a candidate keeping N
units breaks `broken(N)` finance items (correct -> wrong); the gate (McNemar + CI + the
5-point limit) decides pass or fail, and the search finds the smallest passing N, checks
N - 1 (the bisection's last failing bound), and says when nothing or the base passes."""
from __future__ import annotations

from qfid.evals.gate import evaluate_gate
from qfid.evals.gate_config import GateConfig
from qfid.evals.report import compare_many
from qfid.sweep.keep_search import search_keep
from tests.unit.test_compare import record, write_run

ITEMS = 200


def _gate_judge(tmp_path, broken):
    """passes(N) from a run written for N against one baseline run."""
    write_run(tmp_path, "base", [record("finance", f"finance-x-en-{i}", True, "x") for i in range(ITEMS)])

    def passes(n: int) -> bool:
        wrong = broken(n)
        write_run(tmp_path, f"keep{n}", [record("finance", f"finance-x-en-{i}", i >= wrong, "x") for i in range(ITEMS)])
        (comparison,) = compare_many("base", [f"keep{n}"], tmp_path)
        return evaluate_gate(comparison, GateConfig(max_flip_rate=1.0)).passed

    return passes


def test_bisection_finds_the_smallest_passing_n_with_few_evaluations(tmp_path):
    # 40 items broken at N=0, 4 fewer per kept unit: 5 points (10 items) or fewer pass at N >= 8
    passes = _gate_judge(tmp_path, lambda n: max(0, 40 - 4 * n))
    result = search_keep(passes, 16)
    assert result.n == 8 and result.n_minus_1_passes is False
    assert len(result.evaluated) <= 7 and set(result.evaluated) >= {16, 0, 7, 8}
    assert result.summary() == "N = 8 passes and N - 1 = 7 fails"


def test_the_pick_comes_with_its_n_minus_1_verdict_from_the_bisection():
    truth = {0: False, 1: False, 2: True, 3: True, 4: False, 5: True, 6: True, 7: True, 8: True}
    result = search_keep(lambda n: truth[n], 8)
    assert result.n == 5 and result.evaluated == {8: True, 0: False, 4: False, 6: True, 5: True}
    assert result.n_minus_1_passes is False


def test_nothing_passes_and_base_passes():
    assert search_keep(lambda n: False, 6).n is None
    assert search_keep(lambda n: False, 6).summary() == "no N up to 6 passes the gate"
    base_ok = search_keep(lambda n: True, 6)
    assert base_ok.n == 0 and base_ok.evaluated == {6: True, 0: True}
