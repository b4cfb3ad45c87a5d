"""What the engine decides once at start-up: the dtype `auto` resolves to (vLLM's rule), the
device `auto` resolves to, the attention backend per device (and QFID_ATTENTION forcing
one), and the GPU KV-cache budget arithmetic."""
from __future__ import annotations

import pytest
import torch

from qfid.engine.kv_cache import kv_budget_bytes
from qfid.models.placement import resolve_device
from qfid.errors import QfidError
from qfid.kernels import dispatch
from qfid.models import placement as dtypes


@pytest.mark.parametrize("native, stored, device, expected", [
    (True, "float32", "cpu", torch.bfloat16),      # fp32 checkpoint, native bf16: bf16
    (False, "float32", "cpu", torch.float32),      # no native bf16 on this CPU: fp32
    (True, "float16", "cpu", torch.bfloat16),      # a CPU runs 16-bit checkpoints in bf16 (no fast fp16)
    (False, "bfloat16", "cpu", torch.float32),     # ... or in fp32 without native bf16
    (True, "float16", "cuda", torch.float16),      # a GPU keeps the checkpoint's 16-bit dtype
    (True, "bfloat16", "cuda", torch.bfloat16),
    (False, "bfloat16", "cuda", torch.float16),    # pre-Ampere: bf16 -> fp16
    (True, None, "cuda", torch.bfloat16),          # no dtype recorded: treated as fp32
    (False, "float32", "cuda", torch.float16),
])
def test_auto_dtype_follows_vllms_rule(monkeypatch, native, stored, device, expected):
    monkeypatch.setattr(dtypes, "native_bf16", lambda _device: native)
    config = {} if stored is None else {"torch_dtype": stored}
    assert dtypes.resolve_dtype("auto", config, device) == expected


def test_named_dtypes_pass_through_and_bad_names_fail():
    assert dtypes.resolve_dtype("float16", {"torch_dtype": "bfloat16"}, "cpu") == torch.float16
    with pytest.raises(QfidError, match="dtype must be one of auto"):
        dtypes.resolve_dtype("int8", {}, "cpu")


def test_auto_device_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(QfidError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(QfidError, match="device must be"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_attention_backend_per_device_and_forced(monkeypatch):
    monkeypatch.delenv("QFID_ATTENTION", raising=False)
    monkeypatch.delenv("QFID_KERNEL", raising=False)
    cpu_kernels = dispatch._cpu_kernels_run(torch.device("cpu"))
    assert dispatch.attention_backend("cpu", torch.float32, 8, 2, 64) == ("cpu" if cpu_kernels else "torch")
    assert dispatch.attention_backend("cpu", torch.float32, 8, 2, 64, requested="torch") == "torch"
    monkeypatch.setenv("QFID_KERNEL", "reference")        # the CPU kernels off: torch attention
    assert dispatch.attention_backend("cpu", torch.float32, 8, 2, 64) == "torch"
    monkeypatch.setenv("QFID_ATTENTION", "cpu")
    with pytest.raises(QfidError, match="attention backend cpu cannot run"):
        dispatch.attention_backend("cpu", torch.float32, 8, 2, 64)
    monkeypatch.setenv("QFID_ATTENTION", "flash")
    with pytest.raises(QfidError, match="QFID_ATTENTION='flash' is not one of"):
        dispatch.attention_backend("cpu", torch.float32, 8, 2, 64)


def test_triton_attention_needs_a_gpu_or_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("QFID_ATTENTION", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(QfidError, match="attention backend triton cannot run on cpu"):
        dispatch.attention_backend("cpu", torch.float32, 8, 2, 64, requested="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.attention_backend("cpu", torch.float32, 8, 2, 64, requested="triton") == "triton"


def test_gpu_kv_budget_is_what_the_model_and_its_largest_step_leave():
    gib = 2**30
    # 80 GiB card, 18 GiB in use after loading (weights + context), a step peaks 3 GiB above that
    assert kv_budget_bytes(80 * gib, 62 * gib, 3 * gib, 0.9) == int(80 * gib * 0.9) - 18 * gib - 3 * gib
    assert kv_budget_bytes(80 * gib, 5 * gib, 3 * gib, 0.9) == 0      # nothing left: never negative


def test_decode_graph_buckets_cover_every_batch_up_to_max_num_seqs():
    from qfid.engine.cuda_graphs import graph_buckets

    assert graph_buckets(1) == [1]
    assert graph_buckets(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    buckets = graph_buckets(256)
    assert buckets[-1] == 256 and all(any(b >= rows for b in buckets) for rows in range(1, 257))
