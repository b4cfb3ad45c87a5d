"""`qfid eval` end to end on the tiny Llama: the run layout pandas reads, --limit/--seed,
resuming after an interruption without redoing items, and refusing to mix settings."""
from __future__ import annotations

import json

import pytest

from qfid.errors import QfidError
from qfid.evals.runner import select_items
from qfid.evals.suite import load_suite

SUITES = "legal,finance,general-ppl"


def _eval(model_dir, runs_dir, *extra):
    from typer.testing import CliRunner

    from qfid.cli.app import app

    args = ["eval", str(model_dir), "--suite", SUITES, "--name", "tiny", "--runs-dir", str(runs_dir),
            "--limit", "3", "--max-tokens", "4", "--batch-size", "2", "--top-k", "4", *extra]
    return CliRunner().invoke(app, args)


def test_select_items_is_seeded_and_keeps_parallel_languages_together():
    items = load_suite("multilingual").items
    picked = select_items(items, 25, seed=1)
    assert picked == select_items(items, 25, seed=1) != select_items(items, 25, seed=2)
    groups = {i.base_id for i in picked}
    assert len(picked) == 10 * len(groups) >= 25
    assert [i.id for i in picked] == [i.id for i in items if i.base_id in groups]
    assert select_items(items, None, 0) == list(items)


def test_eval_writes_a_run_pandas_reads(tiny_llama_dir, tmp_path):
    import pandas as pd

    result = _eval(tiny_llama_dir, tmp_path)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = tmp_path / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["identity"]["limit"] == 3
    assert set(manifest["results"]) == {"legal", "finance", "general-ppl"}
    assert manifest["model"]["backend"] == "engine" and manifest["model"]["architecture"] == "LlamaForCausalLM"
    records = pd.read_parquet(run / "records.parquet")
    assert len(records) == 9 and not (run / "records").exists()
    legal = records[records.suite == "legal"]
    assert legal.choice_logprobs.map(len).ge(2).all() and legal.pred_index.notna().all()
    assert (legal.pred_index == legal.choice_logprobs.map(lambda lp: int(lp.argmax()))).all()
    assert (legal.correct == (legal.prediction == legal.gold)).all()
    finance = records[records.suite == "finance"]
    assert finance.prediction.notna().all() and finance.answer_tokens.gt(0).all()
    assert all(len(ids) == n and len(ids[0]) == 4 for ids, n in zip(finance.topk_ids, finance.answer_tokens))
    assert records[records.suite == "general-ppl"].answer_logprob.lt(0).all()
    assert manifest["results"]["legal"]["accuracy"] == pytest.approx(legal.correct.mean())
    assert "items/s" in result.output


def test_interrupted_run_resumes_without_redoing_items(tiny_llama_dir, tmp_path, monkeypatch):
    import qfid.evals.runner as runner

    real = runner.evaluate_batch
    seen: list[str] = []

    def counting(backend, suite, items, *args):
        seen.extend(f"{suite.name}/{i.id}" for i in items)
        if suite.name == "finance":
            raise RuntimeError("the machine went away half way")
        return real(backend, suite, items, *args)

    monkeypatch.setattr(runner, "evaluate_batch", counting)
    first = _eval(tiny_llama_dir, tmp_path)
    assert isinstance(first.exception, RuntimeError)
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["status"] == "running"
    finished_legal = [s for s in seen if s.startswith("legal/")]
    assert len(finished_legal) == 3

    seen.clear()
    monkeypatch.setattr(runner, "evaluate_batch", lambda backend, suite, items, *a: (seen.extend(f"{suite.name}/{i.id}" for i in items), real(backend, suite, items, *a))[1])
    second = _eval(tiny_llama_dir, tmp_path)
    assert second.exit_code == 0, second.output + repr(second.exception)
    assert not any(s.startswith("legal/") for s in seen)  # finished items are not redone
    import pandas as pd

    records = pd.read_parquet(tmp_path / "tiny" / "records.parquet")
    assert len(records) == 9 and not records.duplicated(["suite", "id"]).any()


def test_a_run_name_with_other_settings_is_refused(tiny_llama_dir, tmp_path):
    assert _eval(tiny_llama_dir, tmp_path).exit_code == 0
    clash = _eval(tiny_llama_dir, tmp_path, "--seed", "5")
    assert isinstance(clash.exception, QfidError) and "seed: 0 -> 5" in str(clash.exception)
    assert _eval(tiny_llama_dir, tmp_path, "--seed", "5", "--overwrite").exit_code == 0


def test_dtype_is_part_of_the_run_and_checked(tiny_llama_dir, tmp_path):
    result = _eval(tiny_llama_dir, tmp_path, "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["identity"]["dtype"] == manifest["model"]["dtype"] == "bfloat16"
    clash = _eval(tiny_llama_dir, tmp_path, "--dtype", "float32")
    assert isinstance(clash.exception, QfidError) and "dtype: 'bfloat16' -> 'float32'" in str(clash.exception)
    bad = _eval(tiny_llama_dir, tmp_path, "--dtype", "fp64", "--overwrite")
    assert isinstance(bad.exception, QfidError) and "--dtype 'fp64'" in str(bad.exception)


def test_chat_prompts_use_the_tokenizer_template(tiny_llama_dir, tmp_path):
    import pandas as pd

    result = _eval(tiny_llama_dir, tmp_path, "--chat")
    assert result.exit_code == 0, result.output + repr(result.exception)
    prompts = pd.read_parquet(tmp_path / "tiny" / "records.parquet").query("suite == 'legal'").prompt
    assert prompts.str.startswith("<|im_start|>user\n").all() and prompts.str.endswith("<|im_start|>assistant\n").all()
