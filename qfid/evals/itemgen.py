"""Helpers the built-in suites' `generate.py` scripts share: number formatting the way
people write it, multiple-choice assembly with plausible distractors, and a byte-stable
JSONL writer (same seed -> same bytes, so the committed items can be checked in CI).
"""
from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from qfid.utils.fs import atomic_write_text


def round_half_up(value: float, places: int = 2) -> float:
    """Money rounding as people do it (2.675 -> 2.68), not banker's rounding."""
    quantum = Decimal(1).scaleb(-places)
    return float(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def fmt_number(value: float, places: int = 2, strip: bool = False) -> str:
    """1234567.5 -> '1,234,567.50' (or '1,234,567.5' with strip)."""
    text = f"{round_half_up(abs(value), places):,.{places}f}"
    if strip and "." in text:
        text = text.rstrip("0").rstrip(".")
    return ("-" if value < 0 and text.strip("0.,") else "") + text


def fmt_money(value: float, symbol: str = "$", places: int = 2) -> str:
    """-1234.5 -> '-$1,234.50'; the sign goes before the symbol, as in financial statements."""
    text = fmt_number(abs(value), places)
    return ("-" if value < 0 and text.strip("0.,") else "") + symbol + text


def fmt_pct(value: float, places: int = 2) -> str:
    """3.5 -> '3.5%', 12.25 -> '12.25%'."""
    return fmt_number(value, places, strip=True) + "%"


def with_choices(rng: random.Random, correct: str, distractors: Sequence[str], n_choices: int = 4) -> tuple[list[str], int]:
    """Shuffle the correct text among the first distinct distractors; (choices, label)."""
    picked = [d for d in dict.fromkeys(distractors) if d != correct][: n_choices - 1]
    if len(picked) < n_choices - 1:
        raise ValueError(f"only {len(picked)} distinct distractors for {correct!r}")
    choices = [correct, *picked]
    rng.shuffle(choices)
    return choices, choices.index(correct)


def numeric_distractors(rng: random.Random, answer: float, mistakes: Sequence[float], fmt: Callable[[float], str]) -> list[str]:
    """Texts of typical mistakes first, then near misses (a slip of a few percent or a
    digit), all formatted like the answer so the format gives nothing away."""
    nudges = [1.1, 0.9, 1.05, 0.95, 1.2, 0.8, 10.0, 0.1]
    rng.shuffle(nudges)
    candidates = [m for m in mistakes if m == m and abs(m) != float("inf")]
    candidates += [answer * f for f in nudges] + [answer + d for d in (1, -1, 10, -10, 100)]
    return [fmt(c) for c in candidates]


def tiered_cases(rng: random.Random, categories: dict[str, Callable], per_tier: int, tiers: Sequence[int] = (1, 2, 3)):
    """(category, tier, case) for every category and tier, `per_tier` each, drawn in this
    fixed order: the order is part of what a seed reproduces."""
    for category, make in categories.items():
        for tier in tiers:
            for _ in range(per_tier):
                yield category, tier, make(rng, tier)


def write_jsonl(rows: Sequence[dict], path: Path) -> None:
    """One JSON object a line, keys in insertion order, UTF-8 as written (not \\u escapes)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_text(path, text)


def generator_main(build: Callable[[int], list[dict]], default_seed: int, here: Path) -> None:
    """The CLI every generate.py shares: `python generate.py [--seed N] [--out DIR]`."""
    parser = argparse.ArgumentParser(description=f"Rebuild {here.name}/items.jsonl deterministically from a seed.")
    parser.add_argument("--seed", type=int, default=default_seed)
    parser.add_argument("--out", type=Path, default=here, help="folder to write items.jsonl into (default: beside this script)")
    args = parser.parse_args()
    rows = build(args.seed)
    write_jsonl(rows, args.out / "items.jsonl")
    print(f"wrote {len(rows)} items to {args.out / 'items.jsonl'}")
