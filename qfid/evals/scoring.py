"""Judge one prediction against one item, by the suite's scorer.

Generated text is judged by `score_generation` (numeric, exact, regex, or a choice letter
read from the text); multiple choice by log-likelihood is judged by `score_choice` from
one summed log-prob per choice, and by `score_choice_norm` from the log-prob per character
(lm-eval's acc and acc_norm). Both return what was extracted, so a run records *why* an
item counted as wrong, not only that it did.
"""
from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

from qfid.evals.items import Item
from qfid.evals.numbers import DEFAULT_MARKERS, extract_number, normalize_digits, numbers_match, parse_number
from qfid.evals.suite import ScorerSpec

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")
_LETTER_AFTER_MARKER = re.compile(r"(?:answer|option|choice|respuesta|réponse|antwort|ответ|答案|答え)\s*(?:is|es|est|ist|:)?\s*[(\[]?([A-Z])(?![A-Za-z])", re.I)
_LEADING_LETTER = re.compile(r"^\s*[(\[]?([A-Z])(?:[)\].:]|\s*$|\s*\n)")  # not the article in "A contract"
_BRACKETED_LETTER = re.compile(r"[(\[]([A-Z])[)\]]")


@dataclass(frozen=True, slots=True)
class Judgement:
    extracted: str | None
    correct: bool


def normalize_answer(text: str) -> str:
    """Case, punctuation, articles, whitespace and digit script do not change an answer."""
    text = normalize_digits(unicodedata.normalize("NFKC", text)).casefold()
    text = _ARTICLES.sub(" ", _PUNCT.sub(" ", text))
    return " ".join(text.split())


def final_span(text: str, markers: tuple[str, ...] = ()) -> str:
    """The first non-empty line after the last final-answer marker (or of the whole text)."""
    lowered = text.casefold()
    cut = max((lowered.rfind(m.casefold()) + len(m) for m in (*markers, *DEFAULT_MARKERS) if m.casefold() in lowered), default=0)
    lines = [line.strip() for line in text[cut:].splitlines() if line.strip()]
    return lines[0] if lines else ""


def exact_match(prediction: str, gold: str, markers: tuple[str, ...] = ()) -> tuple[str, bool]:
    """Equal after normalisation, or the answer line *starts* with the gold as a whole word
    ("No, the tenant may not." matches "no"; "not" does not)."""
    span = normalize_answer(final_span(prediction, markers))
    expected = normalize_answer(gold)
    return span, bool(expected) and (span == expected or span.startswith(expected + " "))


def extract_choice_letter(text: str, n_choices: int) -> int | None:
    """Index of the letter a model picked: after an answer marker, else a leading letter
    ("B) ...", "(C)"), else the only bracketed letter; None when unsure."""
    text = unicodedata.normalize("NFKC", text)
    valid = set(string.ascii_uppercase[:n_choices])
    candidates = [m.group(1).upper() for m in _LETTER_AFTER_MARKER.finditer(text)]
    candidates = [c for c in candidates if c in valid][-1:]
    if not candidates:
        leading = _LEADING_LETTER.match(text)
        candidates = [leading.group(1)] if leading and leading.group(1) in valid else []
    if not candidates:
        bracketed = {m.group(1) for m in _BRACKETED_LETTER.finditer(text)} & valid
        candidates = list(bracketed) if len(bracketed) == 1 else []
    return string.ascii_uppercase.index(candidates[0]) if candidates else None


def score_generation(spec: ScorerSpec, item: Item, prediction: str) -> Judgement:
    if spec.type == "numeric":
        value = extract_number(prediction, spec.markers, item.lang)
        gold = item.answer if isinstance(item.answer, (int, float)) else parse_number(str(item.answer), item.lang)
        return Judgement(None if value is None else _format_number(value), numbers_match(value, gold, spec.rel_tol, spec.abs_tol))
    if spec.type == "exact":
        span, correct = exact_match(prediction, str(item.answer), spec.markers)
        return Judgement(span, correct)
    if spec.type == "regex":
        found = re.search(spec.pattern, prediction)
        extracted = found.group(1) if found else None
        return Judgement(extracted, extracted is not None and normalize_answer(extracted) == normalize_answer(str(item.answer)))
    if spec.type == "choice":
        index = extract_choice_letter(prediction, len(item.choices))
        return Judgement(None if index is None else string.ascii_uppercase[index], index == item.label)
    raise ValueError(f"scorer {spec.type!r} does not judge generated text")


def score_choice(item: Item, choice_logprobs: list[float]) -> tuple[int, Judgement]:
    """The choice with the highest summed log-prob (lm-eval's `acc`); ties go to the first."""
    best = max(range(len(choice_logprobs)), key=lambda i: (choice_logprobs[i], -i))
    return best, Judgement(item.choices[best], best == item.label)


def score_choice_norm(item: Item, choice_logprobs: list[float], targets: list[str]) -> tuple[int, Judgement]:
    """lm-eval's `acc_norm`: the highest log-prob per character of the scored target (the
    choice text or letter, without the leading delimiter). A summed log-prob favours short
    choices ("$60.00" over "$2,120.00") whatever the question; per character it does not."""
    return score_choice(item, [lp / max(1, len(target)) for lp, target in zip(choice_logprobs, targets, strict=True)])


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)
