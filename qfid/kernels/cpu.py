"""The CPU backend: qfid's AVX-512 BF16 kernels where they build, torch's own int4
weight-packed matmul where they do not, and the reference for FP8 as the last resort.

Measured on the Zen 4 development machine (bench/kernels.py, 2 threads): qfid's INT4
kernel runs a 14336x4096 layer at batch 1 in ~0.7-0.8 ms against ~1.6 ms for
`aten._weight_int4pack_mm_for_cpu`, and stays ahead of it at batch 8 and 64 (where torch's
falls to half of bf16 dense speed), so the well-kept torch op is the fallback rather than
the default. qfid's FP8 kernel is several times faster than bf16 dense at batch 1; above
8 rows it dequantizes into the bf16 GEMM's packed tiles (bf16 activations) or hands the
rows to oneDNN after dequantizing (fp32/fp16).

The module also fronts the runtime's other CPU ops: the packed dense bf16 GEMM, the paged
decode and prefill attention, the KV store and the fused elementwise ops of the Llama
forward (each with a `*_supported` check the runtime asks once at build time), and the
fused INT4 fake quantization the AWQ searches score.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qfid.kernels import reference
from qfid.kernels.cpu_build import load_cpu_ops
from qfid.kernels.cpu_layout import pack_int4_tiles, pack_int4_torch
from qfid.layouts.packing import unpack_awq_gemm


def prepare_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> dict:
    """Repack the AWQ tensors once, for whichever CPU kernel will run them. qfid's tiles
    hold fp16 scales; scales that fp16 cannot hold exactly (a bf16/fp32 compressed-tensors
    checkpoint) go to torch's kernel, which keeps fp32 scales."""
    q = unpack_awq_gemm(qweight, qzeros, scales, group_size)
    out_features = q.codes.shape[0]
    fp16_exact = torch.equal(q.scales.half().float(), q.scales)
    if fp16_exact and group_size % 4 == 0 and load_cpu_ops():
        return {"kind": "qfid", "tiles": pack_int4_tiles(q.codes, q.scales, q.zeros, group_size),
                "group_size": group_size, "out_features": out_features}
    packed, scale_and_offset = pack_int4_torch(q.codes, q.scales, q.zeros, group_size, torch.float32)
    return {"kind": "torch", "packed": packed, "group_size": group_size, "out_features": out_features,
            "scale_and_offset": {torch.float32: scale_and_offset}, "unpacked": q}


# torch's int4 CPU kernel (the fallback where qfid's kernels do not build, e.g. CPUs without
# AVX-512) is reasonable with 16-bit activations but not with fp32 ones: measured on an
# AVX2 Zen 3, 512 fp32 rows of a 1536x576 layer took ~2 s, against ~0.05-0.1 s to
# dequantize and run one dense fp32 GEMM (bf16 rows stay on torch's kernel, which beat the
# dense bf16 GEMM there, that CPU having no native bf16).


def _torch_int4(x: torch.Tensor, t: dict, bias: torch.Tensor | None) -> torch.Tensor:
    """torch's kernel wants its scales in the activation dtype; convert once per dtype."""
    table = t["scale_and_offset"]
    if x.dtype not in table:
        table[x.dtype] = table[torch.float32].to(x.dtype)
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, t["packed"], t["group_size"], table[x.dtype])
    y = y[:, : t["out_features"]]
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def int4_linear(x: torch.Tensor, tensors: dict, bias: torch.Tensor | None) -> torch.Tensor:
    if tensors["kind"] == "qfid":
        return torch.ops.qfid_cpu.int4_gemm(tensors["tiles"], x, bias, tensors["group_size"], tensors["out_features"])
    if x.dtype == torch.float32:
        weight = tensors["unpacked"].dequantize(torch.float32).to(x.dtype)   # the reference's arithmetic
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))
    return _torch_int4(x, tensors, bias)


class Int4Gemm:
    """One INT4 weight bound to qfid's op (`bind_int4`); its fields are what the op reads,
    which the captured decode step (layers/cpu_decode.py) passes to C++ itself."""

    def __init__(self, tensors: dict, bias: torch.Tensor | None):
        self.tiles, self.bias = tensors["tiles"], bias
        self.group_size, self.out_features = tensors["group_size"], tensors["out_features"]
        self.gemm = torch.ops.qfid_cpu.int4_gemm.default

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gemm(self.tiles, x, self.bias, self.group_size, self.out_features)

    def tensors(self) -> list[torch.Tensor]:
        return [self.tiles] + ([] if self.bias is None else [self.bias])


def bind_int4(tensors: dict, bias: torch.Tensor | None):
    """`int4_linear` for one prepared weight, calling qfid's op straight where it runs it."""
    from qfid.kernels.dispatch import BoundKernel

    if tensors["kind"] == "qfid":
        return Int4Gemm(tensors, bias)
    return BoundKernel(int4_linear, tensors, bias)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               input_scale: torch.Tensor | None, quantize_activations: bool) -> torch.Tensor:
    """Weight-only E4M3 straight from the checkpoint layout (no repack); activations are
    rounded through E4M3 first when the scheme quantizes them."""
    if not load_cpu_ops():
        return reference.fp8_linear(x, weight, weight_scale, bias, input_scale, quantize_activations)
    return Fp8Gemm(weight, weight_scale, bias, input_scale, quantize_activations)(x)


class Fp8Gemm:
    """One FP8 weight bound to qfid's ops (`bind_fp8`); its fields are what they read,
    which the captured decode step (layers/cpu_decode.py) passes to C++ itself."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 input_scale: torch.Tensor | None, quantize_activations: bool):
        self.weight, self.weight_scale, self.bias = weight.view(torch.uint8), weight_scale, bias
        self.input_scale, self.quantize_activations = input_scale, quantize_activations
        self.gemm, self.round = torch.ops.qfid_cpu.fp8_gemm.default, torch.ops.qfid_cpu.fp8_round_activations.default

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize_activations:   # = reference.rounded_activations, bit for bit
            x = self.round(x, self.input_scale)
        return self.gemm(self.weight, x, self.weight_scale, self.bias)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.weight, self.weight_scale, self.bias, self.input_scale) if t is not None]


def bind_fp8(weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
             input_scale: torch.Tensor | None, quantize_activations: bool):
    """`fp8_linear` for one weight, calling qfid's ops straight where they run."""
    from qfid.kernels.dispatch import BoundKernel

    if load_cpu_ops():
        return Fp8Gemm(weight, weight_scale, bias, input_scale, quantize_activations)
    return BoundKernel(fp8_linear, weight, weight_scale, bias, input_scale, quantize_activations)


PAGED_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
RUNTIME_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def paged_decode_supported(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether `paged_decode_attention` can run this model's decode attention (once
    kernels.dispatch has found the CPU ops running): a dtype it reads and a head_dim it was
    compiled for (the vector count is a template constant so accumulators stay in registers)."""
    return head_dim in PAGED_HEAD_DIMS and heads % kv_heads == 0 and dtype in RUNTIME_DTYPES


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence over its paged context: q [seqs, heads, d], caches
    [kv_heads, blocks, block_size, d] -> [seqs, heads, d]; K/V read once, straight from
    the blocks (kernels/cpu/paged_attention.cpp)."""
    return torch.ops.qfid_cpu.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)


def bf16_dense_supported(weight: torch.Tensor) -> bool:
    """Whether `bf16_linear` can run this dense weight: bf16 [N, K] with even K."""
    return weight.dtype == torch.bfloat16 and weight.dim() == 2 and weight.shape[1] % 2 == 0


def pack_bf16(weight: torch.Tensor) -> torch.Tensor:
    """The load-time reorder `bf16_linear` streams (kernels/cpu/bf16_gemm.cpp)."""
    from qfid.kernels.cpu_layout import pack_bf16_tiles

    return pack_bf16_tiles(weight)


def bf16_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """bf16 x [..., K] @ W^T (+ bias) with W packed by `pack_bf16`; bf16 out."""
    return torch.ops.qfid_cpu.bf16_gemm(packed, x, bias, out_features)


def elementwise_supported(dtype: torch.dtype, hidden: int, head_dim: int, intermediate: int | None) -> bool:
    """Whether the fused RMSNorm / rotary / SiLU-and-mul ops (kernels/cpu/elementwise.cpp)
    can run a model of these widths: they work in 16-lane vectors, so widths must be
    multiples of 16 (head_dim of 32: RoPE rotates two halves)."""
    widths_ok = hidden % 16 == 0 and head_dim % 32 == 0 and (intermediate is None or intermediate % 16 == 0)
    return widths_ok and dtype in RUNTIME_DTYPES


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write [T, kv_heads, d] keys and values into their cache slots."""
    torch.ops.qfid_cpu.store_kv_(k_cache, v_cache, k, v, slot_mapping)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                            starts: torch.Tensor, lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of a step's prefill chunks (rows back to back in q [T, heads, d],
    bf16) over their cached context and themselves, read from the blocks; chunk c starts
    at position starts[c] and has lens[c] rows (kernels/cpu/prefill_attention.cpp)."""
    return torch.ops.qfid_cpu.paged_prefill_attention(q, k_cache, v_cache, block_tables, starts, lens, scale)


def fake_quantize_supported(w: torch.Tensor, group_size: int, out: torch.Tensor) -> bool:
    """The fused fake quantizer keeps a group in registers: fp32 CPU weights, groups of a
    multiple of 16 up to 256, an fp32 or bf16 output, and the ops built."""
    return (w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 and w.is_contiguous()
            and group_size % 16 == 0 and group_size <= 256 and out.is_contiguous()
            and out.dtype in (torch.float32, torch.bfloat16) and load_cpu_ops())


def int4_fake_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | None, col_scale: torch.Tensor | None,
                       out: torch.Tensor) -> torch.Tensor:
    """out = Q(clamp(w * col_scale, +-clip)) / col_scale in out's dtype (kernels/cpu/int4_fake_quant.cpp)."""
    clip = None if clip is None else clip.float().contiguous()
    col_scale = None if col_scale is None else col_scale.float().contiguous()
    return torch.ops.qfid_cpu.int4_fake_quantize(w, group_size, clip, col_scale, out)
