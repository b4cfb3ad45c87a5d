"""The demo's closing verdict is computed from the runs: a planted domain regression makes the
smaller scheme lose that suite (and only that suite), and the control check notices that the
general control did not move."""
from __future__ import annotations

from qfid.evals.verdict import ship_verdict
from qfid.evals.report import compare_many
from tests.unit.test_compare import paired_runs, write_run, record


def _layout(finance_ok: list[int]) -> dict:
    return {("finance-mc", "npv", "en"): finance_ok, ("general", "science", "en"): [1] * 60 + [0] * 40}


def test_verdict_rejects_the_scheme_with_a_planted_regression(tmp_path):
    base = [1] * 80 + [0] * 20
    broken = [0] * 30 + [1] * 50 + [0] * 20          # 30 items correct -> wrong
    paired_runs(tmp_path, _layout(base), _layout(broken), names=("fp32", "small"))
    write_run(tmp_path, "big", [record(suite, f"{suite}-{cat}-{lang}-{i}", bool(ok), cat, lang)
                                for (suite, cat, lang), col in _layout(base).items() for i, ok in enumerate(col)])
    comparisons = compare_many("fp32", ["small", "big"], tmp_path)
    verdict = ship_verdict(comparisons, {"small": 10.0, "big": 20.0})
    assert verdict["ship"]["finance-mc"]["scheme"] == "big"
    assert "small" in verdict["ship"]["finance-mc"]["why"] and "rejected" in verdict["ship"]["finance-mc"]["why"]
    assert verdict["ship"]["general"]["scheme"] == "small"
    small = next(f for f in verdict["control"] if f["scheme"] == "small")
    assert small["general_delta_pts"] == 0 and small["worst_domain_suite"] == "finance-mc"
    assert small["worst_domain_significant"] and small["control_hides_domain_change"]
    big = next(f for f in verdict["control"] if f["scheme"] == "big")
    assert not big["control_hides_domain_change"]


def test_control_check_finds_a_category_regression_the_suite_total_hides(tmp_path):
    """12 NPV items go correct -> wrong while 12 rate items go wrong -> correct: the
    finance-mc total does not move, the NPV category regresses significantly (McNemar
    p = 2 * 0.5^12), and the unmoved general control would have hidden it."""
    general = [1] * 60 + [0] * 40
    base = {("finance-mc", "npv", "en"): [1] * 20, ("finance-mc", "rates", "en"): [0] * 12 + [1] * 8,
            ("general", "science", "en"): general}
    cand = {("finance-mc", "npv", "en"): [0] * 12 + [1] * 8, ("finance-mc", "rates", "en"): [1] * 20,
            ("general", "science", "en"): general}
    paired_runs(tmp_path, base, cand, names=("bf16", "small"))
    verdict = ship_verdict(compare_many("bf16", ["small"], tmp_path), {"small": 10.0})
    finding = verdict["control"][0]
    assert finding["worst_domain_delta_pts"] == 0 and not finding["worst_domain_significant"]
    assert [r["name"] for r in finding["domain_regressions"]] == ["finance-mc/npv"]
    assert finding["domain_regressions"][0]["mcnemar_p"] < 0.001
    assert finding["control_hides_domain_change"] and finding["sharpest_regression"] == "finance-mc/npv"
