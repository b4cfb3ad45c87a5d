"""Rebuild general/items.jsonl: the control suite, general-knowledge multiple choice that
a broad benchmark would ask (capitals, chemical symbols, animal classes, units, opposites,
and hand-written science/geography/history questions), from the facts in facts.yaml.

It is the yardstick next to the domain suites: a quantized model that holds up here but
drops on finance or legal is exactly what qfid exists to show.

    python evalsuites/general/generate.py [--seed 20240604] [--out DIR]
"""
from __future__ import annotations

import random
from pathlib import Path

import yaml

from qfid.evals.itemgen import generator_main, with_choices

SEED = 20240604
HERE = Path(__file__).resolve().parent
ANIMAL_CLASSES = ["mammal", "bird", "reptile", "amphibian", "fish", "insect"]


def capital_questions(rng: random.Random, capitals: dict) -> list[tuple]:
    rows = []
    for country, (capital, continent) in capitals.items():
        same = [c for k, (c, cont) in capitals.items() if cont == continent and k != country]
        elsewhere = [c for k, (c, cont) in capitals.items() if cont != continent]
        picked = rng.sample(same, min(3, len(same)))  # same continent first: no easy giveaways
        rows.append((f"What is the capital of {country}?", capital, picked + rng.sample(elsewhere, 3 - len(picked)), "geography"))
    return rows


def element_questions(rng: random.Random, elements: dict) -> list[tuple]:
    symbols = list(elements.values())
    return [(f"What is the chemical symbol for {name}?", symbol, rng.sample([s for s in symbols if s != symbol], 3), "science")
            for name, symbol in elements.items()]


def animal_questions(rng: random.Random, animals: dict) -> list[tuple]:
    return [(f"What kind of animal is a {animal}?", f"a {kind}" if kind[0] not in "aeiou" else f"an {kind}",
             [f"a {k}" if k[0] not in "aeiou" else f"an {k}" for k in rng.sample([k for k in ANIMAL_CLASSES if k != kind], 3)], "biology")
            for animal, kind in animals.items()]


def unit_questions(rng: random.Random, units: dict) -> list[tuple]:
    rows = []
    for question, answer in units.items():
        wrong = sorted({answer * 2, answer + 2, max(1, answer - 2), answer * 10, max(1, answer // 2)} - {answer})
        rows.append((question, str(answer), [str(w) for w in rng.sample(wrong, 3)], "measurement"))
    return rows


def opposite_questions(rng: random.Random, opposites: dict) -> list[tuple]:
    words = list(opposites.values()) + list(opposites)
    return [(f"What is the opposite of \"{word}\"?", opposite, rng.sample([w for w in words if w not in (word, opposite)], 3), "language")
            for word, opposite in opposites.items()]


def build(seed: int = SEED) -> list[dict]:
    facts = yaml.safe_load((HERE / "facts.yaml").read_text(encoding="utf-8"))
    rng = random.Random(seed)
    questions = [
        *capital_questions(rng, facts["capitals"]), *element_questions(rng, facts["elements"]),
        *animal_questions(rng, facts["animals"]), *unit_questions(rng, facts["units"]),
        *opposite_questions(rng, facts["opposites"]),
        *[(q, str(a), [str(d) for d in (d1, d2, d3)], cat) for q, a, d1, d2, d3, cat in facts["questions"]],
    ]
    rows = []
    for number, (question, answer, distractors, category) in enumerate(questions, start=1):
        choices, label = with_choices(rng, answer, distractors)
        rows.append({"id": f"gen-{number:04d}", "category": category, "lang": "en", "fields": {"question": question},
                     "answer": answer, "choices": choices, "label": label})
    return rows


if __name__ == "__main__":
    generator_main(build, SEED, HERE)
