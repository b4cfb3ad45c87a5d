"""CPU matmul benchmark for the quantized weight paths, with memory bandwidth as the roofline.

For each layer shape (out x in) and batch: time and effective GB/s (weight bytes as stored
/ time) of qfid's INT4, FP8 and packed bf16 kernels and torch's int4 kernel, against fp32
and bf16 dense matmuls (torch / oneDNN), and the machine's copy bandwidth (read + write of
a 256 MiB tensor).

Weights are rotated over enough copies to exceed the last-level cache twice, so every
call streams from DRAM as a decode step does. The paths of one (layer, batch) take turns
call by call; timings are the best and the median over those calls: on a shared machine
the best is the one to compare, the gap to the median shows the noise. Prints a table and
writes JSON (`--json PATH`).

    python bench/kernels.py [--shapes smollm2,4096x4096,14336x4096,4096x14336] [--batches 1,8,64] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _layers import DEFAULT_SHAPES, clone, nbytes, parse_shapes

SECONDS_PER_CASE, MIN_ROUNDS, MAX_ROUNDS = 1.5, 10, 400
MAX_COPIES = 1024


def last_level_cache_bytes() -> int:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text.rstrip("K")) * 1024
    except (OSError, ValueError):
        return 64 << 20


def summarize(times: list[float]) -> dict:
    times = sorted(times)
    return {"best_s": times[0], "median_s": statistics.median(times), "p90_s": times[int(0.9 * (len(times) - 1))],
            "calls": len(times)}


def time_round_robin(cases: dict[str, list], seconds: float = SECONDS_PER_CASE) -> dict[str, dict]:
    """Per case: best / median / p90 seconds per call. The cases take turns call by call
    (each cycling over its weight copies), so load from other processes on a shared
    machine hits every path alike instead of whichever happened to run at a bad moment."""
    times = {name: [] for name in cases}
    for fns in cases.values():
        fns[0]()
    start, rounds = time.perf_counter(), 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() - start < seconds):
        for name, fns in cases.items():
            fn = fns[rounds % len(fns)]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: summarize(t) for name, t in times.items()}


def copy_bandwidth(seconds: float) -> dict:
    src = torch.empty(256 << 20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    t = time_round_robin({"copy": [lambda: dst.copy_(src)]}, seconds)["copy"]
    return {"gbps_best": 2 * src.numel() / t["best_s"] / 1e9, "gbps_median": 2 * src.numel() / t["median_s"] / 1e9}


def make_paths(out_f: int, in_f: int, group: int) -> dict:
    """name -> (weight bytes, builder(x) -> callable) for one layer; weights made once."""
    from qfid.kernels import cpu
    from qfid.kernels.cpu_build import load_cpu_ops
    from qfid.kernels.cpu_layout import pack_int4_tiles, pack_int4_torch

    w = torch.randn(out_f, in_f) * 0.02
    codes = torch.randint(0, 16, (out_f, in_f), dtype=torch.uint8)
    scales = torch.rand(out_f, in_f // group) * 0.01
    zeros = torch.randint(0, 16, (out_f, in_f // group), dtype=torch.uint8)
    fp8 = (w / (w.abs().amax(1, keepdim=True) / 448)).to(torch.float8_e4m3fn)
    fp8_scale = w.abs().amax(1, keepdim=True) / 448
    paths = {
        "fp32 dense": (w, lambda t, x: F.linear(x.float(), t)),
        "bf16 dense": (w.bfloat16(), lambda t, x: F.linear(x, t)),
        "int4 torch": (pack_int4_torch(codes, scales, zeros, group, torch.bfloat16),
                       lambda t, x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, t[0], group, t[1])),
    }
    if load_cpu_ops():
        paths["int4 qfid"] = (pack_int4_tiles(codes, scales, zeros, group),
                              lambda t, x: torch.ops.qfid_cpu.int4_gemm(t, x, None, group, out_f))
        paths["fp8 qfid"] = ((fp8, fp8_scale), lambda t, x: cpu.fp8_linear(x, t[0], t[1], None, None, False))
        paths["bf16 qfid"] = (cpu.pack_bf16(w.bfloat16()), lambda t, x: cpu.bf16_linear(x, t, None, out_f))
    return paths


def bench_layer(out_f: int, in_f: int, group: int, batches: list[int], llc: int, seconds: float) -> list[dict]:
    paths = make_paths(out_f, in_f, group)
    copies, sizes = {}, {}
    for name, (weights, _) in paths.items():
        sizes[name] = nbytes(weights)
        count = min(MAX_COPIES, -(-2 * llc // sizes[name]))
        copies[name] = [weights] + [clone(weights) for _ in range(count - 1)]
    rows = []
    for batch in batches:
        x = torch.randn(batch, in_f).bfloat16()
        cases = {name: [lambda c=c, call=call: call(c, x) for c in copies[name]] for name, (_, call) in paths.items()}
        for name, t in time_round_robin(cases, seconds).items():
            rows.append({"shape": f"{out_f}x{in_f}", "group": group, "batch": batch, "path": name,
                         "weight_bytes": sizes[name], "copies": len(copies[name]), **t,
                         "gbps_best": sizes[name] / t["best_s"] / 1e9})
    return rows


def add_ratios(rows: list[dict], copy_gbps: float) -> None:
    dense = {(r["shape"], r["batch"]): r["best_s"] for r in rows if r["path"] == "bf16 dense"}
    for r in rows:
        r["pct_of_copy"] = 100 * r["gbps_best"] / copy_gbps
        r["speedup_vs_bf16"] = dense[(r["shape"], r["batch"])] / r["best_s"]


def render(rows: list[dict], copy: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"CPU weight paths ({torch.get_num_threads()} threads, bf16 activations); "
                        f"copy bandwidth {copy['gbps_best']:.1f} GB/s best / {copy['gbps_median']:.1f} median")
    for col in ("layer", "G", "batch", "path", "best ms", "median ms", "GB/s", "% copy", "x bf16"):
        table.add_column(col, justify="left" if col in ("layer", "path") else "right")
    for r in rows:
        table.add_row(r["shape"], str(r["group"]), str(r["batch"]), r["path"], f"{r['best_s'] * 1e3:.3f}",
                      f"{r['median_s'] * 1e3:.3f}", f"{r['gbps_best']:.1f}", f"{r['pct_of_copy']:.0f}",
                      f"{r['speedup_vs_bf16']:.2f}")
    Console(width=max(120, Console().width)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seconds", type=float, default=SECONDS_PER_CASE,
                        help="time budget per (layer, batch); more gives the best-of more chances on a busy machine")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the copy bandwidth here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    copy = copy_bandwidth(args.seconds)
    llc = last_level_cache_bytes()
    batches = [int(b) for b in args.batches.split(",")]
    rows = [r for o, i, g in parse_shapes(args.shapes) for r in bench_layer(o, i, g, batches, llc, args.seconds)]
    add_ratios(rows, copy["gbps_best"])
    render(rows, copy)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "copy": copy, "llc_bytes": llc,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
