"""Rebuild multilingual/items.jsonl: the same arithmetic word problems and simple reasoning
questions in ten languages (en, es, fr, de, ru, zh, ja, ar, hi, sw), with parallel ids
(`mlg-0042-zh` and `mlg-0042-sw` are the same problem) so per-language deltas compare like
with like. The sentences live in translations.yaml; this script only picks the numbers.

Numbers are kept in 3..99 inside sentences, so Russian and Arabic noun agreement (handled
by `{n~one|few|many}` forms) stays within the cases the templates spell out.

    python evalsuites/multilingual/generate.py [--seed 20240603] [--out DIR]
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import yaml

from qfid.evals.itemgen import generator_main, with_choices

SEED = 20240603
PER_TEMPLATE = 16
HERE = Path(__file__).resolve().parent
_AGREEMENT = re.compile(r"\{(\w+)~([^}]+)\}")


def addition(rng):
    a, b = rng.randrange(11, 61), rng.randrange(11, 40)
    return {"a": a, "b": b}, a + b, [a - b, a + b + 10, a + b - 10]


def subtraction(rng):
    a = rng.randrange(40, 100)
    b = rng.randrange(11, a - 2)
    return {"a": a, "b": b}, a - b, [a + b, a - b + 10, b]


def multiplication(rng):
    a, b = rng.randrange(11, 41), rng.randrange(3, 10)
    return {"a": a, "b": b}, a * b, [a + b, a * (b - 1), a * (b + 1)]


def division(rng):
    b = rng.randrange(3, 10)
    q = rng.randrange(-(-12 // b), 99 // b + 1)
    return {"c": q * b, "b": b}, q, [q * b - b, q + 1, q - 1]


def making_change(rng):
    while True:
        p, b = rng.randrange(3, 21), rng.randrange(3, 7)
        m = 50 if p * b < 50 else 100
        if p * b < m:
            return {"p": p, "b": b, "m": m}, m - p * b, [p * b, m - p, m - p * (b - 1)]


def ordering(rng):
    n = rng.randrange(11, 31)
    p = rng.randrange(3, n - 3)
    return {"n": n, "p": p}, n - p - 1, [n - p, n - p - 2, p]


def age(rng):
    a, b, c = rng.randrange(11, 41), rng.randrange(3, 10), rng.randrange(3, 10)
    return {"a": a, "b": b, "c": c}, a + b + c, [a + b, a + c, b + c]


def comparison(rng):
    x, y, z = rng.sample(range(11, 100), 3)
    low, mid, high = sorted((x, y, z))
    return {"x": x, "y": y, "z": z}, high - low, [high - mid, mid - low, high + low]


PROBLEMS = {"addition": addition, "subtraction": subtraction, "multiplication": multiplication, "division": division,
            "making_change": making_change, "ordering": ordering, "age": age, "comparison": comparison}


def agreement_form(lang: str, number: int, forms: list[str]) -> str:
    """The noun form that goes with `number` (see translations.yaml's header)."""
    if lang == "ru":
        if number % 10 == 1 and number % 100 != 11:
            return forms[0]
        return forms[1] if 2 <= number % 10 <= 4 and not 12 <= number % 100 <= 14 else forms[2]
    if lang == "ar":
        rest = number % 100
        if number < 3 or rest in (1, 2):
            raise ValueError(f"Arabic templates cover counts 3..99 and whole hundreds; got {number}")
        return forms[0] if rest <= 10 and rest >= 3 else forms[1] if rest >= 11 else forms[2]
    raise ValueError(f"no agreement rule for {lang}")


def render(template: str, lang: str, values: dict) -> str:
    text = _AGREEMENT.sub(lambda m: agreement_form(lang, values[m.group(1)], m.group(2).split("|")), template)
    return text.format(**values)


def _names(table: dict, lang: str, picks: list[int]) -> dict:
    entries = [table[lang][i] for i in picks]
    nominative = [e[0] if isinstance(e, list) else e for e in entries]
    dative = [e[1] if isinstance(e, list) else e for e in entries]
    return {"name": nominative[0], "name2": nominative[1], "name3": nominative[2], "name_dat": dative[0]}


def build(seed: int = SEED) -> list[dict]:
    data = yaml.safe_load((HERE / "translations.yaml").read_text(encoding="utf-8"))
    rng = random.Random(seed)
    rows: list[dict] = []
    base = 0
    for category, make in PROBLEMS.items():
        for _ in range(PER_TEMPLATE):
            base += 1
            values, answer, mistakes = make(rng)
            choices, label = with_choices(rng, str(answer), [str(m) for m in mistakes if m > 0] + [str(answer + d) for d in (1, -1, 2)])
            picks = rng.sample(range(len(data["names"]["en"])), 3)
            for lang in data["languages"]:
                question = render(data["templates"][category][lang], lang, {**values, **_names(data["names"], lang, picks)})
                fields = {"question": question, **{key: data["labels"][key][lang] for key in data["labels"]}, "inputs": values}
                rows.append({"id": f"mlg-{base:04d}-{lang}", "category": category, "lang": lang, "fields": fields,
                             "answer": answer, "choices": choices, "label": label})
    return rows


if __name__ == "__main__":
    generator_main(build, SEED, HERE)
