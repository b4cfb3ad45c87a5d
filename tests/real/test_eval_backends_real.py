"""Issue bar: the same suites run through the engine backend and the HF backend on the default
model give the same per-item greedy predictions, and log-likelihoods within 1e-4 (fp32)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]

SUITES = "finance-mc,finance,general-ppl"


def _run(backend_name: str, model_dir, runs_dir):
    from qfid.evals.backends import make_backend
    from qfid.evals.runner import RunOptions, build_manifest, run_suites
    from qfid.evals.store import RunStore
    from qfid.evals.suite import load_suites

    suites = load_suites(SUITES)
    options = RunOptions(model=str(model_dir), limit=4, seed=1, top_k=5, batch_items=8, max_tokens=16)
    backend = make_backend(backend_name, str(model_dir), batch_size=8, dtype="float32")
    store = RunStore(runs_dir, backend_name)
    store.open(build_manifest(backend_name, backend, suites, options))
    run_suites(backend, suites, store, options)
    return store.records().sort_values(["suite", "id"]).reset_index(drop=True)


def test_engine_and_hf_backends_agree_on_the_default_model(default_model_dir, tmp_path):
    hf = _run("hf", default_model_dir, tmp_path)
    engine = _run("engine", default_model_dir, tmp_path)
    assert list(hf["id"]) == list(engine["id"]) and len(hf) >= 9
    assert list(hf["prediction"]) == list(engine["prediction"])
    assert list(hf["correct"]) == list(engine["correct"])
    choice = hf["scorer"] == "choice"
    for a, b in zip(hf.loc[choice, "choice_logprobs"], engine.loc[choice, "choice_logprobs"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)
    scored = hf["answer_logprob"].notna()
    per_token = lambda frame: frame.loc[scored, "answer_logprob"] / frame.loc[scored, "answer_tokens"]  # noqa: E731
    np.testing.assert_allclose(per_token(engine), per_token(hf), atol=1e-4)
