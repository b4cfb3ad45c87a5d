"""Chinese/Japanese numerals to digits (三百五十 -> 350, 一万二千 -> 12000, 三点五 -> 3.5),
so a model that answers in words is still scored on what it said."""
from __future__ import annotations

import re

_DIGITS = {"零": 0, "〇": 0, "一": 1, "壹": 1, "二": 2, "两": 2, "兩": 2, "贰": 2, "貳": 2, "三": 3, "叁": 3, "參": 3,
           "四": 4, "肆": 4, "五": 5, "伍": 5, "六": 6, "陆": 6, "陸": 6, "七": 7, "柒": 7, "八": 8, "捌": 8, "九": 9, "玖": 9}
_SMALL_UNITS = {"十": 10, "拾": 10, "百": 100, "佰": 100, "千": 1000, "仟": 1000}
_BIG_UNITS = {"万": 10**4, "萬": 10**4, "亿": 10**8, "億": 10**8, "兆": 10**12}
_POINT = "点點"
_NUMERAL_CHARS = "".join([*_DIGITS, *_SMALL_UNITS, *_BIG_UNITS])
_RUN = re.compile(f"(?:[负負]|マイナス)?[{_NUMERAL_CHARS}]+(?:[{_POINT}][{''.join(_DIGITS)}]+)?")


def replace_cjk_numerals(text: str) -> str:
    """Each run of numeral characters replaced by its ASCII value."""
    return _RUN.sub(lambda m: _format(cjk_to_number(m.group())), text)


def cjk_to_number(run: str) -> float:
    negative = run.startswith(("负", "負", "マイナス"))
    run = run.lstrip("负負").removeprefix("マイナス")
    integer, fraction = re.split(f"[{_POINT}]", run, maxsplit=1) if re.search(f"[{_POINT}]", run) else (run, "")
    value = _integer_value(integer) + (float("0." + "".join(str(_DIGITS[c]) for c in fraction)) if fraction else 0.0)
    return -value if negative else value


def _integer_value(run: str) -> int:
    if run and all(c in _DIGITS for c in run):  # 二〇二四: digit by digit
        return int("".join(str(_DIGITS[c]) for c in run))
    total, section, digit, smallest_big = 0, 0, 0, None
    for char in run:
        if char in _DIGITS:
            digit = _DIGITS[char]
        elif char in _SMALL_UNITS:
            section += (digit or 1) * _SMALL_UNITS[char]
            digit = 0
        else:
            big = _BIG_UNITS[char]
            if smallest_big is not None and big > smallest_big:  # 一万亿: 万 scales the 亿 too
                total = (total + (section + digit)) * big
            else:
                total += (section + digit or 1) * big
            smallest_big = big if smallest_big is None else min(smallest_big, big)
            section, digit = 0, 0
    return total + section + digit


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
