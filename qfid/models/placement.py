"""Where and in what a model runs, decided the same way by the quantizer, the runtime and the
evaluation backends: the device (`auto` is the GPU when torch sees one) and the dtype. The
dtypes are listed once here, with the rule `auto` follows (vLLM's): a 16-bit checkpoint
runs in its own dtype, an fp32 one in bf16 where the device computes bf16 natively; where
it does not, fp16 on a GPU and fp32 on a CPU. On a CPU a 16-bit checkpoint runs in bf16 (as vLLM's CPU backend, which has no fast
fp16 path) where bf16 is native, else in fp32: emulated bf16 on an AVX2 CPU is several
times slower than fp32 there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from qfid.errors import QfidError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")   # importing this needs no torch (CLI help)


def check_dtype_name(name: str) -> str:
    if name not in DTYPE_NAMES:
        raise QfidError(f"dtype must be one of {', '.join(DTYPE_NAMES)}; got {name!r}")
    return name


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def native_bf16(device: "torch.device | str") -> bool:
    """Whether `device` computes bf16 in hardware (AVX-512 BF16 or AMX on a CPU; sm_80+ on CUDA)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_dtype(name: str, model_config: dict, device: "torch.device | str") -> "torch.dtype":
    """The torch dtype for `name` (one of DTYPE_NAMES) given the checkpoint's config.json."""
    import torch

    if check_dtype_name(name) != "auto":
        return torch_dtype(name)
    device = torch.device(device)
    stored = model_config.get("torch_dtype") or model_config.get("dtype")
    if device.type == "cuda" and stored in ("bfloat16", "float16"):
        return torch_dtype(stored) if stored == "float16" or native_bf16(device) else torch.float16
    if native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


def dtype_name(dtype: "torch.dtype") -> str:
    return str(dtype).removeprefix("torch.")


def resolve_device(name: str) -> "torch.device":
    """`auto`: CUDA when torch sees a GPU, else the CPU; `cpu`, `cuda`, `cuda:N` as given, and
    a one-line error for anything else or for CUDA on a machine without it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise QfidError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise QfidError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QfidError(f"device {name}: no CUDA GPU is available here")
    return device
