"""`qfid sweep` end to end on the tiny Llama: quantize, keep sensitive units, evaluate,
compare, gate, report; exit 0 when something passes and 1 when nothing does; a second call
reuses every checkpoint and run. `qfid demo` is the sweep with the demo's defaults and
exits 0 whatever the verdict."""
from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli

SCHEMES = "rtn-int4,rtn-int4+keep16:2,fp8"
LENIENT = "[gate]\nmax_accuracy_drop = 100.0\nmax_flip_rate = 1.0\nmax_mean_kl = 10.0\n"
STRICT = "[gate]\nmax_accuracy_drop = 0.0\nmax_flip_rate = 0.0\nmax_mean_kl = 1e-12\nrequire_significance = false\n"


def _sweep(model, out, gate_file, capsys, monkeypatch, *extra):
    args = ["sweep", model, "--suite", "finance-mc,general", "--schemes", SCHEMES, "--limit", "12",
            "-o", out, "--config", gate_file, *extra]
    return run_cli(args, capsys, monkeypatch)


@pytest.fixture(scope="module")
def gates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gates")
    (folder / "lenient.toml").write_text(LENIENT)
    (folder / "strict.toml").write_text(STRICT)
    return folder


def test_sweep_recommends_the_smallest_passing_checkpoint(tiny_llama_dir, tmp_path, gates, capsys, monkeypatch):
    result = _sweep(tiny_llama_dir, tmp_path / "sw", gates / "lenient.toml", capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    report = tmp_path / "sw" / "report"
    summary = json.loads((report / "summary.json").read_text())
    rows = {r["scheme"]: r for r in summary["rows"]}
    assert list(rows) == ["bf16", "rtn-int4", "rtn-int4+keep16:2", "fp8"]
    assert all(r["output_tok_s"] > 0 for r in rows.values()) and rows["bf16"]["throughput_ratio"] == 1.0
    assert rows["rtn-int4"]["size_mib"] < rows["rtn-int4+keep16:2"]["size_mib"] < rows["bf16"]["size_mib"]
    assert summary["verdict"]["overall"] == {**summary["verdict"]["overall"], "scheme": "rtn-int4", "passes": True}
    assert "rtn-int4" in summary["pareto_front"]["worst_group_delta"]
    kept = summary["kept_units"]["rtn-int4+keep16:2"]
    ranking = summary["sensitivity"]["rtn-int4"]
    assert kept == [u["unit"] for u in ranking[:2]]
    (table,) = summary["keep"]
    assert [r["n"] for r in table["rows"]] == [0, 2]
    markdown = (report / "report.md").read_text()
    assert "## Sweep: size, speed and fidelity" in markdown and "## Pareto front" in markdown
    assert (report / "report-plots" / "pareto.png").stat().st_size > 1000
    assert "Pareto front" in (report / "report.html").read_text()
    config = json.loads((tmp_path / "sw" / "checkpoints" / "rtn-int4+keep16-2" / "config.json").read_text())
    assert set(kept[0]) <= set(config["quantization_config"]["modules_to_not_convert"])
    meta = json.loads((tmp_path / "sw" / "checkpoints" / "rtn-int4+keep16-2" / "qfid_quant.json").read_text())
    assert [u["unit"] for u in meta["kept_units"]] == kept and meta["kept_units"][0]["kl"] == ranking[0]["kl"]
    time = summary["time"]   # every step timed once: 3 quantizations, 1 ranking, 4 evals, 4 + 4 measures
    assert len(time["by_step"]) == 16 and not time["unrecorded"] and all(t >= 0 for t in time["by_step"].values())
    assert set(time["by_kind"]) == {"quantization", "sensitivity", "evaluation", "throughput", "held-out perplexity"}
    assert time["total_s"] == pytest.approx(sum(time["by_step"].values()), abs=0.5)
    assert "Time: the sweep's steps took" in markdown


def test_nothing_passes_exits_1_and_a_rerun_reuses_everything(tiny_llama_dir, tmp_path, gates, capsys, monkeypatch):
    first = _sweep(tiny_llama_dir, tmp_path / "sw", gates / "strict.toml", capsys, monkeypatch, "--no-bench")
    assert first.exit_code == 1, first.err
    summary = json.loads((tmp_path / "sw" / "report" / "summary.json").read_text())
    overall = summary["verdict"]["overall"]
    assert not overall["passes"] and overall["scheme"] == "bf16" and set(overall["broken"]) == {"rtn-int4", "rtn-int4+keep16:2", "fp8"}
    assert "nothing passes" in (tmp_path / "sw" / "report" / "report.md").read_text()
    again = _sweep(tiny_llama_dir, tmp_path / "sw", gates / "strict.toml", capsys, monkeypatch, "--no-bench")
    assert again.exit_code == 1
    assert " -> " not in again.out and "(limit 12" not in again.out   # no "quantize X -> ...", no "eval X on ..."
    assert again.out.count("reusing") >= 7   # 3 checkpoints (one twice: base of the kept scheme), 4 runs
    rerun = json.loads((tmp_path / "sw" / "report" / "summary.json").read_text())["time"]
    assert rerun == {**summary["time"], "cpu_cores": rerun["cpu_cores"]}   # the first call's figures, each step once


def test_bad_arguments_fail_with_one_line(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    bad = run_cli(["sweep", tiny_llama_dir, "--schemes", "gptq", "-o", tmp_path / "x"], capsys, monkeypatch)
    assert bad.exit_code != 0 and "unknown scheme 'gptq'" in bad.err and len(bad.err.strip().splitlines()) == 1
    typo = run_cli(["sweep", tiny_llama_dir, "--suite", "financ", "-o", tmp_path / "y"], capsys, monkeypatch)
    assert typo.exit_code != 0 and not (tmp_path / "y" / "checkpoints").exists()


def test_demo_is_the_sweep_with_defaults_and_exits_0_whatever_the_verdict(tmp_path, capsys, monkeypatch):
    import qfid.demo as demo
    from qfid.sweep.run import SweepResult

    seen = {}

    def fake_sweep(options, console=None):
        seen["options"] = options
        return SweepResult({}, passes=False, report={"html": tmp_path / "r.html", "md": tmp_path / "r.md"})

    monkeypatch.setattr(demo, "run_sweep", fake_sweep)
    result = run_cli(["demo", "-o", tmp_path / "o", "--reports", tmp_path / "rep"], capsys, monkeypatch)
    assert result.exit_code == 0
    options = seen["options"]
    assert [s.name for s in options.schemes] == demo.DEMO_SCHEMES.split(",")
    assert options.limit == demo.DEMO_LIMIT and options.report == tmp_path / "rep" / "demo"
    assert set(options.suites) >= {"finance", "legal", "multilingual", "general"}
