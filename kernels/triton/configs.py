"""Launch configurations for qfid's Triton kernels, written down per GPU generation.

Why a table and not `@triton.autotune`: autotuning times every candidate on first use,
which is meaningless (and very slow) under TRITON_INTERPRET on a CPU and costs seconds of
warm-up per shape on a GPU. These are the shapes W4A16 / FP8 kernels in AWQ and vLLM settle
on: decode (a few rows) wants narrow BLOCK_M and split-K to fill the SMs; prefill wants
big square tiles. The "interpreter" rows are deliberately small so that unit tests on
small matrices still run several programs and partial blocks.

Each row: (max_rows, dict of launch parameters); the first row whose max_rows >= M wins.
BLOCK_K of the INT4 GEMM is clipped to the group size by the launcher (one scale per step).

The Hopper rows up to 64 rows were measured (bench/kernels_gpu.py and a sweep of ~30
candidates per row on an H100, 4096x4096 / 4096x14336 / 14336x4096 layers, fp16
activations; median of CUDA-graph replays, weights streamed from HBM). Sum over the three
layers, old row -> this row (W4A16 measured after its kernel stopped loading each packed
word once per column, which alone took batch 1 from 1061.8 to 89.7 us): W4A16 batch 1
89.7 -> 84.4 us (fp16 cuBLAS: 102.8), batch 64 430.8 -> 140.1 us; FP8 W8A8 batch 1 74.9 -> 62.0 us, batch 64 89.5 -> 78.6 us, weight-only
FP8 at batch 64 218.4 -> 129.0 us. Every row must also fit in shared memory with fp32
activations (tests/unit/test_kernels_triton_compile.py checks). The Ampere rows and the
largest Hopper rows are unmeasured.
"""
from __future__ import annotations

import math

INF = math.inf

W4A16_GEMM = {
    "hopper": [
        (16, dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=8, num_warps=4, num_stages=3)),
        (64, dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=4, num_stages=3)),
        (INF, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3)),
    ],
    "ampere": [
        (16, dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=4, num_stages=3)),
        (64, dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=3)),
        (INF, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, SPLIT_K=1, num_warps=8, num_stages=2)),
    ],
    "interpreter": [
        (4, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=2, num_warps=4, num_stages=1)),
        (INF, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1, num_warps=4, num_stages=1)),
    ],
}

FP8_GEMM = {
    "hopper": [
        (16, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=256, num_warps=4, num_stages=4)),
        (64, dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4)),
        (INF, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3)),
    ],
    "ampere": [
        (16, dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3)),
        (INF, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)),
    ],
    "interpreter": [
        (INF, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=1)),
    ],
}

DEQUANT = {
    "hopper": [(INF, dict(BLOCK_R=64, BLOCK_C=128, num_warps=4, num_stages=1))],
    "ampere": [(INF, dict(BLOCK_R=64, BLOCK_C=128, num_warps=4, num_stages=1))],
    "interpreter": [(INF, dict(BLOCK_R=16, BLOCK_C=32, num_warps=4, num_stages=1))],
}

PAGED_DECODE = {
    "hopper": [(INF, dict(num_warps=4, num_stages=2))],
    "ampere": [(INF, dict(num_warps=4, num_stages=2))],
    "interpreter": [(INF, dict(num_warps=4, num_stages=1))],
}


def pick(table: dict, arch: str, rows: int) -> dict:
    """The launch parameters for `rows` batch rows on `arch` (a copy the caller may edit)."""
    for max_rows, params in table[arch]:
        if rows <= max_rows:
            return dict(params)
    raise AssertionError("every table ends with an INF row")
