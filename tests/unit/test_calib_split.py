"""`--calib suite:NAMES`: calibration items come from each built-in generator under another
seed and never render to an eval item's prompt; a user suite names its own rows or is
refused with one line; the written file is what `qfid quantize --calib` reads."""
from __future__ import annotations

import json

import pytest

from qfid.errors import QfidError
from qfid.evals.calib_split import (
    _prompt, calibration_documents, calibration_items, write_suite_calibration,
)
from qfid.evals.suite import load_suites


@pytest.mark.parametrize("name", ["finance", "legal", "multilingual", "finance-mc", "legal-short", "multilingual-mc"])
def test_calibration_and_eval_splits_share_no_rendered_prompt(name):
    (suite,) = load_suites(name)
    eval_prompts = {_prompt(suite, item) for item in suite.items}
    docs = calibration_documents(name)
    assert len(docs) >= 100
    assert not any(doc.startswith(p + " ") for doc in docs for p in eval_prompts)
    generated = calibration_items(suite)
    assert sum(_prompt(suite, item) not in eval_prompts for item in generated) == len(docs)


def test_suites_sharing_a_generator_contribute_once():
    assert len(calibration_documents("finance,finance-mc")) == len(calibration_documents("finance"))


def test_a_control_suite_whose_items_do_not_depend_on_the_seed_is_refused():
    with pytest.raises(QfidError, match="every calibration item is also an eval item"):
        calibration_documents("general")


def _user_suite(tmp_path, calib_rows: list[dict] | None):
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "category": "sums", "lang": "en", "question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                                                  for i in range(5)))
    yaml = ("name: mine\nprompt:\n  plain: \"Q: {question}\\nA:\"\nscorer:\n  type: exact\nitems: items.jsonl\n")
    if calib_rows is not None:
        (tmp_path / "calib.jsonl").write_text("".join(json.dumps(r) + "\n" for r in calib_rows))
        yaml += "calib_items: calib.jsonl\n"
    (tmp_path / "suite.yaml").write_text(yaml)
    return str(tmp_path / "suite.yaml")


def test_user_suite_names_its_calibration_rows_or_is_refused(tmp_path):
    refused = tmp_path / "a"
    refused.mkdir()
    with pytest.raises(QfidError, match="has no calibration split: add calib_items"):
        calibration_documents(_user_suite(refused, None))
    given = tmp_path / "b"
    given.mkdir()
    rows = [{"id": "c1", "category": "sums", "lang": "en", "question": "What is 10+1?", "answer": "11"},
            {"id": "c2", "category": "sums", "lang": "en", "question": "What is 2+1?", "answer": "3"}]
    docs = calibration_documents(_user_suite(given, rows))
    assert docs == ["Q: What is 10+1?\nA: 11"]   # the second renders like eval item q2: dropped


def test_written_file_is_jsonl_text_rows(tmp_path):
    path = write_suite_calibration("suite:finance", tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows and all(set(r) == {"text"} for r in rows) and rows[0]["text"] == calibration_documents("finance")[0]
    with pytest.raises(QfidError, match="names no suite"):
        write_suite_calibration("suite:", tmp_path)
