"""The CUDA sources: compiled with nvcc for sm_80 and sm_90 and the compiler's resource
report checked (no spills; the GEMV fits the register file at its launch bounds), and run
against float64 where a GPU is present. Skipped where nvcc is absent.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

from qfid.kernels.sources import source_path
from tests.unit.test_kernels_reference import TOL, awq_case, random_fp8, rel_err

ARCHS = ("80", "90")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_ROWS = re.compile(r"awq_gemv_kernelI\w+?Li(\d)E")

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def resource_report(source: str, tmp_path) -> dict[tuple[str, str], dict[str, int]]:
    """{(mangled kernel, arch): {"spill": bytes stored + loaded, "registers": n}} from one
    nvcc run for both architectures."""
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = ["nvcc", "-std=c++17", "-O3", *gencode, "--resource-usage", "-c", str(source_path("cuda", source)),
           "-o", str(tmp_path / "out.o")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report, current = {}, None
    for line in (done.stdout + done.stderr).splitlines():
        if m := _ENTRY.search(line):
            current = (m.group(1), m.group(2))
            report[current] = {}
        elif (m := _SPILLS.search(line)) and current:
            report[current]["spill"] = int(m.group(1)) + int(m.group(2))
        elif (m := _REGS.search(line)) and current:
            report[current]["registers"] = int(m.group(1))
    return report


@needs_nvcc
def test_awq_kernels_compile_without_spills(tmp_path):
    report = resource_report("awq_gemv.cu", tmp_path)
    gemv = {key: r for key, r in report.items() if "awq_gemv_kernel" in key[0]}
    # 3 activation dtypes x 8 row counts, for each architecture
    assert {arch for _, arch in gemv} == set(ARCHS) and len(gemv) == 3 * 8 * len(ARCHS)
    for (name, arch), r in gemv.items():
        assert r["spill"] == 0, f"{name} spills on sm_{arch}"
        # batch-1 GEMV: <= 64 registers keeps 4 blocks of 256 threads per SM resident;
        # every variant keeps at least 2.
        limit = 64 if _ROWS.search(name).group(1) == "1" else 128
        assert r["registers"] <= limit, f"{name} uses {r['registers']} registers on sm_{arch}"
    assert any("awq_dequant_kernel" in name for name, _ in report)


@needs_nvcc
def test_fp8_dequant_compiles_without_spills(tmp_path):
    report = resource_report("fp8_dequant.cu", tmp_path)
    assert len(report) == 2 * 3 * len(ARCHS)   # vec8 + scalar, 3 output dtypes
    assert all(r["spill"] == 0 for r in report.values())


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or shutil.which("nvcc") is None,
                               reason="needs a CUDA GPU and nvcc")


@needs_gpu
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_backend_on_gpu(monkeypatch, m, dtype):
    from qfid.kernels import cuda_ops

    assert cuda_ops.unavailable(torch.device("cuda")) is None
    x, _, (qw, qz, sc), bias, ref = awq_case(m, 200, 384, 128, dtype, seed=m)
    dev = torch.device("cuda")
    prepared = cuda_ops.prepare_int4(qw.to(dev), qz.to(dev), sc.to(dev), 128)
    y = cuda_ops.int4_linear(x.to(dev), prepared, bias.to(dev, dtype)).cpu()
    # above 8 rows the dense path runs cuBLAS, which may reduce fp16/bf16 in lower precision
    slack = 4 if m > cuda_ops.GEMV_ROWS else 1
    assert rel_err(y, ref) < TOL[dtype] * slack
    f = random_fp8(200, 384, per_channel=m > 1)
    y8 = cuda_ops.fp8_linear(x.to(dev), f.weight.to(dev), f.scale.to(dev), None, None, False).cpu()
    assert rel_err(y8, x.double() @ f.dequantize(torch.float64).T) < TOL[dtype] * 4


@needs_gpu
@pytest.mark.parametrize("m", range(1, 9))
@pytest.mark.parametrize("k,group", [(384, 128), (360, 20)])   # slices of 32 rows; a group they don't divide
@pytest.mark.parametrize("split", [1, 3, 1000])                 # grid y: one block loops over every slice .. capped
def test_cuda_gemv_rows_groups_and_splits(m, k, group, split):
    from qfid.kernels import cuda_ops

    dev = torch.device("cuda")
    assert cuda_ops.unavailable(dev) is None   # builds and loads the ops
    x, _, (qw, qz, sc), bias, ref = awq_case(m, 200, k, group, torch.float16, seed=m)
    y = torch.ops.qfid_cuda.awq_gemv(x.to(dev), qw.to(dev), qz.to(dev), sc.float().to(dev), group, split)
    assert rel_err(y + bias.to(dev), ref) < TOL[torch.float16] / 10   # fp32 output: no fp16 rounding
