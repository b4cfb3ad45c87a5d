"""`qfid report`: several candidates against one baseline; the HTML is self-contained (no URL,
plots embedded as PNG), the PNG files and the Markdown that links them are written."""
from __future__ import annotations

import base64
import json
import re

import pytest

from qfid.evals.report import compare_many, report_paths, write_report
from tests.cli_helpers import run_cli
from tests.unit.test_compare import record, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _items(wrong: set[str], kl_shift: float) -> list[dict]:
    records = []
    for suite, langs in (("finance", ("en",)), ("multilingual", ("en", "ar", "sw"))):
        for category in ("a", "b"):
            for lang in langs:
                for i in range(12):
                    key = f"{suite}-{category}-{lang}-{i}"
                    records.append(record(suite, key, key not in wrong and i < 10, category, lang,
                                          topk_ids=[[1, 2, 3]], topk_logprobs=[[-0.2, -2.0 - kl_shift, -3.0]]))
    records += [record("general-ppl", f"ppl-{i}", None, "text", scorer="perplexity", gold="", answer_logprob=-30.0 - kl_shift,
                       answer_tokens=10) for i in range(3)]
    return records


@pytest.fixture
def runs(tmp_path):
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, "fp16", _items(set(), 0.0))
    write_run(runs_dir, "int4", _items({f"multilingual-a-ar-{i}" for i in range(8)}, 1.0))
    write_run(runs_dir, "fp8", _items(set(), 0.1))
    return runs_dir


def test_html_is_self_contained_and_embeds_the_plots(runs, tmp_path):
    paths = write_report(compare_many("fp16", ["int4", "fp8"], runs), tmp_path / "out" / "smollm2.html")
    html = paths["html"].read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html.replace("data:image/png;base64,", ""), re.I)
    assert "<script" not in html and "<link" not in html and "<style>" in html
    images = re.findall(r'<figure id="plot-([a-z_]+)"><img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert {name for name, _ in images} == {"category_delta", "flips", "kl_by_language", "perplexity_vs_accuracy"}
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for _, data in images)
    assert re.search(r'<tr class="regression"><td>multilingual/a</td>', html)
    assert html.count("<h2>int4 vs fp16</h2>") == 1 and html.count("<h2>fp8 vs fp16</h2>") == 1


def test_png_files_markdown_and_json_are_written(runs, tmp_path):
    paths = write_report(compare_many("fp16", ["int4", "fp8"], runs), tmp_path / "out" / "smollm2.html")
    assert paths == report_paths(tmp_path / "out" / "smollm2.html")
    pngs = sorted(p.name for p in paths["plots"].glob("*.png"))
    assert pngs == ["category_delta.png", "flips.png", "kl_by_language.png", "perplexity_vs_accuracy.png"]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in paths["plots"].glob("*.png"))
    markdown = paths["md"].read_text()
    assert "](smollm2-plots/category_delta.png)" in markdown
    overview = [line for line in markdown.splitlines() if line.startswith("| int4 |") or line.startswith("| fp8 |")]
    assert len(overview) == 2 and "multilingual/a" in overview[0] and "| 0 |" in overview[1]
    data = json.loads(paths["json"].read_text())
    assert [c["candidate"]["name"] for c in data] == ["int4", "fp8"]


def test_kl_plot_is_left_out_without_languages_or_top_k(tmp_path):
    write_run(tmp_path, "base", [record("s", f"s-{i}", True) for i in range(5)])
    write_run(tmp_path, "cand", [record("s", f"s-{i}", i > 0) for i in range(5)])
    paths = write_report(compare_many("base", ["cand"], tmp_path), tmp_path / "out")
    assert paths["html"].name == "report.html"
    assert sorted(p.stem for p in paths["plots"].glob("*.png")) == ["category_delta", "flips", "perplexity_vs_accuracy"]


def test_cli_report_several_candidates(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "reports" / "x.html"
    result = run_cli(["report", "fp16", "int4", "fp8", "-o", out, "--runs-dir", runs], capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    assert out.is_file() and (tmp_path / "reports" / "x-plots" / "flips.png").is_file()
    assert "int4: 3 significant regression(s) (multilingual, multilingual/a, multilingual/ar)" in result.out
    missing = run_cli(["report", "fp16", "-o", out, "--runs-dir", runs], capsys, monkeypatch)
    assert missing.exit_code == 2


def test_every_new_command_has_examples_in_its_help(capsys, monkeypatch):
    for command in ("compare", "gate", "report"):
        result = run_cli([command, "--help"], capsys, monkeypatch)
        assert result.exit_code == 0 and "Examples:" in result.out and f"qfid {command} " in result.out
