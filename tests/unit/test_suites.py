"""The built-in suites are right and reproducible, and the loader fails loudly and usefully.

Finance answers are recomputed here from each item's inputs with formulas written
independently of the generator; every generator is rerun to a temp dir and must give the
committed bytes.
"""
from __future__ import annotations

import collections
import json
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from qfid.errors import QfidError
from qfid.evals.itemgen import write_jsonl
from qfid.evals.numbers import parse_number
from qfid.evals.render import choice_continuations, render_chat, render_plain
from qfid.evals.suite import builtin_suite_names, load_suite, load_suites
from qfid.paths import bundled_dir

SUITES = bundled_dir("evalsuites")
GENERATED = ["finance", "legal", "multilingual", "general"]


def _generator(name: str):
    spec = importlib.util.spec_from_file_location(f"qfid_suite_gen_{name}", SUITES / name / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", GENERATED)
def test_generator_is_deterministic_and_matches_committed_items(name, tmp_path):
    module = _generator(name)
    write_jsonl(module.build(module.SEED), tmp_path / "items.jsonl")
    assert (tmp_path / "items.jsonl").read_bytes() == (SUITES / name / "items.jsonl").read_bytes()
    write_jsonl(module.build(module.SEED + 1), tmp_path / "other.jsonl")
    assert (tmp_path / "other.jsonl").read_bytes() != (tmp_path / "items.jsonl").read_bytes()


def test_every_builtin_suite_loads_and_renders():
    names = builtin_suite_names()
    assert set(names) >= {"finance", "finance-mc", "legal", "legal-short", "multilingual", "multilingual-mc", "general", "general-ppl"}
    for suite in load_suites(names):
        item = suite.items[0]
        assert render_plain(suite, item).strip()
        assert render_chat(suite, item)[-1]["role"] == "user"
        if suite.scorer.type == "choice":
            assert all(c.startswith(" ") for c in choice_continuations(suite, item))


def test_minimum_sizes_categories_tiers_and_languages():
    finance, legal, multilingual, general = (load_suite(n) for n in GENERATED)
    assert len(finance.items) >= 600 and len(finance.categories) >= 8
    assert {i.difficulty for i in finance.items} == {1, 2, 3}
    assert len(legal.items) >= 400 and len(legal.categories) >= 6
    assert all(item.choices for item in legal.items)
    per_language = collections.Counter(item.lang for item in multilingual.items)
    assert len(per_language) >= 8 and min(per_language.values()) >= 100
    assert {"zh", "ja", "ar", "hi", "ru", "sw"} <= set(per_language)
    assert 180 <= len(general.items) <= 250
    assert len(load_suite("general-ppl").items) >= 10


def test_multilingual_items_are_parallel_across_languages():
    suite = load_suite("multilingual")
    groups = collections.defaultdict(list)
    for item in suite.items:
        groups[item.base_id].append(item)
    languages = set(suite.languages)
    for base, items in groups.items():
        assert {i.lang for i in items} == languages, base
        assert len({(i.answer, i.choices, i.label, i.category) for i in items}) == 1, base
        for item in items:
            for value in item.fields["inputs"].values():
                assert re.search(rf"(?<!\d){value}(?!\d)", item.fields["question"]), f"{item.id} does not show {value}"


def test_multiple_choice_labels_point_at_the_answer():
    for name in ("finance", "legal", "multilingual", "general"):
        for item in load_suite(name).items:
            gold = item.choices[item.label]
            if name in ("finance", "multilingual"):
                assert parse_number(gold) == pytest.approx(item.answer, abs=1e-6), item.id
            else:
                assert gold == item.answer, item.id


# Independent finance formulas, keyed by the `op` each item records.
def _npv(rate_pct, cash_flows):
    return sum(c / (1 + rate_pct / 100) ** t for t, c in enumerate(cash_flows))


def _annuity(principal, rate_pct, years):
    i, n = rate_pct / 1200, years * 12
    return principal * i * (1 + i) ** n / ((1 + i) ** n - 1)


def _chain(x):
    value = x["price"]
    for d in x["discounts_pct"]:
        value -= value * d / 100
    return (value - x["coupon"]) * (100 + x["tax_pct"]) / 100


def _balance(x):
    i, k = x["rate_pct"] / 1200, x["payments_made"]
    payment = _annuity(x["principal"], x["rate_pct"], x["years"])
    balance = x["principal"]
    for _ in range(k):
        balance = balance * (1 + i) - payment
    return balance


FINANCE = {
    "pct_change": lambda x: (x["new"] / x["old"] - 1) * 100,
    "chained_pct": lambda x: (__import__("math").prod(1 + c / 100 for c in x["changes_pct"]) - 1) * 100,
    "simple_interest": lambda x: x["principal"] * x["rate_pct"] * x["years"] / 100,
    "simple_interest_months": lambda x: x["principal"] * x["rate_pct"] / 100 * x["months"] / 12,
    "simple_amount_days": lambda x: x["principal"] + x["principal"] * x["rate_pct"] / 100 * x["days"] / 365,
    "compound": lambda x: x["principal"] * (1 + x["rate_pct"] / 100 / x["periods_per_year"]) ** (x["periods_per_year"] * x["years"]),
    "compound_present_value": lambda x: x["future_value"] * (1 + x["rate_pct"] / 100 / x["periods_per_year"]) ** -(x["periods_per_year"] * x["years"]),
    "loan_payment": lambda x: _annuity(x["principal"], x["rate_pct"], x["years"]),
    "loan_total_interest": lambda x: _annuity(x["principal"], x["rate_pct"], x["years"]) * x["years"] * 12 - x["principal"],
    "loan_balance": _balance,
    "npv": lambda x: _npv(x["rate_pct"], x["cash_flows"]),
    "convert": lambda x: x["amount"] * x["rate"],
    "convert_fee": lambda x: (x["amount"] - x["amount"] * x["fee_pct"] / 100) * x["rate"],
    "convert_cross": lambda x: x["amount"] * x["rate_1"] * x["rate_2"],
    "price_chain": _chain,
    "current_ratio": lambda x: x["table"]["Current assets"] / x["table"]["Current liabilities"],
    "net_margin_pct": lambda x: 100 * x["table"]["Net income"] / x["table"]["Revenue"],
    "debt_to_equity": lambda x: (x["table"]["Short-term debt"] + x["table"]["Long-term debt"]) / (x["table"]["Total assets"] - x["table"]["Total liabilities"]),
    "sum": lambda x: sum(x["amounts"]),
    "revenue_minus_costs": lambda x: x["revenue"] - sum(x["costs"]),
    "per_share": lambda x: x["total"] / x["shares"],
}


def test_every_finance_answer_recomputes_from_its_inputs():
    checked = collections.Counter()
    for item in load_suite("finance").items:
        inputs = item.fields["inputs"]
        expected = FINANCE[inputs["op"]](inputs)
        places = 0 if inputs["op"] == "convert_cross" else 2
        assert abs(item.answer - expected) <= 0.5 * 10 ** -places + 1e-6 * abs(expected), (item.id, item.answer, expected)
        checked[inputs["op"]] += 1
    assert len(checked) == len(FINANCE)


def test_finance_questions_show_their_inputs_in_report_formats():
    for item in load_suite("finance").items:
        question, inputs = item.fields["question"], item.fields["inputs"]
        for key in ("principal", "amount", "price", "future_value"):
            if key in inputs and inputs["op"] != "convert_cross":
                assert f"${inputs[key]:,.2f}" in question, (item.id, key)
        if "rate_pct" in inputs:
            assert f"{inputs['rate_pct']:g}%" in question, item.id


# The loader: errors name the file, the line and the field.
def _write_suite(folder: Path, yaml_text: str, items: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(items if items is not None else [
        {"id": "q-1", "category": "c", "lang": "en", "fields": {"question": "2+2?"}, "answer": 4}], folder / "items.jsonl")
    (folder / "suite.yaml").write_text(yaml_text, encoding="utf-8")
    return folder / "suite.yaml"


GOOD = "name: mine\nprompt:\n  plain: \"Q: {question}\\nA:\"\nscorer:\n  type: numeric\n  rel_tol: 0.01\nitems: items.jsonl\n"


def test_user_suite_loads_from_a_path(tmp_path):
    suite = load_suite(_write_suite(tmp_path / "s", GOOD))
    assert suite.name == "mine" and suite.items[0].answer == 4
    assert render_plain(suite, suite.items[0]) == "Q: 2+2?\nA:"


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    path = _write_suite(tmp_path / "s", GOOD.replace("  rel_tol", "  rel_tl"))
    with pytest.raises(QfidError, match=r"suite\.yaml:6: scorer\.rel_tl: unknown key.*did you mean 'rel_tol'"):
        load_suite(path)


def test_unknown_scorer_type_is_suggested(tmp_path):
    path = _write_suite(tmp_path / "s", GOOD.replace("type: numeric", "type: numerc"))
    with pytest.raises(QfidError, match=r":5: scorer\.type: unknown scorer 'numerc'.*did you mean 'numeric'"):
        load_suite(path)


def test_bad_item_names_line_and_field(tmp_path):
    items = [{"id": "q-1", "category": "c", "lang": "en", "fields": {"question": "x"}, "answer": 1},
             {"id": "q-2", "category": "c", "lang": "english", "fields": {"question": "y"}, "answer": 2}]
    with pytest.raises(QfidError, match=r"items\.jsonl:2: lang: must be a language code"):
        load_suite(_write_suite(tmp_path / "s", GOOD, items))


def test_item_missing_a_template_field_is_reported(tmp_path):
    items = [{"id": "q-1", "category": "c", "lang": "en", "fields": {"prompt": "x"}, "answer": 1}]
    with pytest.raises(QfidError, match=r"item q-1: misses field\(s\) question"):
        load_suite(_write_suite(tmp_path / "s", GOOD, items))


def test_duplicate_ids_and_bad_json_are_reported(tmp_path):
    row = {"id": "q-1", "category": "c", "lang": "en", "fields": {"question": "x"}, "answer": 1}
    with pytest.raises(QfidError, match=r"items\.jsonl:2: id: duplicate id 'q-1' \(first on line 1\)"):
        load_suite(_write_suite(tmp_path / "a", GOOD, [row, row]))
    path = _write_suite(tmp_path / "b", GOOD)
    (tmp_path / "b" / "items.jsonl").write_text('{"id": "q-1",\n', encoding="utf-8")
    with pytest.raises(QfidError, match=r"items\.jsonl:1: not valid JSON"):
        load_suite(path)


def test_choice_scorer_needs_choices_and_a_valid_label(tmp_path):
    choice = GOOD.replace("type: numeric\n  rel_tol: 0.01", "type: choice")
    with pytest.raises(QfidError, match=r"needs choices and label"):
        load_suite(_write_suite(tmp_path / "a", choice))
    bad_label = [{"id": "q-1", "category": "c", "lang": "en", "fields": {"question": "x"}, "answer": "a", "choices": ["a", "b"], "label": 2}]
    with pytest.raises(QfidError, match=r"items\.jsonl:1: label: must index the 2 choices"):
        load_suite(_write_suite(tmp_path / "b", choice, bad_label))


def test_numeric_scorer_rejects_non_numeric_answers(tmp_path):
    items = [{"id": "q-1", "category": "c", "lang": "en", "fields": {"question": "x"}, "answer": "four"}]
    with pytest.raises(QfidError, match=r"numeric scorer needs a numeric answer"):
        load_suite(_write_suite(tmp_path / "s", GOOD, items))


def test_unknown_suite_name_suggests_the_close_one():
    with pytest.raises(QfidError, match=r"unknown suite 'finanse' \(did you mean 'finance'\?\)"):
        load_suite("finanse")


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(QfidError, match=r"suite\.yaml:\d+: not valid YAML"):
        load_suite(_write_suite(tmp_path / "s", "name: x\nprompt: [unclosed\n"))


def test_load_suites_splits_and_dedupes():
    assert [s.name for s in load_suites("general, general,general-ppl")] == ["general", "general-ppl"]
    with pytest.raises(QfidError, match="no suite given"):
        load_suites(" , ")


# The CLI and the lm-eval export.
def _qfid(*args: str):
    from typer.testing import CliRunner

    from qfid.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_suites_command_lists_every_builtin_suite():
    result = _qfid("suites")
    assert result.exit_code == 0, result.output
    for name in builtin_suite_names():
        assert name in result.output
    assert "1280" in result.output


def test_suites_show_renders_prompts_and_the_scorer():
    result = _qfid("suites", "show", "legal", "-n", "2")
    assert result.exit_code == 0, result.output
    assert "choice" in result.output and "leg-0001" in result.output and "gold:" in result.output


def test_export_lm_eval_writes_tasks_that_match_qfid(tmp_path):
    import yaml

    from qfid.evals.lm_eval_scoring import process_results

    result = _qfid("suites", "export", "--format", "lm-eval", "-o", str(tmp_path), "--suite", "finance,legal,general-ppl")
    assert result.exit_code == 0, result.output
    loader = type("L", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda l, node: ("function", l.construct_scalar(node)))
    mc = yaml.load((tmp_path / "qfid_legal.yaml").read_text(), Loader=loader)
    assert mc["output_type"] == "multiple_choice" and mc["doc_to_choice"] == "choices" and mc["doc_to_target"] == "label"
    gen = yaml.load((tmp_path / "qfid_finance.yaml").read_text(), Loader=loader)
    assert gen["output_type"] == "generate_until" and gen["generation_kwargs"]["until"] == ["\n\n", "\nQuestion:"]
    assert gen["process_results"] == ("function", "qfid_lm_eval_scoring.process_results")
    assert yaml.load((tmp_path / "qfid_general_ppl.yaml").read_text(), Loader=loader)["output_type"] == "loglikelihood_rolling"
    assert (tmp_path / "qfid_lm_eval_scoring.py").is_file()

    suite = load_suite("legal")
    rows = [json.loads(line) for line in (tmp_path / "qfid_legal.jsonl").read_text().splitlines()]
    assert len(rows) == len(suite.items)
    assert rows[0]["prompt"] == render_plain(suite, suite.items[0])
    assert [" " + c for c in rows[0]["choices"]] == choice_continuations(suite, suite.items[0])
    finance = [json.loads(line) for line in (tmp_path / "qfid_finance.jsonl").read_text().splitlines()]
    answer = load_suite("finance").items[0].answer
    assert process_results(finance[0], [f" The answer is {answer}%."]) == {"acc": 1.0}
    assert process_results(finance[0], [" 1.0"]) == {"acc": 0.0}


def test_export_rejects_unknown_format(tmp_path):
    result = _qfid("suites", "export", "--format", "helm", "-o", str(tmp_path))
    assert isinstance(result.exception, QfidError) and "unknown export format 'helm'" in str(result.exception)
