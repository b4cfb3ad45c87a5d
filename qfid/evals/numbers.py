"""Read the number a model meant from free text, in any script.

Quantized models fail arithmetic in small ways (a digit, a sign), so the extractor must not
be the noisy part: it handles currency signs and codes, thousands separators in the
English (1,234.50), continental (1.234,50 €), Swiss (1'234.50), Indian (1,23,456) and
thin-space styles, percent, negatives (-3.5, -$12, ($12)), multipliers (2.5 million, 3万),
every Unicode decimal digit (Arabic-Indic, Eastern Arabic-Indic, Devanagari, full-width)
and Chinese/Japanese numerals. It prefers the number after the last final-answer marker,
else takes the last number in the text.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from qfid.evals.cjk_numerals import replace_cjk_numerals

# Locales that write 1.234,5: a lone comma is a decimal point, a dot before 3 digits groups.
DECIMAL_COMMA_LANGS = frozenset("de fr es it pt nl ru uk pl cs sk tr id vi ro hu da sv nb fi el bg hr sr sl lt lv et".split())
# Locales that group with plain spaces (1 234 567); elsewhere a space separates numbers.
SPACE_GROUP_LANGS = frozenset("fr ru uk pl cs sk sv nb fi et lv lt bg hu".split())
DEFAULT_MARKERS = (
    "####", "final answer", "answer is", "answer:", "answer =",
    "la respuesta es", "respuesta:", "la réponse est", "réponse:", "réponse :", "die antwort ist", "antwort:",
    "ответ:", "ответ —", "ответ", "答案", "答え", "解答", "答:", "الإجابة", "الجواب", "उत्तर", "jibu",
)
_SCRIPT_PUNCT = str.maketrans({"٫": ".", "٬": ",", "٪": "%", "−": "-", "–": "-", "﹣": "-", "’": "'", "²": "", "³": "", "¹": ""})
_CURRENCY = r"(?:US\$|[$€£¥₹₽₦₩₺₫฿]|USD|EUR|GBP|JPY|CNY|RMB|INR|RUB|KES|TZS|NGN|CHF|Rs\.?)"
_NARROW_GROUP_SPACE = re.compile(r"(?<=\d)[\u00a0\u202f\u2009](?=\d\d\d)")
_RUN = re.compile(r"(?:(?<![\w.,])\.)?\d(?:[\d,.' ]*\d)?")
_SIGN_BEFORE = re.compile(r"(?:^|(?<=[^\w.,]))-\s?(?:" + _CURRENCY + r"\s?)?$")
_PAREN_BEFORE = re.compile(r"\(\s?" + _CURRENCY + r"\s?$")
_MULTIPLIERS = (
    (re.compile(r"\s?(?:trillion|tn)\b", re.I), 1e12), (re.compile(r"\s?(?:billion|bn)\b", re.I), 1e9),
    (re.compile(r"\s?(?:million|mn|mln)\b", re.I), 1e6), (re.compile(r"\s?thousand\b", re.I), 1e3),
    (re.compile(r"\s?crores?\b", re.I), 1e7), (re.compile(r"\s?lakhs?\b", re.I), 1e5),
    (re.compile(r"\s?млрд"), 1e9), (re.compile(r"\s?млн"), 1e6), (re.compile(r"\s?тыс"), 1e3),
    (re.compile(r"[亿億]"), 1e8), (re.compile(r"[万萬]"), 1e4),
)


@dataclass(frozen=True, slots=True)
class NumberMatch:
    value: float
    start: int
    end: int
    percent: bool


def normalize_digits(text: str) -> str:
    """NFKC (full-width forms) and every Unicode decimal digit to ASCII; script-specific
    decimal/thousands/percent signs to their ASCII forms."""
    text = _NARROW_GROUP_SPACE.sub("'", text)  # NFKC would turn these into plain spaces
    text = unicodedata.normalize("NFKC", text.translate(_SCRIPT_PUNCT)).translate(_SCRIPT_PUNCT)
    return "".join(str(unicodedata.decimal(ch)) if not ch.isascii() and unicodedata.category(ch) == "Nd" else ch for ch in text)


def parse_number(text: str, lang: str | None = None) -> float | None:
    """The single number in a short string such as "$1,234.50" or "1.234,50 €"."""
    found = find_numbers(normalize_digits(text), lang)
    return found[0].value if len(found) == 1 else None


def extract_number(text: str, markers: tuple[str, ...] = (), lang: str | None = None) -> float | None:
    """The answer a model gave: the first number after the last final-answer marker, else the
    last number anywhere; Chinese/Japanese numerals count when a span has no digits."""
    text = normalize_digits(text)
    tail = _after_last_marker(text, (*markers, *DEFAULT_MARKERS))
    if tail is not None:
        found = _numbers_or_cjk(tail, lang)
        if found:
            return found[0].value
    found = _numbers_or_cjk(text, lang)
    return found[-1].value if found else None


def _numbers_or_cjk(text: str, lang: str | None) -> list[NumberMatch]:
    return find_numbers(text, lang) or find_numbers(replace_cjk_numerals(text), lang)


def _after_last_marker(text: str, markers: tuple[str, ...]) -> str | None:
    lowered = text.casefold()
    best = -1
    for marker in markers:
        marker = normalize_digits(marker).casefold()
        position = lowered.rfind(marker)
        if position >= 0:
            best = max(best, position + len(marker))
    return None if best < 0 else text[best:]


def find_numbers(text: str, lang: str | None = None) -> list[NumberMatch]:
    """Every number in already-normalised text, left to right, with sign and percent."""
    found: list[NumberMatch] = []
    for run in _RUN.finditer(text):
        for start, end, value in _interpret_run(run.group(), run.start(), lang):
            found.append(_with_context(text, start, end, value))
    return found


def _interpret_run(run: str, offset: int, lang: str | None) -> list[tuple[int, int, float]]:
    """One run of digits and separators -> one number, or several when its grouping is not a
    valid thousands grouping ("1, 2, 3", "2020 150")."""
    value = _grouped_value(run, lang)
    if value is not None:
        return [(offset, offset + len(run), value)]
    pieces = []
    for piece in re.finditer(r"\d+(?:[.,]\d+)?", run):
        piece_value = _grouped_value(piece.group(), lang)
        if piece_value is None:
            piece_value = float(piece.group().replace(",", "."))
        pieces.append((offset + piece.start(), offset + piece.end(), piece_value))
    return pieces


def _grouped_value(run: str, lang: str | None) -> float | None:
    base = (lang or "").split("-")[0].lower()
    if " " in run and base not in SPACE_GROUP_LANGS and not re.search(r"[,.]\d+$", run):
        return None  # "3 100-dollar bills": two numbers, unless the locale groups with spaces
    run = re.sub(r"[ ']", "_", run)
    decimal = _decimal_separator(run, base in DECIMAL_COMMA_LANGS)
    if decimal is None and run.count("_") == 0 and run.count(",") + run.count(".") == 0:
        return float(run)
    integer, _, fraction = run.rpartition(decimal) if decimal else (run, "", "")
    groups = re.split(r"[_,.]", integer)
    if len(groups) > 1 and not _valid_grouping(groups):
        return None
    if decimal and not fraction.isdigit():
        return None
    return float("".join(groups) + ("." + fraction if fraction else ""))


def _decimal_separator(run: str, decimal_comma: bool) -> str | None:
    """Which of '.' and ',' (if any) is the decimal point, by position and count."""
    dots, commas = run.count("."), run.count(",")
    if dots and commas:
        last = "." if run.rfind(".") > run.rfind(",") else ","
        return last if run.count(last) == 1 else None
    sep = "." if dots else "," if commas else None
    if sep is None or run.count(sep) > 1:
        return None
    digits_after = len(run) - run.rfind(sep) - 1
    if "_" in run:
        return sep
    if digits_after != 3:
        return sep
    return "," if decimal_comma and sep == "," else "." if not decimal_comma and sep == "." else None


def _valid_grouping(groups: list[str]) -> bool:
    """1,234,567 (threes) or 12,34,567 (Indian: twos, then a final three)."""
    head, *middle, last = groups
    if not 1 <= len(head) <= 3 or len(last) != 3 or not head.isdigit():
        return False
    return all(len(g) == 3 for g in middle) or all(len(g) == 2 for g in middle) and len(head) <= 2


def _with_context(text: str, start: int, end: int, value: float) -> NumberMatch:
    before, after = text[max(0, start - 12):start], text[end:end + 12]
    if _SIGN_BEFORE.search(before) or (_PAREN_BEFORE.search(before) and re.match(r"\s?\)", after)):
        value = -value
    for pattern, factor in _MULTIPLIERS:
        if pattern.match(after):
            value *= factor
            break
    return NumberMatch(value=value, start=start, end=end, percent=bool(re.match(r"\s?%", after)))


def numbers_match(predicted: float | None, gold: float, rel_tol: float = 0.0, abs_tol: float = 0.0) -> bool:
    """Within tolerance of the gold value; with no tolerance, equal up to float noise."""
    if predicted is None:
        return False
    allowed = max(abs_tol, rel_tol * abs(gold), 1e-9 * max(1.0, abs(gold)))
    return abs(predicted - gold) <= allowed
