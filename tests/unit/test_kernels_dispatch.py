"""Backend selection: automatic per device, forced with QFID_KERNEL, logged once, lazy
imports, and the public entry points agreeing with the quantized Linear modules (on CPU
always; on CUDA, through every GPU backend, where torch sees a GPU)."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from qfid.errors import QfidError
from qfid.kernels import dispatch, fp8_linear, int4_linear, prepare_int4, select_backend
from qfid.quant.linear import Fp8Linear, Int4Linear
from tests.unit.test_kernels_reference import TOL, awq_case, random_fp8, rel_err


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("QFID_KERNEL", raising=False)
    monkeypatch.setattr(dispatch, "_logged", set())


def test_cpu_tensors_get_the_cpu_backend():
    assert select_backend("cpu") == "cpu"


def test_forcing_each_cpu_capable_backend(monkeypatch):
    monkeypatch.setenv("QFID_KERNEL", "reference")
    assert select_backend("cpu") == "reference"
    monkeypatch.setenv("QFID_KERNEL", " CPU ")
    assert select_backend("cpu") == "cpu"


def test_bad_or_impossible_forcing_is_an_error(monkeypatch):
    monkeypatch.setenv("QFID_KERNEL", "tpu")
    with pytest.raises(QfidError, match="not one of"):
        select_backend("cpu")
    monkeypatch.setenv("QFID_KERNEL", "cuda")
    with pytest.raises(QfidError, match="cannot run on cpu"):
        select_backend("cpu")


def test_choice_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="qfid.kernels.dispatch"):
        for _ in range(3):
            select_backend("cpu")
    assert [r.getMessage() for r in caplog.records] == ["qfid kernels: cpu backend on cpu"]


def test_importing_needs_no_triton_or_build():
    code = ("import sys, qfid.kernels, qfid.kernels.dispatch; "
            "bad = [m for m in ('triton', 'qfid.kernels.cpu_build', 'qfid.kernels.cuda_ops') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_matches_int4linear(monkeypatch, backend, dtype):
    monkeypatch.setenv("QFID_KERNEL", backend)
    x, q, _, bias, ref = awq_case(3, 80, 96, 32, dtype)
    layer = Int4Linear.from_int4(q, bias.to(dtype))
    prepared = prepare_int4(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    assert prepared.backend == backend
    y = int4_linear(x, layer.qweight, layer.qzeros, layer.scales, layer.group_size, layer.bias, prepacked=prepared)
    assert y.shape == layer(x).shape and y.dtype == dtype
    # the module's reference rounds its dense weight to bf16, hence 2x for bf16
    assert rel_err(y, ref) < TOL[dtype] * 2
    assert rel_err(layer(x), ref) < TOL[dtype] * 2


def test_prepared_for_another_backend_is_repacked(monkeypatch):
    x, _, (qw, qz, sc), bias, ref = awq_case(1, 80, 96, 32, torch.float32)
    monkeypatch.setenv("QFID_KERNEL", "reference")
    stale = prepare_int4(qw, qz, sc, 32)
    assert prepare_int4(qw, qz, sc, 32, reuse=stale) is stale
    monkeypatch.setenv("QFID_KERNEL", "cpu")
    assert not stale.usable_for("cpu", x.device)
    assert rel_err(int4_linear(x, qw, qz, sc, 32, bias, prepacked=stale), ref) < TOL[torch.float32]
    fresh = prepare_int4(qw, qz, sc, 32, reuse=stale)
    assert fresh.backend == "cpu" and fresh is not stale


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("quantize,static", [(False, False), (True, False), (True, True)])
def test_fp8_linear_matches_fp8linear(monkeypatch, backend, quantize, static):
    monkeypatch.setenv("QFID_KERNEL", backend)
    f = random_fp8(72, 96, per_channel=True)
    x = torch.randn(3, 96)
    if static:
        f.input_scale = (x.abs().amax() / 448).reshape(1)
    layer = Fp8Linear.from_fp8(f, quantize_activations=quantize)
    y = fp8_linear(x, f.weight, f.scale, None, f.input_scale, quantize_activations=quantize)
    assert rel_err(y, layer(x).double()) < TOL[torch.float32]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpu_backend_or_skip(monkeypatch, backend: str) -> None:
    monkeypatch.setenv("QFID_KERNEL", backend)
    if backend != "reference" and (reason := dispatch._module(backend).unavailable(torch.device("cuda"))):
        pytest.skip(reason)


@needs_cuda
def test_cuda_tensors_get_a_gpu_backend():
    assert select_backend("cuda") in ("cuda", "triton")


@needs_cuda
@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("m", [1, 5, 64, 300])   # decode GEMV / fused GEMM sizes, then the dense paths
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int4linear_on_gpu_backends(monkeypatch, backend, m, dtype):
    _gpu_backend_or_skip(monkeypatch, backend)
    x, q, _, bias, ref = awq_case(m, 264, 512, 128, dtype, seed=m)
    layer = Int4Linear.from_int4(q, bias.to(dtype)).cuda()
    y = layer(x.cuda())
    assert layer._prepared.backend == backend and y.dtype == dtype and y.is_cuda
    # the dense paths round the weight to the activation dtype once: 2x, as for the reference
    assert rel_err(y, ref) < TOL[dtype] * 2


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("quantize,static", [(False, False), (True, False), (True, True)])
def test_fp8linear_on_gpu_backends_match_reference(monkeypatch, backend, quantize, static):
    _gpu_backend_or_skip(monkeypatch, backend)
    f = random_fp8(264, 512, per_channel=not static)
    x = torch.randn(7, 512).half()
    if static:
        f.input_scale = (x.float().abs().amax() / 448).reshape(1)
    layer = Fp8Linear.from_fp8(f, quantize_activations=quantize).cuda()
    y = layer(x.cuda())
    monkeypatch.setenv("QFID_KERNEL", "reference")
    expected = layer.cpu()(x)
    # W8A8 on the FP8 MMA keeps the rounded activations in fp32; the reference rounds them to fp16
    assert y.dtype == torch.float16 and rel_err(y, expected.double()) < TOL[torch.float16] * 2


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_activation_rounding_is_the_torch_chain_on_either_backend(monkeypatch, backend, static):
    """The quantize drift pass rounds activations through this: qfid's op (when the CPU
    backend runs) or the torch chain, the same bits either way."""
    from qfid.layouts.primitives import fp8_fake_quantize_activation

    monkeypatch.setenv("QFID_KERNEL", backend)
    x = torch.randn(33, 96, generator=torch.Generator().manual_seed(3)) * 10
    scale = torch.tensor([0.05]) if static else None
    assert torch.equal(dispatch.fp8_round_activations(x, scale), fp8_fake_quantize_activation(x, scale))
