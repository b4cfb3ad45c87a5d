"""The CUDA backend: kernels/cuda built with torch.utils.cpp_extension.load on first use
(only where torch has CUDA and a GPU is visible), cached under the user cache.

Decode-sized batches (up to 8 rows) run the fused AWQ GEMV; larger batches dequantize
once into the activation dtype and use cuBLAS, as does FP8 (weight-only on the tensor
cores of every generation; activations rounded through E4M3 in torch when the scheme
quantizes them).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import shutil

import torch
import torch.nn.functional as F

from qfid.kernels import reference
from qfid.kernels.sources import source_path
from qfid.paths import cache_dir

log = logging.getLogger(__name__)

SOURCES = ("binding.cpp", "awq_gemv.cu", "fp8_dequant.cu")
HEADERS = ("dtypes.cuh",)
GEMV_ROWS = 8          # kMaxRows in awq_gemv.cu
BLOCKS_PER_SM = 4      # GEMV blocks asked for per SM (see _split_for)
NVCC_FLAGS = ["-O3", "-std=c++17", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]


def unavailable(device: torch.device) -> str | None:
    """Why the CUDA backend cannot run on `device`; None when it can."""
    if device.type != "cuda":
        return "the CUDA kernels take CUDA tensors"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return "this torch has no usable CUDA"
    if shutil.which("nvcc") is None:
        return "nvcc is not on PATH"
    return None if _load() else "the CUDA extension failed to build (see the log)"


@functools.lru_cache(maxsize=1)
def _load() -> bool:
    from torch.utils.cpp_extension import load

    digest = hashlib.sha256(torch.__version__.encode())
    for name in SOURCES + HEADERS:
        digest.update(source_path("cuda", name).read_bytes())
    build = cache_dir() / "kernels" / f"cuda-{digest.hexdigest()[:16]}"
    build.mkdir(parents=True, exist_ok=True)
    try:
        load(name="qfid_cuda_kernels", sources=[str(source_path("cuda", s)) for s in SOURCES],
             extra_cuda_cflags=NVCC_FLAGS, build_directory=str(build), is_python_module=False)
    except (RuntimeError, OSError, ImportError) as exc:
        log.warning("qfid CUDA kernels failed to build: %s", exc)
        return False
    return True


def _split_for(device: torch.device, out_features: int) -> int:
    """Grid y size asked of the GEMV: BLOCKS_PER_SM blocks of 256 threads per SM (its
    register budget lets that many reside); the kernel caps it at the slices it has."""
    blocks_x = -(-out_features // 256)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, -(-BLOCKS_PER_SM * sms // blocks_x))


def prepare_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> dict:
    """Scales upcast once to fp32 (exact) so one kernel serves fp16/bf16/fp32 checkpoints."""
    return {"qweight": qweight.contiguous(), "qzeros": qzeros.contiguous(), "scales": scales.float().contiguous(),
            "group_size": group_size}


def int4_linear(x: torch.Tensor, t: dict, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    if rows.shape[0] > GEMV_ROWS:
        w = torch.ops.qfid_cuda.awq_dequant(t["qweight"], t["qzeros"], t["scales"], t["group_size"], x.dtype)
        return F.linear(x, w.t(), bias)
    split = _split_for(x.device, t["scales"].shape[1])
    y = torch.ops.qfid_cuda.awq_gemv(rows, t["qweight"], t["qzeros"], t["scales"], t["group_size"], split)
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               input_scale: torch.Tensor | None, quantize_activations: bool) -> torch.Tensor:
    x = reference.rounded_activations(x, input_scale, quantize_activations)
    w = torch.ops.qfid_cuda.fp8_dequant(weight, weight_scale, x.dtype)
    return F.linear(x, w, bias)
