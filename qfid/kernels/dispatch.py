"""Pick a kernel backend per device and route the quantized matmuls to it.

Order: CUDA -> Triton on a GPU, qfid's CPU kernels on a CPU, the torch reference last.
Nothing here imports triton, compiles CUDA or needs a GPU until a call actually runs on
such a device, so `import qfid` stays cheap everywhere. `QFID_KERNEL=reference|triton|
cuda|cpu` forces a backend (for tests and side-by-side comparisons); a forced backend that
cannot run on the device is an error rather than a silent fallback. Each (device type,
backend) choice is logged once.

The runtime's other kernel choices are made here too, once per model at build time:
`attention_backend` (torch | cpu | triton; `QFID_ATTENTION` forces one), `fused_elementwise`
(norms, RoPE and SiLU-and-mul as fused CPU ops) and `packed_dense` (dense bf16 weights
repacked for the CPU GEMM); the quantizer's `int4_fake_quantize` goes through it too.

Every matmul backend module exposes the same three functions:
`prepare_int4(qweight, qzeros, scales, group_size) -> dict`,
`int4_linear(x, prepared_dict, bias)` and
`fp8_linear(x, weight, weight_scale, bias, input_scale, quantize_activations)`;
a backend may add `bind_int4(prepared_dict, bias)` / `bind_fp8(...)` (fp8_linear's
arguments but x) returning a faster callable (with a `tensors()` method, as `BoundKernel`
has).

`bind_int4` / `bind_fp8` make the choice once for one layer and return `x -> y`: the
runtime model binds its quantized layers at build time (`layers.packed_linear`), since
choosing per call (two environment reads and a module lookup) cost ~15 us a call, 120
calls in a batch-1 decode step of the default model.
"""
from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from qfid.errors import QfidError

log = logging.getLogger(__name__)

KERNEL_ENV = "QFID_KERNEL"
BACKENDS = ("cuda", "triton", "cpu", "reference")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
_MODULES = {"cuda": "qfid.kernels.cuda_ops", "triton": "qfid.kernels.triton_ops",
            "cpu": "qfid.kernels.cpu", "reference": "qfid.kernels.reference"}
_logged: set[tuple[str, str]] = set()
ATTENTION_ENV = "QFID_ATTENTION"
ATTENTION_BACKENDS = ("torch", "cpu", "triton")


def _unavailable(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device`; None when it can."""
    if backend == "reference":
        return None
    if backend == "cpu":
        return None if device.type == "cpu" else "the CPU kernels take CPU tensors"
    return _module(backend).unavailable(device)


def _module(backend: str) -> ModuleType:
    return importlib.import_module(_MODULES[backend])


def forced_backend() -> str | None:
    value = os.environ.get(KERNEL_ENV, "").strip().lower()
    if value and value not in BACKENDS:
        raise QfidError(f"{KERNEL_ENV}={value!r} is not one of {', '.join(BACKENDS)}")
    return value or None


def select_backend(device: torch.device | str) -> str:
    """The backend that runs quantized matmuls on `device` (see the module docstring)."""
    device = torch.device(device)
    forced = forced_backend()
    if forced:
        reason = _unavailable(forced, device)
        if reason:
            raise QfidError(f"{KERNEL_ENV}={forced} cannot run on {device.type}: {reason}")
        chosen = forced
    else:
        chosen = next(b for b in _AUTO_ORDER.get(device.type, ("reference",)) if not _unavailable(b, device))
    if (device.type, chosen) not in _logged:
        _logged.add((device.type, chosen))
        log.info("qfid kernels: %s backend on %s%s", chosen, device.type, " (forced)" if forced else "")
    return chosen


@dataclass(frozen=True)
class PreparedInt4:
    """An INT4 weight repacked once for one backend on one device (see `prepare_int4`)."""

    backend: str
    device: torch.device
    tensors: dict

    def usable_for(self, backend: str, device: torch.device) -> bool:
        return self.backend == backend and self.device == device


def prepare_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                 reuse: PreparedInt4 | None = None) -> PreparedInt4:
    """Repack AutoAWQ GEMM tensors for the backend of their device, once. `reuse` is
    returned as it is when it still fits (same backend and device), so a module can call
    this on every forward and pay only on the first call or after a move; it must drop its
    copy itself when the buffers change in place (load_state_dict)."""
    backend = select_backend(qweight.device)
    if reuse is not None and reuse.usable_for(backend, qweight.device):
        return reuse
    tensors = _module(backend).prepare_int4(qweight, qzeros, scales, group_size)
    return PreparedInt4(backend, qweight.device, tensors)


def int4_linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                group_size: int, bias: torch.Tensor | None = None,
                prepacked: PreparedInt4 | None = None) -> torch.Tensor:
    """`x @ W^T + bias` for W in AutoAWQ GEMM layout; `prepacked` from `prepare_int4` skips
    the per-call repack (without it every call repacks, which is only fit for tests)."""
    backend = select_backend(x.device)
    if prepacked is None or not prepacked.usable_for(backend, x.device):
        prepacked = PreparedInt4(backend, x.device, _module(backend).prepare_int4(qweight, qzeros, scales, group_size))
    return _module(backend).int4_linear(x, prepacked.tensors, bias)


class BoundKernel:
    """`x -> fn(x, *args)`: one layer's kernel call with its other arguments fixed."""

    def __init__(self, fn: Callable[..., torch.Tensor], *args):
        self.fn, self.args = fn, args

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args)

    def tensors(self) -> list[torch.Tensor]:
        """What the kernel reads (for memory accounting): the tensors among its arguments."""
        found = []
        for arg in self.args:
            found += [v for v in (arg.values() if isinstance(arg, dict) else [arg]) if isinstance(v, torch.Tensor)]
        return found


def bind_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
              bias: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> x @ W^T + bias` for one AutoAWQ GEMM weight, with the backend of its device
    chosen and the weight repacked now (the same kernel `int4_linear` would call)."""
    prepared = prepare_int4(qweight, qzeros, scales, group_size)
    backend = _module(prepared.backend)
    if hasattr(backend, "bind_int4"):
        return backend.bind_int4(prepared.tensors, bias)
    return BoundKernel(backend.int4_linear, prepared.tensors, bias)


def bind_fp8(weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
             input_scale: torch.Tensor | None = None,
             quantize_activations: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """`fp8_linear` for one layer, its backend chosen now."""
    backend = _module(select_backend(weight_fp8.device))
    if hasattr(backend, "bind_fp8"):
        return backend.bind_fp8(weight_fp8, weight_scale, bias, input_scale, quantize_activations)
    return BoundKernel(backend.fp8_linear, weight_fp8, weight_scale, bias, input_scale, quantize_activations)


def fp8_linear(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, input_scale: torch.Tensor | None = None,
               quantize_activations: bool = True) -> torch.Tensor:
    """`act(x) @ (weight_fp8 * weight_scale)^T + bias`, the semantics of `Fp8Linear`:
    activations are rounded through E4M3 (static `input_scale`, else per token) unless
    `quantize_activations` is False (weight-only FP8)."""
    backend = _module(select_backend(x.device))
    return backend.fp8_linear(x, weight_fp8, weight_scale, bias, input_scale, quantize_activations)


# -- the runtime's other ops -----------------------------------------------------------------

def _cpu_kernels_run(device: torch.device) -> bool:
    """qfid's CPU ops run on `device`: a CPU, the CPU backend selected (QFID_KERNEL may force
    another) and the ops built."""
    return torch.device(device).type == "cpu" and select_backend(device) == "cpu" and _module("cpu").load_cpu_ops()


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(dim=-1)` of fp32 [rows, V] logits (the same indices, ties and NaN
    included): qfid's vectorised CPU op where it runs, torch's elsewhere (its CPU argmax is
    scalar, 43-55 us per row of a 49k vocabulary)."""
    if logits.dim() == 2 and logits.dtype == torch.float32 and logits.shape[-1] and _cpu_kernels_run(logits.device):
        return torch.ops.qfid_cpu.argmax_rows(logits.contiguous())
    return logits.argmax(dim=-1)


def fused_elementwise(device: torch.device, dtype: torch.dtype, hidden: int, head_dim: int,
                      intermediate: int | None) -> bool:
    """Whether a model of these widths runs its RMSNorm, RoPE and SiLU-and-mul as qfid's
    fused CPU ops (else torch's)."""
    return _cpu_kernels_run(device) and _module("cpu").elementwise_supported(dtype, hidden, head_dim, intermediate)


def packed_dense(weight: torch.Tensor) -> bool:
    """Whether this dense weight runs through qfid's packed bf16 CPU GEMM (else torch's linear)."""
    return _cpu_kernels_run(weight.device) and _module("cpu").bf16_dense_supported(weight)


def forced_attention() -> str | None:
    value = os.environ.get(ATTENTION_ENV, "").strip().lower()
    if value and value not in ATTENTION_BACKENDS:
        raise QfidError(f"{ATTENTION_ENV}={value!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    return value or None


def _attention_unavailable(name: str, device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int,
                           head_dim: int) -> str | None:
    if name == "torch":
        return None
    if name == "cpu":
        if not _cpu_kernels_run(device):
            return "qfid's CPU kernels do not run here (not a CPU, not built, or QFID_KERNEL forces another)"
        ok = _module("cpu").paged_decode_supported(dtype, heads, kv_heads, head_dim)
        return None if ok else f"no CPU paged-attention kernel for {dtype} with head_dim {head_dim}"
    return _module("triton").unavailable(device)


def attention_backend(device: torch.device | str, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int,
                      requested: str | None = None) -> str:
    """The paged-attention backend for a model on `device`: `requested` or QFID_ATTENTION when
    set (an error if it cannot run here), else triton on CUDA (torch without triton), qfid's
    CPU kernels on a CPU where they run, torch otherwise."""
    device = torch.device(device)
    forced = requested or forced_attention()
    if forced:
        if forced not in ATTENTION_BACKENDS:
            raise QfidError(f"attention backend {forced!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
        reason = _attention_unavailable(forced, device, dtype, heads, kv_heads, head_dim)
        if reason:
            raise QfidError(f"attention backend {forced} cannot run on {device.type}: {reason}")
        return forced
    order = ("triton", "torch") if device.type == "cuda" else ("cpu", "torch")
    return next(name for name in order if not _attention_unavailable(name, device, dtype, heads, kv_heads, head_dim))


def int4_fake_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None,
                       col_scale: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """`Q(clamp(w * col_scale, -clip, clip)) / col_scale` cast to `out`'s dtype (fp32 when no
    `out`): the candidate weights AWQ's scale and clip searches score, with Q the group INT4
    quantize-dequantize of `primitives.int4_fake_quantize_`. One fused pass with qfid's CPU
    kernel where it runs (bit for bit the same), else the torch reference's passes. `out`
    may be `w` itself (in place)."""
    out = out if out is not None else torch.empty_like(w, dtype=torch.float32)
    if _cpu_kernels_run(w.device) and _module("cpu").fake_quantize_supported(w, group_size, out):
        return _module("cpu").int4_fake_quantize(w, group_size, clip, col_scale, out)
    return _module("reference").int4_fake_quantize(w, group_size, clip, col_scale, out)


def fp8_round_activations(x: torch.Tensor, input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Activations rounded through E4M3 (per token, or with the static scale): qfid's CPU op
    where it runs, bit for bit `primitives.fp8_fake_quantize_activation` (NaN where it is
    NaN), whose ten torch ops it replaces; that chain elsewhere."""
    if x.dtype in (torch.float32, torch.bfloat16, torch.float16) and x.numel() and _cpu_kernels_run(x.device):
        return torch.ops.qfid_cpu.fp8_round_activations(x, input_scale)
    from qfid.layouts.primitives import fp8_fake_quantize_activation

    return fp8_fake_quantize_activation(x, input_scale)
