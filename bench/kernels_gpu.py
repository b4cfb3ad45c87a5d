"""GPU benchmark of qfid's quantized kernels against torch's fp16 matmul, with the device's
copy bandwidth as the roofline. bench/kernels.py is the CPU counterpart.

For each layer shape (out x in) and batch, fp16 activations:
  torch fp16                 F.linear on an fp16 weight: the baseline of every speedup
  triton w4a16               the fused AWQ INT4 GEMM (kernels/triton/w4a16_gemm.py)
  cuda awq                   qfid's CUDA backend: the GEMV up to 8 rows, else dequantize + cuBLAS
  triton fp8 w8a8 tensor     the FP8 scaled GEMM on E4M3 activations (quantized per token
  triton fp8 w8a8 channel      before the timed call) with a per-tensor / per-channel weight scale
  triton fp8 w8a16 channel   the same kernel, weight-only (fp16 activations)
Then the Triton paged-attention decode kernel (fp16, 32 query heads over 8 KV heads of 128,
blocks of 16 tokens) against torch gathering the blocks then running SDPA, and SDPA on an
already contiguous cache (no paging: what torch reads at best).

Timing: a path's calls are captured in one CUDA graph that cycles over enough copies of its
weight to exceed twice the L2 cache, so every call streams its weight from device memory as
a decode step does, and Python launch overhead is not counted (an engine captures its decode
step likewise). Time per call = replay time (CUDA events) / calls: median and best over the
replays. GB/s counts the fewest bytes a call must move (weight as stored, activations in,
output out); "% copy" relates that to a device-to-device copy (bytes read + written)
measured in the same run. A matmul only reads its weight, and reads can stream faster than
a copy's mix of reads and writes, so the best paths pass 100%.

Correctness: before it is timed, every path runs on fresh random inputs and its output is
compared with a float64 reference (same quantized weight, on the GPU). A relative Frobenius
error above TOLERANCE (2e-3: rounding the fp16 output alone costs ~3e-4, the dense paths
round the weight to fp16 once more) stops the run: a fast wrong kernel is never reported.

    python bench/kernels_gpu.py [--shapes smollm2,4096x4096,14336x4096,4096x14336] [--batches 1,8,64]
                                [--context 1024] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from _layers import DEFAULT_SHAPES, clone, nbytes, parse_shapes

TOLERANCE = 2e-3
MIN_CALLS, REPLAYS, MAX_COPIES = 32, 25, 1024
HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DEVICE = torch.device("cuda")


def _same(x):
    return x


@dataclass
class Case:
    """One timed path: `run(weights, inputs)` -> output; `inputs(x)` turns fp16 activations
    into what it takes; `reference(inputs)` is the float64 output it must match."""

    name: str
    weights: tuple
    run: Callable
    reference: Callable
    inputs: Callable = _same


def graph_time(calls: list[Callable[[], object]], replays: int = REPLAYS) -> dict:
    """Seconds per call (median, best over replays) of `calls` captured in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):   # warm-up off the capture: compiles, allocator pools
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(calls))
    del graph
    return {"median_s": statistics.median(times), "best_s": min(times), "calls": len(calls)}


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second (median)."""
    src = torch.randn(1 << 28, device=DEVICE)
    dst = torch.empty_like(src)
    t = graph_time([lambda: dst.copy_(src)] * 4, replays=10)
    return 2 * nbytes(src) / t["median_s"] / 1e9


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def measure(path: Case, x: torch.Tensor, fresh_x: torch.Tensor, copies: int) -> dict:
    """Check `path` on `fresh_x`, then time it on `x` cycling over `copies` weight copies."""
    check_in = path.inputs(fresh_x)
    err = rel_err(path.run(path.weights, check_in), path.reference(check_in))
    if not err < TOLERANCE:   # NaN fails too
        raise SystemExit(f"{path.name}: relative error {err:.2e} against float64 exceeds {TOLERANCE:.0e}")
    sets = [path.weights] + [clone(path.weights) for _ in range(copies - 1)]
    inputs = path.inputs(x)
    calls = [lambda w=sets[i % copies]: path.run(w, inputs) for i in range(max(MIN_CALLS, copies))]
    t = graph_time(calls)
    moved = nbytes(path.weights) + nbytes(inputs) + nbytes(path.run(path.weights, inputs))
    return {**t, "rel_err": err, "bytes": moved, "weight_bytes": nbytes(path.weights), "copies": copies}


def copies_for(weights: tuple, l2: int) -> int:
    return min(MAX_COPIES, 1 + -(-2 * l2 // nbytes(weights)))


def linear_paths(out_f: int, in_f: int, group: int) -> list[Case]:
    from qfid.kernels import cuda_ops, triton_ops
    from qfid.layouts.packing import pack_awq_gemm
    from qfid.layouts.primitives import Int4Weight, fp8_quantize

    groups = in_f // group
    q = Int4Weight(codes=torch.randint(0, 16, (out_f, in_f), dtype=torch.uint8, device=DEVICE),
                   scales=(torch.rand(out_f, groups, device=DEVICE) * 0.02 + 1e-3).half().float(),
                   zeros=torch.randint(0, 16, (out_f, groups), dtype=torch.uint8, device=DEVICE), group_size=group)
    w64 = q.dequantize(torch.float64)
    w16 = w64.half()
    awq = pack_awq_gemm(q)
    paths = [Case("torch fp16", (w16,), lambda w, x: F.linear(x, w[0]), lambda x: x.double() @ w16.double().T),
             Case("triton w4a16", awq, lambda w, x: triton_ops.w4a16_gemm(x, *w, group), lambda x: x.double() @ w64.T)]
    if (why := cuda_ops.unavailable(DEVICE)) is None:
        prepared = cuda_ops.prepare_int4(*awq, group)
        keys = ("qweight", "qzeros", "scales")
        paths.append(Case("cuda awq", tuple(prepared[k] for k in keys),
                           lambda w, x: cuda_ops.int4_linear(x, {**dict(zip(keys, w)), "group_size": group}, None),
                           lambda x: x.double() @ w64.T))
    else:
        print(f"cuda awq skipped: {why}")
    w8a8 = lambda w, xi: triton_ops.fp8_gemm(xi[0], *w, None, xi[1], out_dtype=torch.float16)  # noqa: E731
    for label, per_channel in (("tensor", False), ("channel", True)):
        f = fp8_quantize(w64.float(), per_channel=per_channel)
        f64 = f.dequantize(torch.float64)
        paths.append(Case(f"triton fp8 w8a8 {label}", (f.weight, f.scale), w8a8,
                           lambda xi, f64=f64: (xi[0].double() * xi[1].double()[:, None]) @ f64.T,
                           lambda x: triton_ops.quantize_rows_fp8(x, None)))
    paths.append(Case("triton fp8 w8a16 channel", (f.weight, f.scale), lambda w, x: triton_ops.fp8_gemm(x, *w),
                       lambda x, f64=f64: x.double() @ f64.T))
    return paths


def bench_layer(out_f: int, in_f: int, group: int, batches: list[int], l2: int) -> list[dict]:
    rows = []
    for path in linear_paths(out_f, in_f, group):
        copies = copies_for(path.weights, l2)
        for batch in batches:
            x, fresh = (torch.randn(batch, in_f, device=DEVICE).half() for _ in range(2))
            rows.append({"kind": "linear", "shape": f"{out_f}x{in_f}", "group": group, "batch": batch,
                         "path": path.name, **measure(path, x, fresh, copies)})
        torch.cuda.empty_cache()
    return rows


def attention_paths(batch: int, context: int) -> tuple[list[Case], Callable]:
    """Paged decode over `context` tokens per sequence (whole blocks, shuffled in the pool)."""
    from qfid.kernels import triton_ops

    per_seq = context // BLOCK_SIZE
    k_cache, v_cache = (torch.randn(batch * per_seq, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device=DEVICE).half()
                        for _ in range(2))
    tables = torch.randperm(batch * per_seq, device=DEVICE).reshape(batch, per_seq).int()
    lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
    scale = HEAD_DIM ** -0.5

    def gathered(cache):   # [blocks, bs, kvh, d] -> [B, kvh, context, d]
        return cache[tables.long()].flatten(1, 2).transpose(1, 2)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q[:, :, None], k, v, scale=scale, enable_gqa=True)[:, :, 0]

    def reference(q):
        k, v = gathered(k_cache).double(), gathered(v_cache).double()
        qg = q.double().reshape(batch, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
        p = (torch.einsum("bkgd,bkld->bkgl", qg, k) * scale).softmax(-1)
        return torch.einsum("bkgl,bkld->bkgd", p, v).reshape(batch, HEADS, HEAD_DIM)

    paged = (k_cache, v_cache, tables, lens)
    paths = [Case("triton paged decode", paged,
                   lambda w, q: triton_ops.paged_attention_decode(q, *w, scale), reference),
             Case("torch gather+sdpa", paged, lambda w, q: sdpa(q, *(c[w[2].long()].flatten(1, 2).transpose(1, 2)
                                                                     for c in w[:2])), reference),
             Case("torch sdpa contiguous", (gathered(k_cache).contiguous(), gathered(v_cache).contiguous()),
                   lambda w, q: sdpa(q, *w), reference)]
    return paths, lambda: torch.randn(batch, HEADS, HEAD_DIM, device=DEVICE).half()


def bench_attention(batches: list[int], context: int, l2: int) -> list[dict]:
    rows = []
    for batch in batches:
        paths, make_q = attention_paths(batch, context)
        for path in paths:
            rows.append({"kind": "attention", "shape": f"{HEADS}/{KV_HEADS}x{HEAD_DIM} ctx {context}", "group": 0,
                         "batch": batch, "path": path.name,
                         **measure(path, make_q(), make_q(), copies_for(path.weights[:2], l2))})
        del paths
        torch.cuda.empty_cache()
    return rows


BASELINE = {"linear": "torch fp16", "attention": "torch gather+sdpa"}


def add_ratios(rows: list[dict], copy_gbps: float) -> None:
    base = {(r["shape"], r["batch"]): r["median_s"] for r in rows if r["path"] == BASELINE[r["kind"]]}
    for r in rows:
        r["gbps"] = r["bytes"] / r["median_s"] / 1e9
        r["pct_of_copy"] = 100 * r["gbps"] / copy_gbps
        r["speedup_vs_baseline"] = base[(r["shape"], r["batch"])] / r["median_s"]


def render(rows: list[dict], device: str, copy_gbps: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{device}: fp16 activations; copy bandwidth {copy_gbps:.0f} GB/s; speedup against "
                        f"torch fp16 (linear) / torch gather+sdpa (attention); error against float64")
    for col in ("layer", "G", "batch", "path", "median us", "best us", "GB/s", "% copy", "speedup", "rel err"):
        table.add_column(col, justify="left" if col in ("layer", "path") else "right")
    for r in rows:
        table.add_row(r["shape"], str(r["group"] or ""), str(r["batch"]), r["path"], f"{r['median_s'] * 1e6:.1f}",
                      f"{r['best_s'] * 1e6:.1f}", f"{r['gbps']:.0f}", f"{r['pct_of_copy']:.0f}",
                      f"{r['speedup_vs_baseline']:.2f}", f"{r['rel_err']:.1e}")
    Console(width=max(140, Console().width)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--context", type=int, default=1024, help="tokens per sequence for paged attention; 0: skip")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the device figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/kernels_gpu.py needs a CUDA GPU (bench/kernels.py is the CPU benchmark)")
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    copy_gbps = copy_bandwidth()
    batches = [int(b) for b in args.batches.split(",")]
    rows = [r for o, i, g in parse_shapes(args.shapes) for r in bench_layer(o, i, g, batches, l2)]
    if args.context:
        rows += bench_attention(batches, args.context - args.context % BLOCK_SIZE, l2)
    add_ratios(rows, copy_gbps)
    first = {}
    for r in rows:   # one block per (layer, batch), layers in the order asked for
        first.setdefault(r["shape"], len(first))
    rows.sort(key=lambda r: (first[r["shape"]], r["batch"]))
    render(rows, props.name, copy_gbps)
    if args.json:
        import triton

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": props.name, "capability": list(torch.cuda.get_device_capability(0)), "l2_bytes": l2,
            "sms": props.multi_processor_count, "torch": torch.__version__, "triton": triton.__version__,
            "copy_gbps": copy_gbps, "tolerance": TOLERANCE, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
