"""qfid's CPU paged decode attention with its K/V coming from DRAM, against the machine's
read bandwidth (issue #17: decode attention is a stream over the KV cache).

A decode step's attention reads each sequence's keys and values once, from blocks scattered
over the cache; between two layers' calls the weights stream through the caches, so the
K/V are not cache-resident. Here each timed call reads one of several caches whose total
is far larger than the last-level cache, round-robin, over random block tables. Per case
(sequences x context, for the default model's heads and for Llama-3-8B's; "32-480": each
sequence's length drawn from that range, as in a bursty decode step): microseconds
per call, the K/V bytes it reads, that as GB/s, and its fraction of the read bandwidth
measured here (bench/engine_profile.read_bandwidth).

    python bench/paged_attention.py [--json bench/results/paged_attention.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/kernels.py would shadow the `kernels` package transformers imports: this folder goes last
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

import torch  # noqa: E402

CACHE_BYTES = 256 << 20   # K + V across all rotated caches: well past any last-level cache
BLOCK_SIZE = 16
SHAPES = {"smollm2-135m": (9, 3, 64), "llama-3-8b": (32, 8, 128)}   # heads, kv_heads, head_dim


def engine_cache(kv_heads: int, blocks: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Random K or V in memory allocated as the engine allocates its cache (engine/kv_cache.
    lazy_zeros: numpy's zeroed allocation, which asks for transparent huge pages), since
    scattered block reads cost a TLB miss each on 4 KB pages."""
    from qfid.engine.kv_cache import lazy_zeros

    cache = lazy_zeros((kv_heads, blocks, BLOCK_SIZE, dim), torch.bfloat16)
    return cache.copy_(torch.randn(cache.shape, generator=generator))


def time_case(heads: int, kv_heads: int, dim: int, seqs: int, context: int, seconds: float = 1.0,
              mixed: bool = False) -> dict:
    """`mixed`: each sequence's length drawn from 32..context (seeded), as in a bursty decode
    step, where the threads' shares of the keys can differ; else every one is `context` long."""
    from qfid.kernels import cpu

    per_seq = -(-context // BLOCK_SIZE)
    block_bytes = 2 * kv_heads * BLOCK_SIZE * dim * 2
    blocks = max(seqs * per_seq, 64)
    copies = max(2, CACHE_BYTES // (blocks * block_bytes))
    generator = torch.Generator().manual_seed(seqs * context)
    caches = [(engine_cache(kv_heads, blocks, dim, generator), engine_cache(kv_heads, blocks, dim, generator))
              for _ in range(copies)]
    tables = torch.randperm(blocks, generator=generator)[:seqs * per_seq].view(seqs, per_seq).int()
    lens = (torch.randint(32, context + 1, (seqs,), generator=generator, dtype=torch.int32) if mixed
            else torch.full((seqs,), context, dtype=torch.int32))
    q = torch.randn(seqs, heads, dim, generator=generator).bfloat16()
    for k, v in caches:
        cpu.paged_decode_attention(q, k, v, tables, lens, dim ** -0.5)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for k, v in caches:
            cpu.paged_decode_attention(q, k, v, tables, lens, dim ** -0.5)
        calls += len(caches)
    per_call = (time.perf_counter() - start) / calls
    kv_bytes = 2 * int(lens.sum()) * kv_heads * dim * 2
    label = f"32-{context}" if mixed else str(context)
    return {"seqs": seqs, "context": label, "us_per_call": per_call * 1e6, "kv_bytes": kv_bytes,
            "gb_per_s": kv_bytes / per_call / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    from engine_profile import read_bandwidth

    from qfid.kernels.cpu_build import load_cpu_ops

    if not load_cpu_ops():
        raise SystemExit("qfid's CPU kernels do not build here")
    torch.set_num_threads(2)
    bandwidth = read_bandwidth()
    rows = []
    for model, (heads, kv_heads, dim) in SHAPES.items():
        for seqs, context, mixed in ((1, 256, False), (1, 2048, False), (8, 512, False), (32, 256, False),
                                     (64, 512, False), (35, 480, True)):
            row = {"model": model, **time_case(heads, kv_heads, dim, seqs, context, mixed=mixed)}
            row["of_read_bandwidth"] = row["gb_per_s"] * 1e9 / bandwidth
            rows.append(row)
            print(f"{model:>13} {seqs:>3} seqs x {row['context']:>6}: {row['us_per_call']:8.1f} us  "
                  f"{row['gb_per_s']:5.1f} GB/s  {row['of_read_bandwidth']:.0%} of read bandwidth", flush=True)
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s")
    if args.json_path:
        report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": 2,
                  "read_bandwidth_bytes_per_s": bandwidth, "rows": rows}
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
