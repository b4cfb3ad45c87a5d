"""`--calib suite:finance,legal`: calibrate on the suites' own domain, never on their items.

Calibrating on the workload's text is the known fix for domain regressions, and a suite is
the closest thing to that workload a sweep has. A built-in suite's generator
(`evalsuites/NAME/generate.py`, the one that rebuilds its items) is run with a seed
CALIB_SEED_OFFSET away from the eval items' seed, so the calibration split is new problems of
the same kinds; any that renders to the same prompt as an eval item is dropped all the same.
A user suite names its own calibration rows (`calib_items: FILE` in its YAML, the items'
format) or is refused with one line.

Each calibration document is what the model would see and answer: the item's prompt (no
few-shot block, which would repeat in every document) and the gold answer.
"""
from __future__ import annotations

import json
from pathlib import Path

from qfid.errors import QfidError
from qfid.evals.item_sources import read_rows
from qfid.evals.items import Item
from qfid.evals.render import TARGET_DELIMITER, gold_target, item_fields
from qfid.evals.suite import Suite, items_from_suite_rows, load_suites
from qfid.evals.templates import render
from qfid.utils.fs import atomic_write_text
from qfid.utils.modules import import_file

SUITE_PREFIX = "suite:"
CALIB_SEED_OFFSET = 7919


def is_suite_calibration(calib: str | None) -> bool:
    return bool(calib) and calib.startswith(SUITE_PREFIX)


def calibration_documents(suite_names: str) -> list[str]:
    """Prompt + gold answer of each calibration item of every named suite (suites that
    share a generator, like finance and finance-mc, contribute its items once)."""
    docs, seen = [], set()
    for suite in load_suites(suite_names):
        origin = suite.calib_items and (suite.source.parent / suite.calib_items).resolve() or _generator_of(suite)
        if origin is not None and origin in seen:
            continue
        seen.add(origin)
        eval_prompts = {_prompt(suite, item) for item in suite.items}
        mine = [_prompt(suite, item) + TARGET_DELIMITER + gold_target(suite, item)
                for item in calibration_items(suite) if _prompt(suite, item) not in eval_prompts]
        if not mine:
            raise QfidError(f"suite {suite.name}: every calibration item is also an eval item (its items do not "
                            f"depend on the generator's seed); calibrate on another suite")
        docs += mine
    return docs


def calibration_items(suite: Suite) -> list[Item]:
    if suite.calib_items:
        rows = [row.data for row in read_rows(suite.calib_items, suite.source.parent)]
        return items_from_suite_rows(suite, rows, suite.calib_items)
    generator = _generator_of(suite)
    if generator is None:
        raise QfidError(f"suite {suite.name} has no calibration split: add calib_items: FILE (rows like its items, "
                        f"none of them eval items) to {suite.source}")
    module = _import(generator)
    rows = module.build(module.SEED + CALIB_SEED_OFFSET)
    return items_from_suite_rows(suite, rows, f"{generator} (seed {module.SEED + CALIB_SEED_OFFSET})")


def _prompt(suite: Suite, item: Item) -> str:
    return render(suite.prompt.plain, item_fields(item), "prompt.plain")


def _generator_of(suite: Suite) -> Path | None:
    """The generate.py beside the suite's items file (finance-mc reads ../finance/items.jsonl)."""
    import yaml

    items = yaml.safe_load(suite.source.read_text(encoding="utf-8")).get("items")
    if not isinstance(items, str) or items.startswith("datasets:"):
        return None
    script = (suite.source.parent / items).resolve().parent / "generate.py"
    return script if script.is_file() else None


def _import(script: Path):
    return import_file(f"qfid_suite_generator_{script.parent.name}", script)


def write_suite_calibration(calib: str, folder: Path) -> Path:
    """`suite:NAMES` as a .jsonl file `qfid quantize --calib` reads (one {"text"} per item)."""
    names = calib[len(SUITE_PREFIX):]
    if not names.strip():
        raise QfidError("--calib suite: names no suite (use suite:finance,legal)")
    docs = calibration_documents(names)
    path = folder / f"calib-suite-{names.replace(',', '+')}.jsonl"
    atomic_write_text(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    return path
