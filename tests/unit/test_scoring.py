"""Hand-written edge cases for answer extraction: the scorer must never be the noisy part
of a quantization comparison."""
from __future__ import annotations

import pytest

from qfid.evals.cjk_numerals import cjk_to_number
from qfid.evals.items import Item
from qfid.evals.numbers import extract_number, numbers_match, parse_number
from qfid.evals.scoring import exact_match, extract_choice_letter, normalize_answer, score_choice, score_choice_norm, score_generation
from qfid.evals.suite import ScorerSpec


@pytest.mark.parametrize("text, expected", [
    ("$1,234.50", 1234.5),
    ("1.234,50 €", 1234.5),
    ("-3.5%", -3.5),
    ("approximately 12", 12),
    ("It is about 1'234.5 CHF", 1234.5),
    ("₹1,23,456", 123456),
    ("USD 1,000,000", 1_000_000),
    ("a loss of -$12.50", -12.5),
    ("net income was ($1,234)", -1234),
    ("$2.5 million", 2_500_000),
    ("3万", 30_000),
    ("0.75", 0.75),
    (".5", 0.5),
    ("The total is 42.", 42),
    ("1 234,5", 1234.5),
    ("1\u202f234\u202f567", 1_234_567),
    ("area 12 m²", 12),
    ("x=-7", -7),
])
def test_extracts_numbers_in_common_formats(text, expected):
    assert extract_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [
    ("الإجابة هي ١٢٣٤٫٥", 1234.5),        # Arabic-Indic digits, Arabic decimal separator
    ("الجواب: ١٬٢٣٤", 1234),               # Arabic thousands separator
    ("جواب: ۱۲۳", 123),                    # Eastern Arabic-Indic (Persian/Urdu)
    ("उत्तर: १२३४", 1234),                  # Devanagari
    ("答案是１２３４．５", 1234.5),          # full-width digits
    ("答案：三百五十", 350),
    ("一万二千", 12_000),
    ("答えは二〇二四です", 2024),
    ("三点五", 3.5),
    ("负十二", -12),
])
def test_extracts_digits_of_every_script(text, expected):
    assert extract_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42. Check: 42 * 2 = 84", 42),     # marker beats the last number
    ("Step 1: 100 - 20 = 80. Step 2: 80 / 4 = 20", 20),  # no marker: last number
    ("First 12, then 30. #### 7 (rounded)", 7),
    ("Answer: 1,234.56\nExplanation: 1,000 + 234.56", 1234.56),
    ("Revenue rose from 100 to 120, so the change is 20%.", 20),
    ("Final answer: -3.5", -3.5),
    ("Ответ: 17", 17),
])
def test_prefers_the_final_answer_marker(text, expected):
    assert extract_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [
    ("pages 10-12", 12),                 # a range, not a negative
    ("COVID-19 cases", 19),              # a hyphenated name, not a negative
    ("3 100-dollar bills", 100),         # a space separates numbers in English
    ("1, 2, 3", 3),                      # a list is not a thousands grouping
])
def test_does_not_misread_hyphens_and_lists(text, expected):
    assert extract_number(text) == pytest.approx(expected)


def test_locale_decides_ambiguous_separators():
    assert extract_number("1.234") == pytest.approx(1.234)
    assert extract_number("1.234", lang="de") == pytest.approx(1234)
    assert extract_number("1,234") == pytest.approx(1234)
    assert extract_number("1,234", lang="ru") == pytest.approx(1.234)
    assert extract_number("Ответ: 1 234", lang="ru") == pytest.approx(1234)
    assert extract_number("12,5") == pytest.approx(12.5)


def test_no_number_gives_none():
    assert extract_number("I don't know") is None
    assert extract_number("") is None


def test_parse_number_wants_exactly_one_number():
    assert parse_number("$1,234.56") == pytest.approx(1234.56)
    assert parse_number("3.5%") == pytest.approx(3.5)
    assert parse_number("1 and 2") is None


def test_cjk_numerals():
    assert cjk_to_number("十五") == 15
    assert cjk_to_number("一百零五") == 105
    assert cjk_to_number("三億五千万") == 350_000_000


def test_numbers_match_tolerance():
    assert numbers_match(100.4, 100.0, rel_tol=0.005)
    assert not numbers_match(100.6, 100.0, rel_tol=0.005)
    assert numbers_match(0.1 + 0.2, 0.3)
    assert not numbers_match(None, 1.0, rel_tol=0.5)
    assert numbers_match(0.004, 0.0, abs_tol=0.005)


@pytest.mark.parametrize("text, n, expected", [
    ("The answer is (B).", 4, 1),
    ("C) because the clause says so", 4, 2),
    ("A contract is void if...", 4, None),   # the article, not a choice
    ("I think (D) is right", 4, 3),
    ("Ａ", 4, 0),                            # full-width letter
    ("Answer: E", 4, None),                  # out of range
    ("Answer: B\nthough (A) is tempting", 4, 1),
])
def test_extract_choice_letter(text, n, expected):
    assert extract_choice_letter(text, n) == expected


def test_exact_match_normalises_and_accepts_a_leading_answer():
    assert exact_match("No, the tenant may not.", "no")[1]
    assert not exact_match("not allowed", "no")[1]
    assert exact_match("Answer: The Tenant.", "the Tenant")[1]
    assert not exact_match("the Landlord", "the Tenant")[1]
    assert normalize_answer("  The  ANSWER: ٤٢! ") == "answer 42"


def _item(answer, lang="en", choices=None, label=None):
    return Item(id="x-1", category="c", lang=lang, fields={}, answer=answer, choices=choices, label=label)


def test_score_generation_numeric_uses_tolerance_and_lang():
    spec = ScorerSpec(type="numeric", rel_tol=0.005)
    assert score_generation(spec, _item(1234.56), "Answer: $1,234.50").correct
    assert not score_generation(spec, _item(1234.56), "Answer: $1,334.50").correct
    judged = score_generation(spec, _item(1234.5, lang="de"), "Die Antwort ist 1.234,50 €")
    assert judged.correct and judged.extracted == "1234.5"


def test_score_generation_regex_and_letter():
    regex = ScorerSpec(type="regex", pattern=r"\b(yes|no)\b")
    assert score_generation(regex, _item("no"), "Well... no, it is not allowed").correct
    letter = ScorerSpec(type="choice", target="letter", method="generate")
    item = _item("b", choices=("a", "b", "c"), label=1)
    assert score_generation(letter, item, "The answer is B").correct
    assert not score_generation(letter, item, "The answer is C").correct


def test_score_choice_takes_the_most_likely_and_breaks_ties_to_the_first():
    item = _item("b", choices=("a", "b", "c"), label=1)
    assert score_choice(item, [-3.0, -1.0, -2.0]) == (1, score_choice(item, [-3.0, -1.0, -2.0])[1])
    assert score_choice(item, [-3.0, -1.0, -2.0])[1].correct
    assert score_choice(item, [-1.0, -1.0, -2.0])[0] == 0


def test_score_choice_norm_divides_by_target_characters_as_lm_eval_acc_norm():
    item = _item("$2,120.00", choices=("$60.00", "$2,120.00"), label=1)
    logprobs = [-9.0, -12.0]  # summed: the short one wins; per character: -1.5 vs -1.33
    assert score_choice(item, logprobs)[0] == 0 and not score_choice(item, logprobs)[1].correct
    index, judged = score_choice_norm(item, logprobs, list(item.choices))
    assert index == 1 and judged.correct and judged.extracted == "$2,120.00"
    assert score_choice_norm(item, logprobs, ["A", "B"])[0] == 0  # letter targets: same as acc
    with pytest.raises(ValueError):
        score_choice_norm(item, logprobs, ["only one"])
