"""`qfid eval --backend openai` through a fault-injecting proxy in front of `qfid serve`
(tiny Llama, loopback): 503s, 429s with Retry-After, delays, and connections dropped before
and after the server processed the request. The run completes, every item is stored once,
the proxy's log shows the retries, Retry-After is honoured, and the records equal a clean
run's. With retries exhausted the command fails with one line, keeps what it finished, and
running it again completes the run."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from tests.cli_helpers import run_cli  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402
from tests.tiny.test_engine_greedy import one_thread  # noqa: E402,F401 (autouse)
from tests.tiny.test_eval_openai_served import assert_same_records, records_of, server  # noqa: E402,F401 (fixture)

SUITES, LIMIT = "finance-mc,finance,general-ppl", 4
FAULTS = ["503", "429", "drop_before", "drop_after", "delay", "pass", "503", "drop_after", "delay", "drop_before"]


@pytest.fixture()
def proxy(server):
    running = FaultProxy(server.url).start()
    yield running
    running.stop()


def eval_args(model_dir, base_url: str, runs_dir, name: str, *extra: str) -> list[str]:
    return ["eval", model_dir, "--backend", "openai", "--base-url", f"{base_url}/v1", "--suite", SUITES, "--name", name,
            "--runs-dir", runs_dir, "--limit", str(LIMIT), "--top-k", "2", "--batch-size", "2", "--concurrency", "2", *extra]


@pytest.fixture(scope="module")
def clean(server, tiny_llama_dir, tmp_path_factory):
    from typer.testing import CliRunner  # capsys is function-scoped; this fixture is per module

    from qfid.cli.app import app

    runs = tmp_path_factory.mktemp("clean")
    result = CliRunner().invoke(app, eval_args(str(tiny_llama_dir), server.url, str(runs), "clean"))
    assert result.exit_code == 0, result.output
    return records_of(runs, "clean")


def test_faults_are_retried_and_the_run_equals_a_clean_one(proxy, tiny_llama_dir, clean, tmp_path, capsys, monkeypatch):
    proxy.script = lambda n: FAULTS[n] if n < len(FAULTS) else "pass"
    result = run_cli(eval_args(tiny_llama_dir, proxy.url, tmp_path, "faulty"), capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    actions = proxy.actions()
    assert actions[:len(FAULTS)] == FAULTS and len(actions) > len(FAULTS)
    faulty = records_of(tmp_path, "faulty")
    from qfid.evals.store import RunStore

    assert len(RunStore(tmp_path, "faulty").records()) == len(faulty) == len(clean)  # each item stored once
    assert_same_records(faulty, clean)
    throttled = next(e for e in proxy.log if e.action == "429")
    retry = next(e for e in proxy.log if e.body_hash == throttled.body_hash and e.time > throttled.time)
    assert retry.time - throttled.time >= proxy.retry_after_s - 0.05  # Retry-After honoured


def test_exhausted_retries_fail_in_one_line_and_a_rerun_completes(proxy, tiny_llama_dir, clean, tmp_path, capsys, monkeypatch):
    first_suite_requests = 8  # finance-mc: 4 items x 4 choices, 2 prompts a request
    proxy.script = lambda n: "pass" if n < first_suite_requests else "503"
    failed = run_cli(eval_args(tiny_llama_dir, proxy.url, tmp_path, "resumed", "--max-retries", "1"), capsys, monkeypatch)
    assert failed.exit_code != 0
    [line] = failed.err.strip().splitlines()
    assert "failed after 1 retries; the server's last answer: 503" in line
    kept = records_of(tmp_path, "resumed")
    assert {suite for suite, _ in kept} == {"finance-mc"} and len(kept) == LIMIT
    proxy.script = lambda n: "pass"
    done = run_cli(eval_args(tiny_llama_dir, proxy.url, tmp_path, "resumed"), capsys, monkeypatch)
    assert done.exit_code == 0, done.err
    assert_same_records(records_of(tmp_path, "resumed"), clean)
