"""`qfid bench`: replay one workload against the qfid engine and HF transformers (static
batching and its own continuous batching), and report throughput, latency, memory and CPU.

Each engine runs in its own worker process by default (`python -m qfid.bench.harness JOB
OUT`), so its peak RSS is its own and not the high-water mark of whatever ran before it.
Every engine gets a warm-up request before the clock starts and is told to produce exactly
each request's `output_len` tokens (EOS ignored), so tokens/s compares equal work.
Wall time on a CPU shared with other work is noisy; CPU seconds are recorded next to it.

This module orchestrates and runs the qfid engine; the HF engines are in hf_engines.py, the
shared records and metrics in trace.py.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

from qfid.bench.hf_engines import hf_cb_runner, hf_static_runner
from qfid.bench.trace import BenchSpec, EngineResult, Trace, percentile, sleep_until, summarize
from qfid.bench.workload import BenchRequest
from qfid.errors import QfidError

__all__ = ["ENGINES", "REQUIRED_KEYS", "SCHEMES", "BenchSpec", "EngineResult", "Trace", "percentile", "resolve_model",
           "run_all", "run_engine", "run_isolated", "summarize"]

ENGINES = ("qfid", "hf-static", "hf-cb")
# Activation dtype per scheme: fp32 / bf16 force theirs; the model as given and quantized
# weights run in the dtype `auto` picks (16-bit where the device computes it natively, as
# vLLM's AWQ and FP8 paths run them); `qfid bench --dtype` overrides it.
SCHEMES = {"as-is": "auto", "fp32": "float32", "bf16": "bfloat16", "awq-int4": "auto", "fp8": "auto"}
REQUIRED_KEYS = ("engine", "output_tokens_per_s", "requests_per_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
                 "peak_rss_mb")


# --- choosing what to load -------------------------------------------------------------

def resolve_model(model: str, scheme: str, cache_root: Path | None = None) -> tuple[Path, str]:
    """(model folder, activation dtype). as-is/fp32/bf16 run the model as given; awq-int4/fp8 use
    MODEL if it is already quantized, else quantize it once into the cache and reuse that."""
    from qfid.models.loading import quantization_method, read_config, resolve_model_dir
    from qfid.paths import cache_dir

    if scheme not in SCHEMES:
        raise QfidError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    model_dir = resolve_model_dir(model)
    if scheme in ("as-is", "fp32", "bf16") or quantization_method(read_config(model_dir)) is not None:
        return model_dir, SCHEMES[scheme]
    target = (cache_root or cache_dir() / "bench") / f"{model_dir.name}-{scheme}"
    if not (target / "config.json").is_file():
        from qfid.config import QuantConfig
        from qfid.quant.pipeline import quantize_model

        quantize_model(str(model_dir), QuantConfig(scheme=scheme), target)
    return target, SCHEMES[scheme]


# --- running the engines ---------------------------------------------------------------

def run_all(engines: list[str], spec: BenchSpec, workload: list[BenchRequest], isolate: bool = True,
            progress=None) -> list[EngineResult]:
    """One result per engine, in the order asked; an hf-cb failure becomes a skip note, and
    an engine that did not produce exactly the requested tokens gets a note saying so."""
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise QfidError(f"engines must be among {', '.join(ENGINES)}; got {', '.join(engines) or 'none'}")
    results = []
    for engine in engines:
        if progress:
            progress(engine)
        try:
            result = run_isolated(engine, spec, workload) if isolate else run_engine(engine, spec, workload)
        except Exception as exc:  # noqa: BLE001 - HF's CB API is young; its failure must not sink the run
            if engine != "hf-cb":
                raise
            result = EngineResult({"engine": engine}, note=f"skipped: {exc}".splitlines()[0][:200])
        else:
            _check_token_counts(result, workload)
        results.append(result)
    return results


def _check_token_counts(result: EngineResult, workload: list[BenchRequest]) -> None:
    """Throughput only compares equal work; say so loudly when the work was not equal."""
    wrong = sum(got != r.output_len for got, r in zip(result.output_lens, workload))
    wrong += abs(len(result.output_lens) - len(workload))
    result.record["tokens_as_requested"] = wrong == 0
    if wrong:
        result.note = f"{wrong} requests did not get exactly their requested output tokens"


def run_isolated(engine: str, spec: BenchSpec, workload: list[BenchRequest]) -> EngineResult:
    """Run one engine in a fresh interpreter so its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="qfid-bench-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({"engine": engine, "spec": asdict(spec),
                                   "workload": [r.to_dict() for r in workload]}))
        proc = subprocess.run([sys.executable, "-m", "qfid.bench.harness", str(job), str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise QfidError(f"{engine} worker failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
        data = json.loads(out.read_text())
    result = EngineResult(data["record"], data["output_lens"])
    result.record["rss_isolated"] = True
    return result


def run_engine(engine: str, spec: BenchSpec, workload: list[BenchRequest]) -> EngineResult:
    """Load, warm up, replay the workload and summarize, all in this process. A runner
    returns (replay, finish): `finish` runs off the clock, releases what the engine holds
    and returns its own fields (the KV-cache figures for qfid)."""
    from qfid.engine.loader import set_num_threads

    if spec.threads:
        set_num_threads(spec.threads)
    load_start = time.perf_counter()
    replay, finish = {"qfid": _qfid_runner, "hf-static": hf_static_runner, "hf-cb": hf_cb_runner}[engine](spec)
    load_s = time.perf_counter() - load_start
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    traces = replay(workload)
    wall_s, cpu_s = time.perf_counter() - wall_start, time.process_time() - cpu_start
    record = summarize(engine, traces, wall_s, cpu_s)
    record.update(load_s=load_s, peak_rss_mb=peak_rss_mb(), rss_isolated=False, **finish())
    return EngineResult(record, [len(t.token_ids) for t in traces])


def peak_rss_mb() -> float:
    """This process's high-water resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _greedy(max_tokens: int):
    from qfid.engine.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def _qfid_runner(spec: BenchSpec):
    from qfid.engine.llm import LLM

    llm = LLM(spec.model_dir, dtype=spec.dtype, device=spec.device, num_threads=spec.threads, kv_cache_gb=spec.kv_cache_gb,
              max_num_batched_tokens=spec.max_num_batched_tokens, speculative=spec.speculative,
              num_speculative_tokens=spec.num_speculative_tokens, speculative_max_batch=spec.speculative_max_batch)
    llm.generate([[1, 2, 3, 4]], _greedy(2))  # warm-up: first-call allocations off the clock
    tracker = KvTracker(llm.engine)
    return (lambda workload: _replay_qfid(llm.engine, workload, tracker)), tracker.summary


def _replay_qfid(engine, workload: list[BenchRequest], tracker: "KvTracker") -> list[Trace]:
    """Admit each request when its arrival time has passed, step while there is work,
    and sleep only when the engine is idle and the next request is in the future."""
    start = time.perf_counter()
    traces = [Trace(start + r.arrival_s) for r in workload]
    pending = deque(sorted(range(len(workload)), key=lambda i: workload[i].arrival_s))
    index_of: dict[int, int] = {}
    while pending or engine.has_unfinished():
        while pending and traces[pending[0]].arrival <= time.perf_counter():
            i = pending.popleft()
            index_of[engine.add_request(list(workload[i].prompt_ids), _greedy(workload[i].output_len))] = i
        if not engine.has_unfinished():
            sleep_until(traces[pending[0]].arrival)
            continue
        outputs = engine.step()
        now = time.perf_counter()
        tracker.observe()
        for output in outputs:
            trace = traces[index_of[output.request_id]]
            trace.first_token = trace.first_token or now
            if output.finished:
                trace.finish, trace.token_ids = now, list(output.token_ids)
    return traces


class KvTracker:
    """KV-cache use, sampled after every step. Waste is the share of slots in held blocks
    that hold no K/V (a partly filled last block, a block allocated ahead of its tokens);
    free blocks of the reserved cache are headroom, not waste -- the cache tensor is
    mapped lazily, so untouched blocks cost no RSS either."""

    def __init__(self, engine):
        self.engine = engine
        blocks = engine.block_manager
        self.block_size = blocks.block_size
        self.reserved_bytes = engine.model_runner.kv_cache_bytes
        self.block_bytes = self.reserved_bytes // blocks.num_blocks
        self.peak_blocks, self.peak_waste = 0, 0.0
        self.held_slots, self.filled_slots = 0, 0

    def observe(self) -> None:
        filled: dict[int, int] = {}
        for seq in self.engine.scheduler.running:
            for index, block_id in enumerate(seq.block_table):
                tokens = min(self.block_size, max(0, seq.num_computed_tokens - index * self.block_size))
                filled[block_id] = max(filled.get(block_id, 0), tokens)
        held = self.engine.block_manager.num_used_blocks
        slots, used = held * self.block_size, sum(filled.values())
        self.held_slots += slots
        self.filled_slots += used
        if held > self.peak_blocks:
            self.peak_blocks, self.peak_waste = held, 1 - used / slots

    def summary(self) -> dict:
        mib = 2 ** 20
        return {"kv_reserved_mb": self.reserved_bytes / mib,
                "kv_peak_used_mb": self.peak_blocks * self.block_bytes / mib,
                "kv_peak_blocks": self.peak_blocks,
                "kv_total_blocks": self.engine.block_manager.num_blocks,
                "kv_waste_share": self.peak_waste,
                "kv_waste_share_mean": 1 - self.filled_slots / self.held_slots if self.held_slots else 0.0,
                "preemptions": self.engine.scheduler.num_preemptions,
                **({f"spec_{k}": v for k, v in self.engine.scheduler.spec_stats.to_dict().items()}
                   if self.engine.scheduler.proposer is not None else {})}


def _worker_main(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    workload = [BenchRequest.from_dict(r) for r in job["workload"]]
    result = run_engine(job["engine"], BenchSpec(**job["spec"]), workload)
    Path(out_path).write_text(json.dumps({"record": result.record, "output_lens": result.output_lens}))


if __name__ == "__main__":
    _worker_main(*sys.argv[1:3])
