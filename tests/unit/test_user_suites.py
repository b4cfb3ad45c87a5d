"""A user's own suite, kept as they keep data: the same items from nested JSONL, flat JSONL,
CSV, Parquet and `datasets` folders load to the same Items; column mapping, generated ids,
Jinja prompts and lm-eval's names work; every bad input is one line and exit 1.

The references are written out by hand here (the expected Items, the Jinja spelling of each
built-in prompt, the id hash), not taken from the code under test.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import pytest

from qfid.errors import QfidError
from qfid.evals.items import Item
from qfid.evals.render import render_chat, render_plain
from qfid.evals.suite import builtin_suite_names, load_suite

EXPECTED = [
    Item(id="q-001", category="deadlines", lang="en", fields={"clause": "Notice is due within 10 days.", "question": "Last day after 3 June?", "code": "001"},
         answer="13 June", difficulty=2),
    Item(id="q-002", category="roles", lang="de", fields={"clause": "Der Käufer zahlt.", "question": "Wer zahlt?", "code": "002"},
         answer="Käufer", choices=("Käufer", "Verkäufer"), label=0),
    Item(id="q-003", category="roles", lang="en", fields={"clause": 'A, "quoted",\nover two lines', "question": "Who?", "code": "010"},
         answer="A", choices=("B", "A", "C"), label=1, difficulty=1),
]
KEYS = ("id", "category", "lang", "clause", "question", "code", "answer", "choices", "label", "difficulty")
SUITE = 'name: mine\nprompt:\n  plain: "{clause}\\nQ: {question}\\nA:"\nscorer: exact\nitems: %s\n'


def _flat(item: Item, with_id: bool = True) -> dict:
    """Every key present (None when absent), as a table has them."""
    row = {"id": item.id, "category": item.category, "lang": item.lang, **item.fields, "answer": item.answer,
           "choices": list(item.choices) if item.choices else None, "label": item.label, "difficulty": item.difficulty}
    return {k: row[k] for k in KEYS if with_id or k != "id"}


def _write_csv(path: Path, rows: list[dict], numbered: bool = False) -> None:
    width = max(len(r.get("choices") or []) for r in rows)
    header = [k for k in rows[0] if k != "choices" or not numbered] + ([f"choice_{i}" for i in range(1, width + 1)] if numbered else [])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = {k: "" if v is None else (json.dumps(v, ensure_ascii=False) if k == "choices" else str(v)) for k, v in row.items()}
            if numbered:
                choices = row.get("choices") or []
                cells.update({f"choice_{i}": (choices[i - 1] if i <= len(choices) else "") for i in range(1, width + 1)})
            writer.writerow([cells[k] for k in header])


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _nested(folder: Path, rows: list[dict]) -> str:
    fields = ("clause", "question", "code")
    _write_jsonl(folder / "items.jsonl", [{**{k: r[k] for k in r if k not in fields}, "fields": {k: r[k] for k in fields}} for r in rows])
    return "items.jsonl"


def _flat_jsonl(folder: Path, rows: list[dict]) -> str:
    _write_jsonl(folder / "items.jsonl", rows)
    return "items.jsonl"


def _csv_file(numbered: bool):
    def write(folder: Path, rows: list[dict]) -> str:
        _write_csv(folder / "items.csv", rows, numbered=numbered)
        return "items.csv"
    return write


def _parquet(folder: Path, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), folder / "items.parquet")
    return "items.parquet"


def _pandas_parquet(folder: Path, rows: list[dict]) -> str:
    """pandas stores an int column with gaps as floats with NaN."""
    import pandas as pd

    pd.DataFrame(rows).to_parquet(folder / "items.parquet")
    return "items.parquet"


def _datasets_saved(folder: Path, rows: list[dict]) -> str:
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder / "data"))
    return "datasets:data:test"


def _datasets_files(folder: Path, rows: list[dict]) -> str:
    (folder / "data").mkdir()
    _write_jsonl(folder / "data" / "test.jsonl", rows)
    return "datasets:data:test"


WRITERS = {"nested.jsonl": _nested, "flat.jsonl": _flat_jsonl, "csv": _csv_file(False), "numbered.csv": _csv_file(True),
           "parquet": _parquet, "pandas.parquet": _pandas_parquet, "datasets-saved": _datasets_saved, "datasets-files": _datasets_files}


def _write(kind: str, folder: Path, rows: list[dict]) -> str:
    """Writes `rows` in one storage form under `folder`; returns the suite's items: value."""
    folder.mkdir(parents=True, exist_ok=True)
    return WRITERS[kind](folder, rows)


def _suite(folder: Path, items_value: str, extra: str = "") -> Path:
    path = folder / "suite.yaml"
    path.write_text(SUITE % items_value + extra, encoding="utf-8")
    return path


FORMATS = list(WRITERS)


@pytest.mark.parametrize("kind", FORMATS)
def test_every_storage_form_loads_to_the_same_items(kind, tmp_path):
    rows = [_flat(item) for item in EXPECTED]
    suite = load_suite(_suite(tmp_path, _write(kind, tmp_path, rows)))
    assert list(suite.items) == EXPECTED
    assert suite.warnings == ()


def test_csv_keeps_leading_zeros_and_reads_labels_as_integers(tmp_path):
    _write_csv(tmp_path / "items.csv", [_flat(item) for item in EXPECTED])
    assert "001" in (tmp_path / "items.csv").read_text()
    items = load_suite(_suite(tmp_path, "items.csv")).items
    assert [i.fields["code"] for i in items] == ["001", "002", "010"]
    assert [i.label for i in items] == [None, 0, 1]


def test_columns_map_reserved_names_to_the_datas_own(tmp_path):
    renamed = {"id": "uid", "category": "topic", "answer": "gold", "label": "correct"}
    rows = [{renamed.get(k, k): v for k, v in _flat(item).items()} for item in EXPECTED]
    _write_csv(tmp_path / "items.csv", rows)
    mapping = "columns: {id: uid, category: topic, answer: gold, label: correct}\n"
    assert list(load_suite(_suite(tmp_path, "items.csv", mapping)).items) == EXPECTED


def _reference_id(item: Item) -> str:
    """The documented rule, spelt out: sha256 of the sorted compact JSON of the content with
    every scalar as text and nulls left out."""
    content = {"category": item.category, "lang": item.lang, "fields": {k: str(v) for k, v in item.fields.items()}, "answer": str(item.answer)}
    if item.choices:
        content.update(choices=list(item.choices), label=str(item.label))
    if item.difficulty is not None:
        content["difficulty"] = str(item.difficulty)
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "id-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def test_generated_ids_are_stable_across_runs_and_file_formats(tmp_path):
    rows = [_flat(item, with_id=False) for item in EXPECTED]
    loaded = {}
    for kind in ("flat.jsonl", "csv", "parquet", "datasets-saved"):
        folder = tmp_path / kind
        suite = load_suite(_suite(folder, _write(kind, folder, rows)))
        loaded[kind] = [i.id for i in suite.items]
        assert suite.warnings and "3 of 3 items have no id" in suite.warnings[0]
        assert [i.id for i in load_suite(folder / "suite.yaml").items] == loaded[kind]  # a second run
    assert all(ids == [_reference_id(i) for i in EXPECTED] for ids in loaded.values()), loaded
    assert len(set(loaded["csv"])) == 3


def test_check_prints_the_generated_id_warning(tmp_path):
    _write_jsonl(tmp_path / "items.jsonl", [_flat(item, with_id=False) for item in EXPECTED])
    code, out, _ = _main(["suites", "check", str(_suite(tmp_path, "items.jsonl"))])
    assert code == 0 and "warning: 3 of 3 items have no id" in out and "ok: suite mine (3 items)" in out


# Jinja: hand-written equivalents of every built-in prompt, rendered on every item.
LETTERED = "{% for c in choices %}{{ 'ABCDEFGHIJ'[loop.index0] }}. {{ c }}{% if not loop.last %}\n{% endif %}{% endfor %}"
JINJA = {
    "finance": ("Question: {{ question }}\nAnswer:", "{{ question }}\nShow your working briefly, then finish with a line 'Answer: <number>'."),
    "finance-mc": ("Question: {{ question }}\nAnswer:",  # its few-shot examples spell the block out
                   "{{ question }}\n\n{% if choices is defined %}" + LETTERED + "{% else %}{{ choices_block }}{% endif %}\nAnswer with the correct value."),
    "general": ("Question: {{ question }}\nAnswer:", "{{ question }}\n\n" + LETTERED + "\nAnswer with the correct option."),
    "general-ppl": ("{{ text }}", None),
    "legal": ("{{ passage }}\n\nQuestion: {{ question }}\nAnswer:",
              "Read the contract text and answer the question.\n\n{{ passage }}\n\nQuestion: {{ question }}\n{{ answer_hint }}"),
    "legal-short": ("{{ passage }}\n\nQuestion: {{ question }} {{ answer_hint }}\nAnswer:",
                    "Read the contract text and answer the question.\n\n{{ passage }}\n\nQuestion: {{ question }}\n{{ answer_hint }} Give only the answer."),
    "multilingual": ("{{ q_prefix }}{{ question }}\n{{ a_prefix }}", "{{ question }}\n{{ instruction }}"),
    "multilingual-mc": ("{{ q_prefix }}{{ question }}\n{{ a_prefix }}", "{{ question }}\n\n" + LETTERED + "\n{{ instruction }}"),
}


def test_jinja_templates_render_like_the_format_templates_on_every_builtin_suite():
    import dataclasses

    assert set(JINJA) == set(builtin_suite_names())
    for name, (plain, chat) in JINJA.items():
        suite = load_suite(name)
        jinja = dataclasses.replace(suite, prompt=dataclasses.replace(suite.prompt, plain=plain, chat=chat))
        for item in suite.items:
            assert render_plain(jinja, item) == render_plain(suite, item), (name, item.id)
            assert render_chat(jinja, item) == render_chat(suite, item), (name, item.id)


def test_lm_eval_names_give_prompt_choices_and_target(tmp_path):
    rows = [{"uid": "a-1", "category": "c", "lang": "en", "q": "Pick B", "opt_a": "x", "opt_b": "y", "gold": "y"},
            {"uid": "a-2", "category": "c", "lang": "en", "q": "Pick A", "opt_a": "z", "opt_b": "w", "gold": "0"}]
    _write_csv(tmp_path / "items.csv", rows)
    (tmp_path / "suite.yaml").write_text(
        "name: lm\nitems: items.csv\ncolumns: {id: uid}\nscorer: choice\n"
        "doc_to_text: \"{{ q }}\\nAnswer:\"\ndoc_to_choice: \"{{ [opt_a, opt_b] }}\"\ndoc_to_target: gold\n", encoding="utf-8")
    suite = load_suite(tmp_path / "suite.yaml")
    assert [(i.choices, i.label) for i in suite.items] == [(("x", "y"), 1), (("z", "w"), 0)]
    assert render_plain(suite, suite.items[0]) == "Pick B\nAnswer:"
    assert "gold" not in suite.items[0].fields


def test_a_fixed_choice_list_applies_to_every_row(tmp_path):
    _write_jsonl(tmp_path / "items.jsonl", [{"id": "b-1", "category": "c", "lang": "en", "claim": "Sky is blue", "label": 0}])
    (tmp_path / "suite.yaml").write_text("name: yn\nitems: items.jsonl\nscorer: choice\nprompt: \"{claim}?\"\ndoc_to_choice: [\"yes\", \"no\"]\n", encoding="utf-8")
    assert load_suite(tmp_path / "suite.yaml").items[0].choices == ("yes", "no")


# Bad input: one line on stderr and exit 1, naming the place to fix.
def _main(args: list[str]) -> tuple[int, str, str]:
    """Runs the real entry point (with its error boundary); returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from qfid.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["qfid", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exited:
        code = exited.code or 0
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def _csv(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.csv").write_text(text, encoding="utf-8")


BAD = {
    "column mapped to nothing": (
        "items.csv", "columns: {answer: gold}\n", "id,category,lang,clause,question,answer\nq-1,c,en,x,y,z\n",
        r"suite\.yaml:6: columns\.answer: maps to column 'gold', which is not in the data"),
    "unknown mapping key": (
        "items.csv", "columns: {answr: gold}\n", "id,category,lang,clause,question,gold\nq-1,c,en,x,y,z\n",
        r"columns\.answr: unknown item key.*did you mean 'answer'"),
    "missing answer": (
        "items.csv", "", "id,category,lang,clause,question,answer\nq-1,c,en,x,y,z\nq-2,c,en,x,y,\n",
        r"items: item q-2: the exact scorer needs an answer"),
    "duplicate id": (
        "items.csv", "", "id,category,lang,clause,question,answer\nq-1,c,en,x,y,z\nq-1,c,en,x,y,w\n",
        r"items\.csv:3: id: duplicate id 'q-1' \(first on line 2\)"),
    "identical rows without ids": (
        "items.csv", "", "category,lang,clause,question,answer\nc,en,x,y,z\nc,en,x,y,z\n",
        r"items\.csv:3: id: duplicate id 'id-[0-9a-f]{12}'.*identical"),
    "bad row after a multi-line cell": (
        "items.csv", "", 'id,category,lang,clause,question,answer\nq-1,c,en,"two\nlines",y,z\nq-2,c,english,x,y,z\n',
        r"items\.csv:4: lang: must be a language code"),
    "row with too many cells": (
        "items.csv", "", "id,category,lang,clause,question,answer\nq-1,c,en,x,y,z\nq-2,c,en,x,y,z,extra\n",
        r"items\.csv: not valid CSV: .*line 3"),
    "malformed JSONL line": (
        "items.jsonl", "", '{"id": "q-1", "category": "c", "lang": "en", "clause": "x", "question": "y", "answer": "z"}\n{"id": "q-2",\n',
        r"items\.jsonl:2: not valid JSON"),
    "choices cell is not JSON": (
        "items.csv", "", "id,category,lang,clause,question,answer,choices,label\nq-1,c,en,x,y,z,a|b,0\n",
        r"items\.csv:2: choices: a text cell must hold a JSON list"),
    "gap in numbered choices": (
        "items.csv", "", "id,category,lang,clause,question,answer,choice_1,choice_3,label\nq-1,c,en,x,y,z,a,b,0\n",
        r"items\.csv:2: choices: numbered columns must run choice_1, choice_2"),
    "template names an undefined field": (
        "items.csv", "", "id,category,lang,clause,questoin,answer\nq-1,c,en,x,y,z\n",
        r"suite\.yaml:5: items: item q-1: misses field\(s\) question used by the prompt \(the item's fields: clause, questoin\)"),
    "Jinja field undefined": (
        "items.csv", "JINJA", "id,category,lang,clause,questoin,answer\nq-1,c,en,x,y,z\n",
        r"suite\.yaml:\d+: items: item q-1: prompt\.plain: 'question' is undefined \(the item's fields: clause, questoin\)"),
    "Jinja syntax error": (
        "items.csv", "JINJA-BROKEN", "id,category,lang,clause,question,answer\nq-1,c,en,x,y,z\n",
        r"suite\.yaml:3: prompt\.plain: bad Jinja template: .*\(template line 3\)"),
    "target not among the choices": (
        "items.csv", "CHOICE", "id,category,lang,clause,question,gold,choice_1,choice_2\nq-1,c,en,x,y,maybe,yes,no\n",
        r"items\.csv:2: doc_to_target: must give a choice index or one of the choices; got 'maybe'"),
    "unquoted yes/no choices": (
        "items.csv", "DOC_TO_CHOICE", "id,category,lang,clause,question,label\nq-1,c,en,x,y,0\n",
        r"suite\.yaml:\d+: doc_to_choice: must be a list of strings; got \[True, False\].*quote them"),
    "unsupported file type": (
        "items.xlsx", "", "", r"items: unsupported file type '\.xlsx'"),
    "missing local dataset folder": (
        "datasets:./nope:test", "", None, r"datasets:\./nope:test: dataset folder not found"),
    "hub dataset while offline": (
        "datasets:no-such-org/no-such-set:test", "", None,
        r"datasets:no-such-org/no-such-set:test: 'no-such-org/no-such-set' is not a local folder and the Hugging Face hub is offline"),
}
_JINJA = 'prompt:\n  plain: "{{ clause }}\\nQ: {{ question }}\\nA:"\n'


def _bad_suite(folder: Path, items_value: str, extra: str, data: str | None) -> Path:
    if data is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / items_value).write_text(data, encoding="utf-8")
    text = SUITE % items_value + extra
    if extra == "JINJA":
        text = text.replace("JINJA", "").replace('prompt:\n  plain: "{clause}\\nQ: {question}\\nA:"\n', _JINJA)
    elif extra == "JINJA-BROKEN":
        text = text.replace("JINJA-BROKEN", "").replace('prompt:\n  plain: "{clause}\\nQ: {question}\\nA:"\n', _JINJA.replace("}}\\nA", "\\nA"))
    elif extra == "DOC_TO_CHOICE":
        text = text.replace("DOC_TO_CHOICE", "doc_to_choice: [yes, no]\n").replace("scorer: exact", "scorer: choice")
    elif extra == "CHOICE":
        text = text.replace("CHOICE", "doc_to_target: gold\n").replace("scorer: exact", "scorer: choice")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(text, encoding="utf-8")
    return folder / "suite.yaml"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_1(case, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test reaches the network
    items_value, extra, data, expected = BAD[case]
    code, _, err = _main(["suites", "check", str(_bad_suite(tmp_path / "s", items_value, extra, data))])
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert __import__("re").search(expected, err), err


def test_eval_checks_the_suite_before_loading_the_model(tmp_path):
    """The model path does not exist: the suite error must come first."""
    path = _bad_suite(tmp_path / "s", *BAD["duplicate id"][:3])
    code, _, err = _main(["eval", str(tmp_path / "no-such-model"), "--suite", str(path), "--name", "x", "--runs-dir", str(tmp_path / "runs")])
    assert code != 0 and "duplicate id 'q-1'" in err and err.count("\n") == 1, err


# qfid suites new: every scaffold passes check as written, and nothing is overwritten.
@pytest.mark.parametrize("scorer", ["choice", "numeric", "exact", "regex"])
def test_new_scaffolds_a_suite_that_passes_check(scorer, tmp_path):
    folder = tmp_path / f"my-{scorer}"
    assert _main(["suites", "new", str(folder), "--scorer", scorer])[0] == 0
    assert "# " in (folder / "suite.yaml").read_text() and "fields" not in (folder / "items.jsonl").read_text()
    code, out, err = _main(["suites", "check", str(folder / "suite.yaml")])
    assert code == 0, err
    assert f"ok: suite my-{scorer} (3 items)" in out and out.count("╭") == 3  # three rendered prompts
    assert load_suite(folder / "suite.yaml").scorer.type == scorer


def test_new_refuses_to_overwrite_and_unknown_scorers(tmp_path):
    assert _main(["suites", "new", str(tmp_path / "s")])[0] == 0
    code, _, err = _main(["suites", "new", str(tmp_path / "s")])
    assert code != 0 and "already exists" in err
    code, _, err = _main(["suites", "new", str(tmp_path / "t"), "--scorer", "bleu"])
    assert code != 0 and "--scorer 'bleu' is not one of choice, numeric, exact, regex" in err


# The lm-eval export writes these suites, and lm-eval renders them as qfid does.
def _user_suites(tmp_path: Path) -> list:
    rows = [_flat(item) for item in EXPECTED]
    (tmp_path / "gen").mkdir(parents=True)
    _write_csv(tmp_path / "gen" / "items.csv", rows)
    (tmp_path / "gen" / "suite.yaml").write_text(
        "name: my-gen\nitems: items.csv\nscorer: exact\ndoc_to_text: \"{{ clause }}\\nQ: {{ question }}\\nA:\"\n", encoding="utf-8")
    mc_rows = [r for r in rows if r["choices"]]
    (tmp_path / "mc").mkdir()
    _write_csv(tmp_path / "mc" / "items.csv", mc_rows, numbered=True)
    (tmp_path / "mc" / "suite.yaml").write_text(
        "name: my-mc\nitems: items.csv\nscorer: choice\nprompt:\n  plain: \"{{ clause }}\\n{{ question }}\\n"
        "{% for c in choices %}{{ loop.index }}) {{ c }}\\n{% endfor %}Answer:\"\n", encoding="utf-8")
    return [load_suite(tmp_path / "gen" / "suite.yaml"), load_suite(tmp_path / "mc" / "suite.yaml")]


def test_lm_eval_renders_an_exported_user_suite_as_qfid_does(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from qfid.evals.lm_eval_export import export_suites, task_name
    from qfid.evals.render import choice_targets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suites = _user_suites(tmp_path)
    export_suites(suites, tmp_path / "tasks")
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    tasks = manager.load([task_name(s) for s in suites])["tasks"]
    for suite in suites:
        task = tasks[task_name(suite)]
        docs = list(task.test_docs())
        assert [d["id"] for d in docs] == [i.id for i in suite.items]
        for doc, item in zip(docs, suite.items):
            assert task.doc_to_text(doc) == render_plain(suite, item)
            if suite.scorer.type == "choice":
                assert task.doc_to_choice(doc) == choice_targets(suite, item)
                assert task.doc_to_target(doc) == item.label
            else:
                assert task.doc_to_target(doc) == item.answer
    assert "1) Käufer\n2) Verkäufer\nAnswer:" in render_plain(suites[1], suites[1].items[0])


def test_loader_errors_are_qfid_errors_for_library_callers(tmp_path):
    path = _bad_suite(tmp_path / "s", *BAD["duplicate id"][:3])
    with pytest.raises(QfidError, match="duplicate id"):
        load_suite(path)


def test_templates_literal_braces_and_the_sandbox():
    from qfid.evals.templates import RenderError, check_template, render

    assert render("{{ '{' }}{{ x }}{{ '}' }}", {"x": 1}) == "{1}"
    assert render("{x} and {y}", {"x": 1, "y": "b"}) == "1 and b"
    with pytest.raises(QfidError, match=r"prompt\.plain: bad template .*write the template in Jinja"):
        check_template("JSON: {", "prompt.plain")
    with pytest.raises(RenderError, match="unsafe"):
        render("{{ x.__class__.__mro__ }}", {"x": "s"})
