"""The Triton backend: launchers for the kernels in kernels/triton.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (how the tests prove the
kernels without a GPU). Launch parameters come from the written-down tables in
kernels/triton/configs.py, picked by GPU generation and batch rows; nothing is searched.
Triton itself is imported only when a launcher first runs.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

import torch
import torch.nn.functional as F

from qfid.kernels import reference
from qfid.kernels.sources import load_source_module
from qfid.layouts.primitives import FP8_DTYPE, FP8_E4M3_MAX

DENSE_ROWS = 256    # above this many rows, dequantize + cuBLAS beats the fused GEMM


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on `device`; None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return "Triton needs a CUDA device (or CPU tensors under TRITON_INTERPRET=1)"


def _source(stem: str) -> ModuleType:
    return load_source_module("triton", stem)


@functools.lru_cache(maxsize=8)
def arch(device: torch.device) -> str:
    """The config table row set: 'hopper' (sm_90+), 'ampere' (sm_80-89), 'interpreter'."""
    if device.type != "cuda":
        return "interpreter"
    major, _ = torch.cuda.get_device_capability(device)
    return "hopper" if major >= 9 else "ampere"


def _launch_params(table_name: str, device: torch.device, rows: int) -> tuple[dict, dict]:
    """(kernel meta-parameters, launch options) from the config table."""
    params = _source("configs").pick(getattr(_source("configs"), table_name), arch(device), rows)
    options = {"num_warps": params.pop("num_warps"), "num_stages": params.pop("num_stages")}
    return params, options


def _f32_dot(x: torch.Tensor) -> bool:
    """Run the MMA in IEEE fp32: for fp32 activations, and for bf16 under the interpreter,
    whose numpy emulation of bf16 casts and dots is broken (bf16 is exact in fp32)."""
    return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and x.device.type != "cuda")


def _store_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """What a kernel writes for a `dtype` result: fp32 in place of bf16 under the
    interpreter, which truncates instead of rounding (torch then rounds on the way out)."""
    return torch.float32 if dtype == torch.bfloat16 and device.type != "cuda" else dtype


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# -- INT4 ------------------------------------------------------------------------------------

def awq_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                   dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense [out, in] weight from AutoAWQ GEMM tensors."""
    K, N = qweight.shape[0], scales.shape[1]
    out = torch.empty(N, K, dtype=_store_dtype(dtype, qweight.device), device=qweight.device)
    p, o = _launch_params("DEQUANT", qweight.device, 0)
    grid = (_cdiv(K, p["BLOCK_R"]), _cdiv(N, p["BLOCK_C"]))
    _source("int4_dequant").awq_dequant_kernel[grid](qweight, qzeros, scales, out, K, N, group_size, **p, **o)
    return out.to(dtype)


def ct_dequantize(weight_packed: torch.Tensor, weight_zero_point: torch.Tensor | None, weight_scale: torch.Tensor,
                  group_size: int, shape: tuple[int, int], dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense [out, in] weight from compressed-tensors pack-quantized tensors."""
    N, K = shape
    out = torch.empty(N, K, dtype=_store_dtype(dtype, weight_packed.device), device=weight_packed.device)
    p, o = _launch_params("DEQUANT", weight_packed.device, 0)
    grid = (_cdiv(N, p["BLOCK_R"]), _cdiv(K, p["BLOCK_C"]))
    zeros = weight_zero_point if weight_zero_point is not None else weight_packed  # unread when HAS_ZERO is off
    _source("int4_dequant").ct_dequant_kernel[grid](weight_packed, zeros, weight_scale, out, N, K, group_size,
                                                    HAS_ZERO=weight_zero_point is not None, **p, **o)
    return out.to(dtype)


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
               group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fused y = x @ W^T + bias for x [M, K] (fp16/bf16/fp32) and W in AutoAWQ GEMM layout."""
    x = x.contiguous()
    M, K = x.shape
    N = scales.shape[1]
    if group_size < 16 and x.device.type == "cuda":
        raise ValueError(f"the fused W4A16 GEMM needs groups of >= 16 inputs (tl.dot's minimum); got {group_size}")
    p, o = _launch_params("W4A16_GEMM", x.device, M)
    p["BLOCK_K"] = min(p["BLOCK_K"], group_size)
    split = p["SPLIT_K"]
    y = (torch.zeros(M, N, dtype=torch.float32, device=x.device) if split > 1
         else torch.empty(M, N, dtype=_store_dtype(x.dtype, x.device), device=x.device))
    grid = (_cdiv(M, p["BLOCK_M"]), _cdiv(N, p["BLOCK_N"]), split)
    _source("w4a16_gemm").w4a16_gemm_kernel[grid](
        x, qweight, qzeros, scales, bias if bias is not None else scales, y, M, N, K, group_size,
        x.stride(0), y.stride(0), HAS_BIAS=bias is not None, F32_DOT=_f32_dot(x), **p, **o)
    if split > 1 and bias is not None:
        y += bias.float()
    return y.to(x.dtype)


# -- FP8 -------------------------------------------------------------------------------------

def fp8_dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """[N, K] E4M3 times a [N, 1] / [N] or [1] scale -> dense [N, K]."""
    N, K = weight.shape
    out = torch.empty(N, K, dtype=_store_dtype(dtype, weight.device), device=weight.device)
    p, o = _launch_params("DEQUANT", weight.device, 0)
    grid = (_cdiv(N, p["BLOCK_R"]), _cdiv(K, p["BLOCK_C"]))
    _source("fp8").fp8_dequant_kernel[grid](weight, scale, out, N, K, 1 if scale.numel() > 1 else 0, **p, **o)
    return out.to(dtype)


def fp8_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
             x_scale: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = (x * x_scale) @ (weight * weight_scale)^T + bias. x is high precision
    (weight-only), or E4M3 with `x_scale` [M] (one scale per row)."""
    x = x.contiguous()
    M, K = x.shape
    N = weight.shape[0]
    x_fp8 = x.dtype == FP8_DTYPE
    if x_fp8 and x_scale is None:
        raise ValueError("E4M3 activations need their per-row x_scale")
    out_dtype = out_dtype or x.dtype
    y = torch.empty(M, N, dtype=_store_dtype(out_dtype, x.device), device=x.device)
    p, o = _launch_params("FP8_GEMM", x.device, M)
    grid = (_cdiv(M, p["BLOCK_M"]), _cdiv(N, p["BLOCK_N"]))
    _source("fp8").fp8_gemm_kernel[grid](
        x, x_scale if x_fp8 else weight_scale, weight, weight_scale, bias if bias is not None else weight_scale, y,
        M, N, K, x.stride(0), y.stride(0), 1 if weight_scale.numel() > 1 else 0,
        X_FP8=x_fp8, HAS_BIAS=bias is not None, F32_DOT=_f32_dot(x), **p, **o)
    return y.to(out_dtype)


def quantize_rows_fp8(x: torch.Tensor, input_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 activations and their per-row scales: per token from each row's max |x|, or the
    static per-tensor scale on every row (the rounding `fp8_fake_quantize_activation` models)."""
    xf = x.float()
    if input_scale is None:
        scale = (xf.abs().amax(dim=-1) / FP8_E4M3_MAX).clamp(min=1e-12)
    else:
        scale = input_scale.float().reshape(1).expand(x.shape[0])
    q = torch.clamp(xf / scale[:, None], -FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)
    return q, scale.contiguous()


def native_fp8(device: torch.device) -> bool:
    """FP8 tensor-core MMA exists from sm_89 (Ada) on; the interpreter emulates it."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


# -- paged attention -------------------------------------------------------------------------

def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           blocks_per_split: int | None = None) -> torch.Tensor:
    """q [B, heads, d]; caches [num_blocks, block_size, kv_heads, d] (any strides with d
    contiguous) -> out [B, heads, d]. The KV length is cut into splits of `blocks_per_split`
    blocks (None: `decode_split_blocks` picks), reduced by a second kernel when there are
    several. The split count comes from the table width, known on the host: no sync."""
    B, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if k_cache.stride(-1) != 1 or q.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
        raise ValueError("paged attention needs head_dim contiguous and K/V caches with equal strides")
    group = heads // kv_heads
    max_blocks = block_tables.shape[1]
    per_split = blocks_per_split or decode_split_blocks(q.device, B * kv_heads, max_blocks)
    splits = _cdiv(max_blocks, per_split)
    out = torch.empty(q.shape, dtype=_store_dtype(q.dtype, q.device), device=q.device)
    if splits > 1:
        partial = torch.empty(B, heads, splits, dim, dtype=torch.float32, device=q.device)
        m = torch.empty(B, heads, splits, dtype=torch.float32, device=q.device)
        l = torch.empty_like(m)
    else:
        partial, m, l = out, out, out     # m, l unread with one split
    _, o = _launch_params("PAGED_DECODE", q.device, B)
    _source("paged_attention").paged_decode_kernel[(B, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, partial, m, l, scale, dim, per_split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        QUERIES_PER_KV=group, BLOCK_SIZE=block_size, BLOCK_G=triton_next_pow2(group),
        BLOCK_D=triton_next_pow2(dim), SPLIT=splits > 1, **o)
    if splits > 1:
        _source("paged_attention").paged_decode_reduce_kernel[(B, heads)](
            partial, m, l, out, dim, splits, out.stride(0), out.stride(1), heads,
            BLOCK_S=triton_next_pow2(splits), BLOCK_D=triton_next_pow2(dim), **o)
    return out.to(q.dtype)


MIN_SPLIT_BLOCKS = 4   # below ~64 tokens a split's fixed cost outweighs the parallelism it adds


def decode_split_blocks(device: torch.device, programs: int, max_blocks: int) -> int:
    """Blocks per split so that `programs` (sequences x KV heads; the engine passes one
    sequence's KV heads, so a lone long sequence fills the GPU) times the splits of a
    `max_blocks`-long context fill the GPU about twice over, never splitting finer than
    MIN_SPLIT_BLOCKS; one split under the interpreter."""
    if device.type != "cuda":
        return max(1, max_blocks)
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    splits = max(1, -(-target // max(1, programs)))
    return max(MIN_SPLIT_BLOCKS, -(-max_blocks // splits))


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# -- backend interface (see qfid.kernels.dispatch) -------------------------------------------

def prepare_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> dict:
    """The fused kernel reads the AWQ layout as it is: nothing to repack."""
    return {"qweight": qweight.contiguous(), "qzeros": qzeros.contiguous(), "scales": scales.contiguous(),
            "group_size": group_size}


def int4_linear(x: torch.Tensor, t: dict, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] > DENSE_ROWS and not interpreting():
        w = awq_dequantize(t["qweight"], t["qzeros"], t["scales"], t["group_size"], x.dtype)
        return F.linear(x, w, bias)
    y = w4a16_gemm(rows, t["qweight"], t["qzeros"], t["scales"], t["group_size"], bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               input_scale: torch.Tensor | None, quantize_activations: bool) -> torch.Tensor:
    """W8A8 on FP8 tensor cores where they exist (sm_89+); Triton has no E4M3 type before
    that, so older GPUs take the torch dequantize path."""
    if not native_fp8(x.device):
        return reference.fp8_linear(x, weight, weight_scale, bias, input_scale, quantize_activations)
    rows = x.reshape(-1, x.shape[-1])
    if quantize_activations:
        xq, x_scale = quantize_rows_fp8(rows, input_scale)
        y = fp8_gemm(xq, weight, weight_scale, bias, x_scale, out_dtype=x.dtype)
    else:
        y = fp8_gemm(rows, weight, weight_scale, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])
