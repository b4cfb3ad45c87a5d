"""What every `qfid bench` engine produces: per-request traces, the per-engine record, and
the metrics computed from traces (throughput, TTFT, TPOT percentiles)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class BenchSpec:
    """How every engine loads the model; the qfid-only fields size its KV cache and step."""

    model_dir: str
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    hf_batch: int = 16
    kv_cache_gb: float = 1.0
    max_num_batched_tokens: int = 2048
    speculative: str | None = None
    num_speculative_tokens: int = 4
    speculative_max_batch: int = 8


@dataclass
class Trace:
    """One request's life on absolute `perf_counter` seconds."""

    arrival: float
    first_token: float | None = None
    finish: float | None = None
    token_ids: list[int] = field(default_factory=list)


@dataclass
class EngineResult:
    """`record` is the JSON line for this engine; `output_lens` lets callers check that
    every request got exactly the tokens it asked for. `note` explains a skipped engine."""

    record: dict
    output_lens: list[int] = field(default_factory=list)
    note: str | None = None


def sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def summarize(engine: str, traces: list[Trace], wall_s: float, cpu_s: float) -> dict:
    """Throughput over the whole replay; TTFT from arrival to first token; TPOT is a
    request's decode time over its tokens after the first."""
    output_tokens = sum(len(t.token_ids) for t in traces)
    ttft = [t.first_token - t.arrival for t in traces]
    tpot = [(t.finish - t.first_token) / (len(t.token_ids) - 1) for t in traces if len(t.token_ids) > 1]
    return {
        "engine": engine, "requests": len(traces), "output_tokens": output_tokens,
        "wall_s": wall_s, "cpu_s": cpu_s, "cpu_per_wall": cpu_s / wall_s,
        "output_tokens_per_s": output_tokens / wall_s, "requests_per_s": len(traces) / wall_s,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
        "tpot_p50_s": percentile(tpot, 50), "tpot_p99_s": percentile(tpot, 99),
    }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
