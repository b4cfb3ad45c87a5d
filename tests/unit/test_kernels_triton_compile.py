"""The Triton kernels compiled for real GPUs (sm_80 and sm_90) on this CPU-only machine,
with the launch parameters from kernels/triton/configs.py: catches what the interpreter
cannot (tl.dot shape and dtype rules, FP8 support per architecture, register allocation).

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
AWQ_DEQUANT = {"qweight_ptr": PTR_I32, "qzeros_ptr": PTR_I32, "scales_ptr": "*fp16", "out_ptr": "*fp16",
               "K": "i32", "N": "i32", "group_size": "i32"}
PAGED = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "block_tables_ptr": PTR_I32, "context_lens_ptr": PTR_I32,
         "out_ptr": "*bf16", "scale": "fp32", "head_dim": "i32", "stride_qb": "i32", "stride_qh": "i32", "stride_cb": "i32",
         "stride_cs": "i32", "stride_ch": "i32", "stride_bt": "i32", "stride_ob": "i32", "stride_oh": "i32"}

# (label, source stem, kernel, signature, config table or None, fixed constexprs, capabilities)
CASES = [
    ("w4a16 decode", "w4a16_gemm", "w4a16_gemm_kernel", W4A16, "W4A16_GEMM", dict(HAS_BIAS=True, F32_DOT=False), (80, 90)),
    ("fp8 w8a8", "fp8", "fp8_gemm_kernel", FP8_GEMM, "FP8_GEMM", dict(X_FP8=True, HAS_BIAS=True, F32_DOT=False), (90,)),
    ("awq dequant", "int4_dequant", "awq_dequant_kernel", AWQ_DEQUANT, "DEQUANT", {}, (80, 90)),
    ("paged decode", "paged_attention", "paged_decode_kernel", PAGED, None,
     dict(QUERIES_PER_KV=4, BLOCK_SIZE=16, BLOCK_G=4, BLOCK_D=128), (80, 90)),
]


def compile_cases() -> dict[str, str]:
    """Runs in the subprocess: 'ok' or the first line of the error, per case and arch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qfid.kernels.sources import load_source_module

    configs = load_source_module("triton", "configs")
    results = {}
    for label, stem, kernel, signature, table, fixed, caps in CASES:
        for cap in caps:
            params = {}
            if table:
                params = configs.pick(getattr(configs, table), "hopper" if cap >= 90 else "ampere", 1)
                params.pop("num_warps"), params.pop("num_stages")
            constexprs = {**fixed, **params}
            source = ASTSource(fn=getattr(load_source_module("triton", stem), kernel),
                               signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
            try:
                triton.compile(source, target=GPUTarget("cuda", cap, 32))
                results[f"{label} sm_{cap}"] = "ok"
            except Exception as exc:  # any compiler failure is the finding: report it
                results[f"{label} sm_{cap}"] = str(exc).strip().splitlines()[0]
    return results


@pytest.mark.slow
def test_triton_kernels_compile_for_ampere_and_hopper():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == sum(len(case[-1]) for case in CASES)
    assert all(v == "ok" for v in results.values()), results


if __name__ == "__main__":
    print(json.dumps(compile_cases()))
