"""The Triton kernels compiled for real GPUs (sm_80/sm_89 and sm_90) on this CPU-only
machine, with every row of the launch tables in kernels/triton/configs.py: catches what the
interpreter cannot (tl.dot shape and dtype rules, FP8 support per architecture, register
allocation) and what would only fail at launch on a GPU: a row whose pipelined tiles need
more shared memory than the chip has (with fp32 activations, the largest), or a decode row
of the W4A16 GEMM so greedy that fewer than two programs fit on an SM (seen on an H100:
the GEMM loaded each packed word once per column and needed 119 KB per program).

Compilation runs in a subprocess: the interpreter tests set TRITON_INTERPRET=1 for the
whole pytest process, and kernels defined under it cannot be compiled. Skipped without
triton.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PTR_I32 = "*i32"
W4A16 = {"x_ptr": "*fp16", "qweight_ptr": PTR_I32, "qzeros_ptr": PTR_I32, "scales_ptr": "*fp16", "bias_ptr": "*fp16",
         "y_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "group_size": "i32", "stride_xm": "i32", "stride_ym": "i32"}
FP8_GEMM = {"x_ptr": "*fp8e4nv", "x_scale_ptr": "*fp32", "w_ptr": "*fp8e4nv", "w_scale_ptr": "*fp32", "bias_ptr": "*bf16",
            "y_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_ym": "i32",
            "w_scale_stride": "i32"}
FP8_GEMM_F32 = {**FP8_GEMM, "x_ptr": "*fp32", "y_ptr": "*fp32"}   # weight-only, fp32 activations
AWQ_DEQUANT = {"qweight_ptr": PTR_I32, "qzeros_ptr": PTR_I32, "scales_ptr": "*fp16", "out_ptr": "*fp16",
               "K": "i32", "N": "i32", "group_size": "i32"}
PAGED = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "block_tables_ptr": PTR_I32, "context_lens_ptr": PTR_I32,
         "out_ptr": "*bf16", "m_ptr": "*fp32", "l_ptr": "*fp32", "scale": "fp32", "head_dim": "i32",
         "blocks_per_split": "i32", "stride_qb": "i32", "stride_qh": "i32", "stride_cb": "i32",
         "stride_cs": "i32", "stride_ch": "i32", "stride_bt": "i32", "stride_ob": "i32", "stride_oh": "i32"}
PAGED_SPLIT = {**PAGED, "out_ptr": "*fp32"}
PAGED_REDUCE = {"acc_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32", "out_ptr": "*bf16", "head_dim": "i32",
                "num_splits": "i32", "stride_ob": "i32", "stride_oh": "i32", "num_heads": "i32"}
# Shared memory per block: sm_90 (H100/H200); sm_86/sm_89, the smallest of the "ampere" rows' chips.
SHARED_LIMIT = {90: 232448, 89: 101376, 80: 101376}

# (label, source stem, kernel, signature, config table or None, fixed constexprs, capabilities)
CASES = [
    ("w4a16", "w4a16_gemm", "w4a16_gemm_kernel", W4A16, "W4A16_GEMM", dict(HAS_BIAS=True, F32_DOT=False), (80, 90)),
    ("fp8 w8a8", "fp8", "fp8_gemm_kernel", FP8_GEMM, "FP8_GEMM", dict(X_FP8=True, HAS_BIAS=True, F32_DOT=False), (89, 90)),
    ("fp8 fp32 act", "fp8", "fp8_gemm_kernel", FP8_GEMM_F32, "FP8_GEMM", dict(X_FP8=False, HAS_BIAS=False, F32_DOT=True),
     (89, 90)),
    ("awq dequant", "int4_dequant", "awq_dequant_kernel", AWQ_DEQUANT, "DEQUANT", {}, (80, 90)),
    ("paged decode", "paged_attention", "paged_decode_kernel", PAGED, None,
     dict(QUERIES_PER_KV=4, BLOCK_SIZE=16, BLOCK_G=4, BLOCK_D=128, SPLIT=False), (80, 90)),
    ("paged decode split", "paged_attention", "paged_decode_kernel", PAGED_SPLIT, None,
     dict(QUERIES_PER_KV=4, BLOCK_SIZE=16, BLOCK_G=4, BLOCK_D=128, SPLIT=True), (80, 90)),
    ("paged decode reduce", "paged_attention", "paged_decode_reduce_kernel", PAGED_REDUCE, None,
     dict(BLOCK_S=32, BLOCK_D=128), (80, 90)),
]


def compile_cases() -> dict[str, dict]:
    """Runs in the subprocess: per case, arch and table row, {"rows": max rows of the row,
    "result": "ok" or the first line of the error, "shared": bytes per program}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qfid.kernels.sources import load_source_module

    configs = load_source_module("triton", "configs")
    results = {}
    for label, stem, kernel, signature, table, fixed, caps in CASES:
        for cap in caps:
            rows = getattr(configs, table)["hopper" if cap >= 90 else "ampere"] if table else [(1, {})]
            for max_rows, row in rows:
                params = dict(row)
                options = {"num_warps": params.pop("num_warps", 4), "num_stages": params.pop("num_stages", 3)}
                constexprs = {**fixed, **params}
                source = ASTSource(fn=getattr(load_source_module("triton", stem), kernel),
                                   signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
                key = f"{label} sm_{cap} rows<={max_rows}"
                try:
                    compiled = triton.compile(source, target=GPUTarget("cuda", cap, 32), options=options)
                    results[key] = {"rows": max_rows, "result": "ok", "shared": compiled.metadata.shared}
                except Exception as exc:  # any compiler failure is the finding: report it
                    results[key] = {"rows": max_rows, "result": str(exc).strip().splitlines()[0], "shared": 0}
    return results


@pytest.mark.slow
def test_triton_kernels_compile_for_ampere_and_hopper():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(r["result"] == "ok" for r in results.values()), results
    assert {key.split(" sm_")[0] for key in results} == {case[0] for case in CASES}
    for key, r in results.items():
        cap = int(key.split("sm_")[1].split()[0])
        assert r["shared"] <= SHARED_LIMIT[cap], f"{key} needs {r['shared']} bytes of shared memory"
        if key.startswith("w4a16") and r["rows"] <= 16:   # decode: at least two programs per SM
            assert 2 * r["shared"] <= SHARED_LIMIT[cap], f"{key} needs {r['shared']} bytes of shared memory"


if __name__ == "__main__":
    print(json.dumps(compile_cases()))
