"""lm-eval agreement on the tiny Llama: a suite exported as lm-eval tasks scores the same,
item by item, under `lm_eval --model hf`, under `--model qfid` (the bridge) and under
`qfid eval --backend hf`: multiple-choice acc and acc_norm, per-choice log-likelihoods,
greedy generations and rolling log-likelihoods. Both sides see the same items: lm-eval is
given the indices qfid's seeded --limit picked.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from qfid.errors import QfidError  # noqa: E402
from qfid.evals.lm_eval_export import export_suites, task_name  # noqa: E402
from qfid.evals.runner import select_items  # noqa: E402
from qfid.evals.suite import load_suite  # noqa: E402

SUITES = ("finance-mc", "finance", "general-ppl")  # loglikelihood, generate_until, loglikelihood_rolling
LIMIT, SEED = 6, 0


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-eval-tasks")
    export_suites([load_suite(name) for name in SUITES], out)
    return out


@pytest.fixture(scope="module")
def qfid_records(tiny_llama_dir, tmp_path_factory):
    """`qfid eval --backend hf` on the selected items, records keyed by (suite, id)."""
    from typer.testing import CliRunner

    from qfid.cli.app import app
    from qfid.evals.store import RunStore

    runs = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["eval", str(tiny_llama_dir), "--suite", ",".join(SUITES), "--name", "tiny", "--backend", "hf",
                                      "--runs-dir", str(runs), "--limit", str(LIMIT), "--seed", str(SEED), "--batch-size", "1", "--top-k", "0",
                                      "--dtype", "float32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {(r["suite"], r["id"]): r for r in RunStore(runs, "tiny").records().to_dict("records")}


def _lm_eval(model: str, model_args: dict, tasks_dir, suites=SUITES) -> dict:
    """lm-eval's Python API on qfid's --limit selection: {task: (results, samples by doc id)}."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    chosen = {task_name(s): _selected_indices(s) for s in map(load_suite, suites)}
    out = simple_evaluate(model=model, model_args=model_args, tasks=list(chosen), samples=chosen, batch_size=1, device="cpu",
                          task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                          bootstrap_iters=0, log_samples=True)
    return {task: (out["results"][task], {s["doc"].get("id", s["doc_id"]): s for s in out["samples"][task]}) for task in chosen}


def _selected_indices(suite) -> list[int]:
    picked = {item.id for item in select_items(suite.items, LIMIT, SEED)}
    return [index for index, item in enumerate(suite.items) if item.id in picked]


def _accuracy(records: dict, suite: str, field: str) -> float:
    values = [r[field] for (name, _), r in records.items() if name == suite]
    return sum(values) / len(values)


def _assert_choice_agreement(run: dict, records: dict) -> None:
    results, samples = run[task_name(load_suite("finance-mc"))]
    assert len(samples) == LIMIT
    assert results["acc,none"] == pytest.approx(_accuracy(records, "finance-mc", "correct"))
    assert results["acc_norm,none"] == pytest.approx(_accuracy(records, "finance-mc", "correct_norm"))
    for item_id, sample in samples.items():
        record = records[("finance-mc", item_id)]
        assert [resp[0][0] for resp in sample["resps"]] == pytest.approx(list(record["choice_logprobs"]), abs=1e-4)
        assert (sample["acc"], sample["acc_norm"]) == (float(record["correct"]), float(record["correct_norm"]))


def test_lm_eval_hf_scores_an_exported_choice_suite_like_qfid_eval(tiny_llama_dir, tasks_dir, qfid_records):
    run = _lm_eval("hf", {"pretrained": str(tiny_llama_dir), "dtype": "float32"}, tasks_dir, suites=("finance-mc",))
    _assert_choice_agreement(run, qfid_records)


def test_model_qfid_answers_all_three_request_kinds_like_qfid_eval(tiny_llama_dir, tasks_dir, qfid_records):
    import qfid.evals.lm_eval  # noqa: F401  registers --model qfid

    run = _lm_eval("qfid", {"pretrained": str(tiny_llama_dir), "backend": "hf", "dtype": "float32"}, tasks_dir)
    _assert_choice_agreement(run, qfid_records)
    _, generated = run[task_name(load_suite("finance"))]
    assert {i: s["resps"][0][0] for i, s in generated.items()} == {i: r["prediction"] for (n, i), r in qfid_records.items() if n == "finance"}
    results, rolling = run[task_name(load_suite("general-ppl"))]
    for item_id, sample in rolling.items():
        assert sample["resps"][0][0] == pytest.approx(qfid_records[("general-ppl", item_id)]["answer_logprob"], abs=1e-4)
    assert results["word_perplexity,none"] > 1


@pytest.mark.slow
def test_python_m_runs_lm_eval_cli_with_qfid_registered(tiny_llama_dir, tasks_dir, tmp_path):
    task = task_name(load_suite("finance-mc"))
    command = [sys.executable, "-m", "qfid.evals.lm_eval", "run", "--model", "qfid", "--model_args", f"pretrained={tiny_llama_dir}",
               "--include_path", str(tasks_dir), "--tasks", task, "--limit", "2", "--batch_size", "2", "--output_path", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [results_file] = tmp_path.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"][task]
    assert results["sample_len"] == 2 and 0.0 <= results["acc,none"] <= 1.0


def test_generation_settings_refuse_sampling_and_accept_one_stop_string():
    from qfid.evals.lm_eval import DEFAULT_MAX_GEN_TOKS, generation_settings

    assert generation_settings({"until": "\n\n", "do_sample": False, "temperature": 0}) == (("\n\n",), DEFAULT_MAX_GEN_TOKS)
    assert generation_settings({"until": ["a", "b"], "max_gen_toks": 7}) == (("a", "b"), 7)
    with pytest.raises(QfidError, match="greedily"):
        generation_settings({"until": [], "do_sample": True})


def test_unknown_backend_is_named_in_the_error(tiny_llama_dir):
    from qfid.evals.lm_eval import QfidLM

    with pytest.raises(QfidError, match="unknown backend 'hff'"):
        QfidLM(pretrained=str(tiny_llama_dir), backend="hff")
