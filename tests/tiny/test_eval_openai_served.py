"""`qfid eval --backend openai` against a real `qfid serve` on a loopback port (tiny Llama,
fp32) scores item by item like the engine backend on the same weights: per-item
log-likelihoods within 1e-4 and equal generations, for a choice suite, a numeric
generation suite and a perplexity suite; continuations without a leading space (tokens
that merge across the boundary) included, since token-id prompts keep lm-eval's split."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from qfid.engine.llm import LLM  # noqa: E402
from tests.tiny.test_engine_greedy import one_thread  # noqa: E402,F401 (autouse)
from tests.tiny.test_engine_server import MODEL, RunningServer  # noqa: E402

SUITES = "finance-mc,finance,general-ppl"
LIMIT, TOP_K, TOL = 4, 3, 1e-4


def served_llm(model_dir) -> LLM:
    return LLM(model_dir, dtype="float32", num_kv_blocks=512, max_model_len=1024)


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    running = RunningServer(served_llm(tiny_llama_dir), max_pending=256)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def engine_backend(tiny_llama_dir):
    from qfid.evals.backends.engine import EngineBackend

    return EngineBackend(served_llm(tiny_llama_dir), model_dir=tiny_llama_dir)


def openai_backend(server, model_dir, **options):
    from qfid.evals.backends.openai import OpenAIBackend, local_tokenizer

    return OpenAIBackend(MODEL, base_url=f"{server.url}/v1", tokenizer=local_tokenizer(str(model_dir), None), **options)


def run_cli(args: list[str]):
    from typer.testing import CliRunner

    from qfid.cli.app import app

    return CliRunner().invoke(app, ["eval", *args])


def records_of(runs_dir, name: str) -> dict:
    from qfid.evals.store import RunStore

    return {(r["suite"], r["id"]): r for r in RunStore(runs_dir, name).records().to_dict("records")}


def engine_records(engine_backend, runs_dir) -> dict:
    from qfid.evals.runner import RunOptions, build_manifest, run_suites
    from qfid.evals.store import RunStore
    from qfid.evals.suite import load_suites

    suites = load_suites(SUITES)
    options = RunOptions(model=MODEL, limit=LIMIT, top_k=TOP_K)
    store = RunStore(runs_dir, "engine")
    store.open(build_manifest("engine", engine_backend, suites, options))
    run_suites(engine_backend, suites, store, options)
    return records_of(runs_dir, "engine")


def assert_same_records(served: dict, expected: dict, at_least: int = 3 * LIMIT) -> None:
    """Equal predictions and top-k ids; log-likelihoods within TOL."""
    assert served.keys() == expected.keys() and len(served) >= at_least
    for key, want in expected.items():
        got = served[key]
        assert got["answer_tokens"] == want["answer_tokens"], key
        assert got["answer_logprob"] == pytest.approx(want["answer_logprob"], abs=TOL), key
        if want["scorer"] != "perplexity":
            assert got["prediction"] == want["prediction"], key
            assert bool(got["answer_greedy"]) == bool(want["answer_greedy"]), key
            assert [list(r) for r in got["topk_ids"]] == [list(r) for r in want["topk_ids"]], key
            for a, b in zip(got["topk_logprobs"], want["topk_logprobs"]):
                assert list(a) == pytest.approx(list(b), abs=TOL)
        if want["scorer"] == "choice":
            assert list(got["choice_logprobs"]) == pytest.approx(list(want["choice_logprobs"]), abs=TOL), key


@pytest.fixture(scope="module")
def expected(engine_backend, tmp_path_factory):
    return engine_records(engine_backend, tmp_path_factory.mktemp("engine-runs"))


def test_cli_run_against_qfid_serve_equals_the_engine_backend(server, tiny_llama_dir, expected, tmp_path):
    result = run_cli([str(tiny_llama_dir), "--backend", "openai", "--base-url", f"{server.url}/v1", "--suite", SUITES,
                      "--name", "served", "--runs-dir", str(tmp_path), "--limit", str(LIMIT), "--top-k", str(TOP_K),
                      "--concurrency", "8", "--batch-size", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert_same_records(records_of(tmp_path, "served"), expected)


def test_continuations_without_a_leading_space_score_as_the_engine_does(server, tiny_llama_dir, engine_backend):
    requests = [("Total: 12", "34"), ("The tenant", "s shall pay"), ("abc", "def"), ("", "whole text"), ("x ", "y")]
    served = openai_backend(server, tiny_llama_dir, concurrency=3, batch_size=1).loglikelihood(requests, top_k=2)
    local = engine_backend.loglikelihood(requests, top_k=2)
    for got, want in zip(served, local):
        assert got.n_tokens == want.n_tokens and got.is_greedy == want.is_greedy
        assert got.logprob == pytest.approx(want.logprob, abs=TOL)
        assert got.topk.ids == want.topk.ids


def test_servers_that_refuse_max_tokens_zero_get_one(server, tiny_llama_dir, engine_backend, monkeypatch):
    """An older server answers 400 to max_tokens 0 with echo: the backend switches to 1 and
    the generated token is not counted."""
    from qfid.engine.protocol import CompletionRequest

    real = CompletionRequest.engine_max_tokens
    monkeypatch.setattr(CompletionRequest, "engine_max_tokens",
                        lambda self: (_ for _ in ()).throw(__import__("qfid.errors").errors.QfidError("max_tokens must be >= 1"))
                        if self.max_tokens == 0 else real(self))
    backend = openai_backend(server, tiny_llama_dir)
    requests = [("The price is", " 12"), ("a", "b")]
    got, want = backend.loglikelihood(requests, top_k=0), engine_backend.loglikelihood(requests, top_k=0)
    assert backend.prompt_only is False
    assert [g.logprob for g in got] == pytest.approx([w.logprob for w in want], abs=TOL)
    assert [g.n_tokens for g in got] == [w.n_tokens for w in want]


def test_chat_runs_generate_through_chat_completions_and_score_through_completions(server, tiny_llama_dir, engine_backend, tmp_path):
    """Under --chat: generations from /v1/chat/completions equal the engine backend's on the
    locally templated prompt, and log-likelihood items (templated here) score alike."""
    from qfid.evals.evaluate import evaluate_batch
    from qfid.evals.runner import select_items
    from qfid.evals.suite import load_suite

    backend = openai_backend(server, tiny_llama_dir)
    routes = []
    post_all = backend.http.post_all
    backend.http.post_all = lambda path, bodies: routes.append(path) or post_all(path, bodies)
    for name in ("finance", "finance-mc"):
        suite = load_suite(name)
        items = select_items(suite.items, 2, 0)
        served = evaluate_batch(backend, suite, items, TOP_K, backend.format_chat)
        local = evaluate_batch(engine_backend, suite, items, TOP_K, engine_backend.format_chat)
        assert_same_records({r.id: r.to_dict() for r in served}, {r.id: r.to_dict() for r in local}, at_least=len(items))
    assert "/chat/completions" in routes and "/completions" in routes
