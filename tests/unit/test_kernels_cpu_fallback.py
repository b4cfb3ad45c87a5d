"""The CPU backend where qfid's AVX-512 kernels do not build: fp32 activations take the
reference's dequantize-then-GEMM (torch's int4 kernel is ~20-40x slower there), 16-bit ones
torch's int4 kernel; both against the torch reference on fresh random inputs."""
from __future__ import annotations

import pytest
import torch

from qfid.kernels import cpu, reference
from qfid.layouts.packing import pack_awq_gemm
from qfid.layouts.primitives import int4_quantize


@pytest.fixture
def no_qfid_ops(monkeypatch):
    monkeypatch.setattr(cpu, "load_cpu_ops", lambda: False)


@pytest.mark.parametrize("rows", [1, 7, 130])
def test_fp32_rows_equal_the_reference_exactly(no_qfid_ops, rows):
    g = torch.Generator().manual_seed(rows)
    packed = pack_awq_gemm(int4_quantize(torch.randn(96, 256, generator=g), 64))
    x, bias = torch.randn(rows, 256, generator=g), torch.randn(96, generator=g)
    prepared = cpu.prepare_int4(*packed, 64)
    assert prepared["kind"] == "torch"
    expected = reference.int4_linear(x, reference.prepare_int4(*packed, 64), bias)
    assert torch.equal(cpu.int4_linear(x, prepared, bias), expected)


def test_bf16_rows_use_torchs_int4_kernel_within_bf16_rounding(no_qfid_ops):
    g = torch.Generator().manual_seed(3)
    packed = pack_awq_gemm(int4_quantize(torch.randn(64, 128, generator=g), 32))
    x = torch.randn(5, 128, generator=g).bfloat16()
    got = cpu.int4_linear(x, cpu.prepare_int4(*packed, 32), None)
    expected = reference.int4_linear(x.float(), reference.prepare_int4(*packed, 32), None)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=1e-2 * float(expected.abs().max()))  # bf16 output
