"""`qfid bench` on the tiny random Llama: the workload is reproducible, every engine produces
exactly the tokens each request asked for, records carry the required keys, a quantized
scheme is built once and reused, and the CLI runs end to end. No timing assertions: the
numbers are only checked for being there and positive."""
from __future__ import annotations

import json

import pytest

from qfid.bench import harness as bench
from qfid.bench.harness import ENGINES, REQUIRED_KEYS, BenchSpec, EngineResult, Trace, percentile, run_all, summarize
from qfid.bench.workload import make_workload, parse_range
from qfid.errors import QfidError
from tests.cli_helpers import run_cli
from tests.tiny.test_engine_greedy import one_thread  # noqa: F401 (autouse: one torch thread here too)

SMALL_KV_GB = 0.01  # HF's CB masks scale with its cache; a tiny model needs little


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def small_workload(tokenizer, seed=0, **options):
    return make_workload(tokenizer, 5, (6, 40), (2, 9), seed=seed, **options)


def test_same_seed_gives_the_same_workload_within_the_ranges(tokenizer):
    first, again, other = small_workload(tokenizer), small_workload(tokenizer), small_workload(tokenizer, seed=1)
    assert first == again and first != other
    assert all(6 <= len(r.prompt_ids) <= 40 and 2 <= r.output_len <= 9 for r in first)
    assert [r.arrival_s for r in first] == [0.0] * 5  # bursty: everything at once


def test_uniform_arrivals_are_a_seeded_increasing_stream(tokenizer):
    slow = small_workload(tokenizer, kind="uniform", rate=2.0)
    fast = small_workload(tokenizer, kind="uniform", rate=200.0)
    arrivals = [r.arrival_s for r in slow]
    assert arrivals == [r.arrival_s for r in small_workload(tokenizer, kind="uniform", rate=2.0)]
    assert arrivals[0] == 0.0 and all(a < b for a, b in zip(arrivals, arrivals[1:]))
    assert fast[-1].arrival_s < slow[-1].arrival_s  # same draws, 100x the rate


def test_random_prompts_avoid_special_tokens(tokenizer):
    special = set(tokenizer.all_special_ids)
    prompts = small_workload(tokenizer, source="random")
    assert not special & {token for r in prompts for token in r.prompt_ids}
    assert prompts != small_workload(tokenizer)  # text windows differ from vocab draws


@pytest.mark.parametrize("text, expected", [("32-256", (32, 256)), ("64", (64, 64))])
def test_parse_range(text, expected):
    assert parse_range(text, "--prompt-len") == expected


@pytest.mark.parametrize("text", ["0-5", "9-3", "abc", "4-x"])
def test_parse_range_rejects_bad_ranges(text):
    with pytest.raises(QfidError, match="--output-len"):
        parse_range(text, "--output-len")


def test_percentile_and_summary_on_known_traces():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5 and percentile([], 99) == 0.0
    assert percentile([1.0, 2.0], 100) == 2.0
    traces = [Trace(0.0, 1.0, 3.0, [7] * 5), Trace(1.0, 4.0, 4.0, [7])]
    record = summarize("x", traces, wall_s=4.0, cpu_s=2.0)
    assert record["output_tokens"] == 6 and record["output_tokens_per_s"] == 1.5 and record["requests_per_s"] == 0.5
    assert record["ttft_p50_s"] == 2.0  # TTFTs 1 and 3
    assert record["tpot_p50_s"] == 0.5  # (3 - 1) / 4; a one-token request has no TPOT
    assert record["cpu_per_wall"] == 0.5


@pytest.fixture(scope="module")
def workload(tokenizer):
    """Poisson arrivals fast enough to overlap, so every engine admits work mid-run."""
    return small_workload(tokenizer, kind="uniform", rate=50.0)


@pytest.fixture(scope="module")
def results(tiny_llama_dir, workload):
    spec = BenchSpec(str(tiny_llama_dir), threads=1, hf_batch=2, kv_cache_gb=SMALL_KV_GB)
    return run_all(list(ENGINES), spec, workload, isolate=False)


def test_every_engine_generates_exactly_the_requested_tokens(results, workload):
    assert [r.record["engine"] for r in results] == list(ENGINES)
    for result in results:
        assert result.note is None, result.note
        assert result.output_lens == [r.output_len for r in workload], result.record["engine"]
        assert result.record["tokens_as_requested"] is True


def test_records_have_the_required_keys_as_positive_numbers(results, workload):
    for result in results:
        for key in REQUIRED_KEYS[1:]:
            assert result.record[key] > 0, (result.record["engine"], key)
        assert result.record["output_tokens"] == sum(r.output_len for r in workload)
        assert result.record["cpu_s"] > 0 and result.record["rss_isolated"] is False
    json.dumps([r.record for r in results])  # plain JSON types only


def test_qfid_reports_kv_cache_use_and_waste(results):
    record = results[0].record
    assert 0 < record["kv_peak_used_mb"] <= record["kv_reserved_mb"]
    assert 0 < record["kv_peak_blocks"] <= record["kv_total_blocks"]
    assert 0 <= record["kv_waste_share"] < 1 and 0 <= record["kv_waste_share_mean"] < 1


def test_a_failing_hf_cb_becomes_a_note_but_other_failures_propagate(monkeypatch, tiny_llama_dir, workload):
    def broken(engine, spec, workload):
        raise RuntimeError(f"{engine} exploded\nsecond line")

    monkeypatch.setattr(bench, "run_engine", broken)
    spec = BenchSpec(str(tiny_llama_dir))
    (skipped,) = run_all(["hf-cb"], spec, workload, isolate=False)
    assert skipped.note == "skipped: hf-cb exploded" and skipped.record == {"engine": "hf-cb"}
    with pytest.raises(RuntimeError, match="qfid exploded"):
        run_all(["qfid"], spec, workload, isolate=False)
    with pytest.raises(QfidError, match="vllm"):
        run_all(["qfid", "vllm"], spec, workload, isolate=False)


def test_an_engine_short_of_tokens_is_flagged(monkeypatch, tiny_llama_dir, workload):
    def short(engine, spec, workload):
        return EngineResult({"engine": engine}, [r.output_len for r in workload][:-1])

    monkeypatch.setattr(bench, "run_engine", short)
    (result,) = run_all(["hf-static"], BenchSpec(str(tiny_llama_dir)), workload, isolate=False)
    assert result.record["tokens_as_requested"] is False and result.note.startswith("1 requests")


def test_quantized_scheme_is_built_once_then_reused(tiny_llama_dir, tmp_path, monkeypatch, workload):
    from qfid.models.loading import quantization_method, read_config

    model_dir, dtype = bench.resolve_model(str(tiny_llama_dir), "fp8", cache_root=tmp_path)
    assert model_dir.parent == tmp_path and dtype == "auto"  # 16-bit activations where native, as a server runs them
    assert quantization_method(read_config(model_dir)) == "compressed-tensors"

    def no_quantizing(*args, **kwargs):
        raise AssertionError("the cached checkpoint should have been reused")

    monkeypatch.setattr("qfid.quant.pipeline.quantize_model", no_quantizing)
    assert bench.resolve_model(str(tiny_llama_dir), "fp8", cache_root=tmp_path)[0] == model_dir
    assert bench.resolve_model(str(model_dir), "awq-int4", cache_root=tmp_path)[0] == model_dir  # already quantized
    result = bench.run_engine("qfid", BenchSpec(str(model_dir), kv_cache_gb=SMALL_KV_GB), workload[:2])
    assert result.output_lens == [r.output_len for r in workload[:2]]


def test_cli_runs_end_to_end_in_a_worker_process(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    result = run_cli(["bench", tiny_llama_dir, "--requests", "6", "--engines", "qfid", "--prompt-len", "8-40",
                      "--output-len", "2-8", "--kv-cache-gb", str(SMALL_KV_GB), "--threads", "1", "--json", out],
                     capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    assert "output tokens/s" in result.out and "KV waste at peak" in result.out
    (record,) = json.loads(out.read_text())
    assert record["engine"] == "qfid" and record["rss_isolated"] is True and record["requests"] == 6
    assert all(record[key] > 0 for key in REQUIRED_KEYS[1:])


def test_cli_bad_option_fails_with_one_line(tiny_llama_dir, capsys, monkeypatch):
    result = run_cli(["bench", tiny_llama_dir, "--output-len", "9-3"], capsys, monkeypatch)
    assert result.exit_code != 0
    assert result.err.strip().startswith("error:") and len(result.err.strip().splitlines()) == 1

