"""Issue #17's "profile first": where a bursty `qfid bench` run's time goes on this CPU, and
how far the run is from the machine's limit.

1. Phases, every step timed (the default model, bf16, 2 threads, `qfid bench`'s bursty
   workload: 64 requests at t=0, prompts 32-256, outputs 16-128, EOS ignored; prefix
   caching off, so the measured run prefills what the warm-up run did): steps that
   carry prefill rows vs decode-only steps, and per step: scheduling (the scheduler and
   postprocess, i.e. the engine step less the model runner), staging the inputs, the
   decoder forward, the LM head and sampling.
2. Inside the forward, a second identical run under torch.profiler: self CPU time of its
   ops by kind (matmuls, attention, elementwise: norms, RoPE, SiLU-and-mul, KV stores,
   adds; the captured decode step's own time, which is its decode attention and elementwise
   work; other ops) and the rest of the forward's wall time, which is Python (module
   calls, argument handling; inflated by the profiler's own cost, so read it as an upper
   bound).
3. The limit: per step, the larger of FLOPs / measured bf16 GEMM peak and bytes moved /
   measured copy bandwidth (weights read once per step, KV read per sequence, KV written),
   summed over the run's steps; the run's output tok/s against that limit's. Both peaks are
   measured here (the GEMM peak as the best of torch's bf16 matmul and qfid's own packed
   bf16 GEMM on large square shapes; bandwidth as a 512 MB copy, read + write bytes).

4. With `--ab-rounds N`: the same bursty run on the captured decode step (layers/cpu_decode.py)
   and on the Python layers (`enforce_eager`), two engines in this process, alternated N
   times: the captured step's gain on this workload as a same-run ratio of wall times.

    python bench/engine_profile.py [--out bench/results/engine_profile.json] [--ab-rounds 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package transformers imports: drop this folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from qfid import LLM, SamplingParams  # noqa: E402
from qfid.bench.workload import make_workload  # noqa: E402
from qfid.models.default import ensure_default_model  # noqa: E402

MATMUL_OPS = ("gemm", "linear", "addmm", "aten::mm", "matmul", "bmm")
ATTENTION_OPS = ("attention",)
# The captured decode step's own time: it runs the decode attention, norms, RoPE, SiLU-and-mul
# and KV stores straight (its bf16 and FP8 matmuls are ops, counted as matmuls).
CAPTURED_OP = "decode_layers"
ELEMENTWISE_OPS = ("norm", "rotary", "silu", "store_kv", "aten::add", "aten::mul", "aten::cat", "aten::copy_")


def measured_peaks() -> dict:
    """bf16 GEMM FLOP/s (best of torch and qfid's packed GEMM) and copy bytes/s."""
    from qfid.kernels import cpu

    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n).bfloat16(), torch.randn(n, n).bfloat16()
        candidates = [lambda: a @ b]
        if cpu.load_cpu_ops():
            packed = cpu.pack_bf16(b.t().contiguous())   # [N, K] weight: x @ W^T == a @ b
            candidates.append(lambda: cpu.bf16_linear(a, packed, None, n))
        for fn in candidates:
            fn()
            start, reps = time.perf_counter(), 0
            while time.perf_counter() - start < 1.0:
                fn()
                reps += 1
            best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
    return {"bf16_gemm_flops": best, "copy_bytes_per_s": copy_bandwidth()}


def copy_bandwidth() -> float:
    """Bytes/s of a 512 MB tensor copy, read + write bytes counted."""
    src, dst = torch.empty(128 << 20), torch.empty(128 << 20)   # 512 MB each
    dst.copy_(src)
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        dst.copy_(src)
        reps += 1
    return 2 * src.numel() * 4 * reps / (time.perf_counter() - start)


def read_bandwidth() -> float:
    """Bytes/s of reading a 512 MB buffer with nothing written back: the best of a few
    read-only torch reductions over it (which one streams fastest varies by run), best of
    five each. A batch-1 decode step is such a stream over the weights, and on this VM a
    read stream reaches ~25-33 GB/s where a copy moves ~40 GB/s of read + write bytes."""
    buffer = torch.ones(512 << 20, dtype=torch.uint8)
    reductions = (lambda: buffer.view(torch.int32).amax(), lambda: buffer.view(torch.float32).amax(),
                  lambda: buffer.view(torch.int64).sum(), lambda: buffer.view(torch.float32).sum())
    best = float("inf")
    for reduce in reductions:
        reduce()
        for _ in range(5):
            start = time.perf_counter()
            reduce()
            best = min(best, time.perf_counter() - start)
    return buffer.numel() / best


class StepLog:
    """Every step's phases and shape, recorded by wrapping the engine's methods."""

    def __init__(self, llm: LLM):
        self.steps: list[dict] = []
        engine, runner = llm.engine, llm.engine.model_runner
        self._wrap(runner, "stage", "stage")
        self._wrap(runner, "forward", "forward")
        self._wrap(runner.model, "compute_logits", "lm_head")
        self._wrap(runner, "_sample_all", "sampling")
        self._wrap(runner, "run", "runner")
        step = engine.step

        def timed_step():
            self.current = defaultdict(float)
            batch_seen = {}
            schedule = engine.scheduler.schedule

            def schedule_and_note():
                batch = schedule()
                batch_seen["batch"] = batch
                return batch
            engine.scheduler.schedule = schedule_and_note
            start = time.perf_counter()
            try:
                return step()
            finally:
                engine.scheduler.schedule = schedule
                batch = batch_seen.get("batch")
                if batch:
                    record = dict(self.current)
                    record["step"] = time.perf_counter() - start
                    record["new_tokens"] = list(batch.num_new_tokens)
                    record["context"] = [s.num_computed_tokens for s in batch.seqs]   # after postprocess: done
                    self.steps.append(record)
        engine.step = timed_step

    def _wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[label] += time.perf_counter() - start
        setattr(owner, name, timed)


def phase_table(steps: list[dict]) -> dict:
    out = {}
    for kind, chosen in (("prefill steps", [s for s in steps if max(s["new_tokens"]) > 1]),
                         ("decode-only steps", [s for s in steps if max(s["new_tokens"]) == 1])):
        total = sum(s["step"] for s in chosen)
        phases = {"scheduling": sum(s["step"] - s.get("runner", 0.0) for s in chosen),
                  "staging": sum(s.get("stage", 0.0) for s in chosen),
                  "forward": sum(s.get("forward", 0.0) for s in chosen),
                  "lm_head": sum(s.get("lm_head", 0.0) for s in chosen),
                  "sampling": sum(s.get("sampling", 0.0) for s in chosen)}
        phases["other (runner)"] = total - sum(phases.values())
        out[kind] = {"steps": len(chosen), "seconds": total, "share": {k: v / total for k, v in phases.items()} if total else {}}
    return out


def op_kind(name: str) -> str:
    if CAPTURED_OP in name:
        return "captured step (attention, elementwise)"
    if any(k in name for k in MATMUL_OPS):
        return "matmul"
    if any(k in name for k in ATTENTION_OPS):
        return "attention"
    return "elementwise" if any(k in name for k in ELEMENTWISE_OPS) else "other ops"


def forward_ops(llm: LLM, log: StepLog, prompts, params) -> dict:
    """Self CPU seconds of the run's ops by kind, from torch.profiler, and the forward's wall
    (`log`: the engine's step log, emptied first)."""
    from torch.profiler import ProfilerActivity, profile

    log.steps.clear()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        llm.generate(prompts, params)
    forward_wall = sum(s.get("forward", 0.0) for s in log.steps)
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key.lower()
        if event.self_cpu_time_total <= 0:
            continue
        kinds[op_kind(name)] += event.self_cpu_time_total / 1e6
    return {"ops_s": dict(kinds), "note": "self CPU time summed over ops, across the whole run (forward, LM head, sampling)",
            "forward_wall_s_under_profiler": forward_wall}


def step_limit(step: dict, dims: dict, peaks: dict) -> float:
    """Seconds the step would take at the measured peaks: max(FLOPs / GEMM peak, bytes / bandwidth)."""
    tokens = sum(step["new_tokens"])
    sampled = len(step["new_tokens"])
    flops = 2 * dims["block_params"] * tokens + 2 * dims["head_params"] * sampled
    attention_flops = 0
    kv_read = 0
    for new, done in zip(step["new_tokens"], step["context"]):
        start = done - new
        for position in range(start, done):   # each new token attends over its context
            attention_flops += 4 * dims["layers"] * dims["heads"] * dims["head_dim"] * (position + 1)
        kv_read += 2 * dims["layers"] * dims["kv_heads"] * dims["head_dim"] * 2 * done
    kv_write = 2 * dims["layers"] * dims["kv_heads"] * dims["head_dim"] * 2 * tokens
    bytes_moved = 2 * (dims["block_params"] + dims["head_params"]) + kv_read + kv_write
    return max((flops + attention_flops) / peaks["bf16_gemm_flops"], bytes_moved / peaks["copy_bytes_per_s"])


def model_dims(llm: LLM) -> dict:
    """Widths from the model's config, parameters counted from them (the runtime holds some
    weights as packed buffers, not parameters)."""
    config = llm.engine.model_runner.model.config
    heads, kv_heads, hidden = config.num_attention_heads, config.num_key_value_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_block = (hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
                 + 3 * hidden * config.intermediate_size)
    return {"layers": config.num_hidden_layers, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "block_params": per_block * config.num_hidden_layers, "head_params": config.vocab_size * hidden}


def bursty_engine(eager: bool = False) -> LLM:
    return LLM(ensure_default_model(), dtype="bfloat16", num_threads=2, kv_cache_gb=1.0, enforce_eager=eager,
               enable_prefix_caching=False)   # as issue 17 measured: every run prefills its prompts


def captured_vs_eager(prompts, params, rounds: int) -> dict:
    """Wall time of the bursty run on each engine, alternated `rounds` times after a warm-up each."""
    engines = {"captured": bursty_engine(), "eager": bursty_engine(eager=True)}
    walls = {name: [] for name in engines}
    for llm in engines.values():
        llm.generate(prompts, params)
    for _ in range(rounds):
        for name, llm in engines.items():
            start = time.perf_counter()
            llm.generate(prompts, params)
            walls[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    return {"wall_s": walls, "median_wall_s": medians, "eager_over_captured_wall": medians["eager"] / medians["captured"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "engine_profile.json"))
    ap.add_argument("--ab-rounds", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    peaks = measured_peaks()
    llm = bursty_engine()
    workload = make_workload(llm.tokenizer, 64, (32, 256), (16, 128), seed=0)
    prompts = [list(r.prompt_ids) for r in workload]
    params = [SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True) for r in workload]
    llm.generate(prompts, params)   # warm-up: KV first touch, packing, allocator
    log = StepLog(llm)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    wall = time.perf_counter() - start
    output_tokens = sum(len(o.token_ids) for o in outputs)
    dims = model_dims(llm)
    limit_s = sum(step_limit(s, dims, peaks) for s in log.steps)
    record = {"machine": platform.processor() or platform.machine(), "threads": 2, "model": "smollm2-135m bf16",
              "workload": "bursty: 64 requests at t=0, prompts 32-256, outputs 16-128, EOS ignored",
              "peaks": peaks, "dims": dims, "wall_s": wall, "output_tokens": output_tokens,
              "output_tok_s": output_tokens / wall, "steps": len(log.steps),
              "limit_s": limit_s, "limit_output_tok_s": output_tokens / limit_s, "fraction_of_limit": limit_s / wall,
              "phases": phase_table(log.steps)}
    record["forward_ops"] = forward_ops(llm, log, prompts, params)
    if args.ab_rounds:
        del llm, log
        record["captured_vs_eager"] = captured_vs_eager(prompts, params, args.ab_rounds)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("peaks", "output_tok_s", "limit_output_tok_s", "fraction_of_limit", "phases",
                                              "forward_ops", "captured_vs_eager") if k in record}, indent=2))


if __name__ == "__main__":
    main()
