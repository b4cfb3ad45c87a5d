"""How each kind of quantized weight is stored: its tensors per checkpoint format, the
`quantization_config` entry that announces them, and the runtime module that reads them back.

One codec per weight kind (INT4 groups, FP8); the schemes that produce them (RTN, AWQ; FP8)
live in schemes.py and name their codec. The writer plans a checkpoint's files before any
weight is quantized, so a codec also gives the *specs* of what it will write, computed by
packing a weight on the meta device (the packers are the one source of every shape).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qfid.errors import QfidError
from qfid.quant.hf_quant_config import awq_config, ct_config, ct_fp8_group, ct_int4_group
from qfid.layouts.packing import pack_awq_gemm, pack_ct_int4
from qfid.layouts.primitives import FP8_DTYPE, Fp8Weight, Int4Weight
from qfid.utils.safetensors_stream import TensorSpec


@dataclass(frozen=True)
class LinearPlan:
    """How one Linear is stored: codec, format and the parameters that fix its tensor shapes."""

    codec: str                       # "int4" | "fp8"
    format: str                      # "autoawq" | "compressed-tensors"
    group_size: int | None = None    # INT4
    per_channel: bool = True         # FP8 weight scales
    static: bool = False             # FP8 activations: a calibrated input_scale


class Int4Codec:
    kind = "int4"
    weight_type = Int4Weight
    formats = ("autoawq", "compressed-tensors")

    def pack(self, weight: Int4Weight, fmt: str) -> dict[str, torch.Tensor]:
        if fmt == "autoawq":
            return dict(zip(("qweight", "qzeros", "scales"), pack_awq_gemm(weight)))
        return pack_ct_int4(weight)

    def placeholder(self, shape: tuple[int, int], plan: LinearPlan) -> Int4Weight:
        out_f, in_f = shape
        groups = (out_f, in_f // plan.group_size)
        return Int4Weight(torch.empty(shape, dtype=torch.uint8, device="meta"),
                          torch.empty(groups, device="meta"), torch.empty(groups, dtype=torch.uint8, device="meta"),
                          plan.group_size)

    def ct_group(self, plan: LinearPlan, targets: list[str] | None) -> dict:
        return ct_int4_group(plan.group_size, targets)

    def runtime_module(self, weight: Int4Weight, bias: torch.Tensor | None) -> nn.Module:
        from qfid.quant.linear import Int4Linear

        return Int4Linear.from_int4(weight, bias)


class Fp8Codec:
    kind = "fp8"
    weight_type = Fp8Weight
    formats = ("compressed-tensors",)

    def pack(self, weight: Fp8Weight, fmt: str) -> dict[str, torch.Tensor]:
        packed = {"weight": weight.weight, "weight_scale": weight.scale.float()}
        if weight.input_scale is not None:
            packed["input_scale"] = weight.input_scale.float().reshape(1)
        return packed

    def placeholder(self, shape: tuple[int, int], plan: LinearPlan) -> Fp8Weight:
        scale = torch.empty((shape[0], 1) if plan.per_channel else (1,), device="meta")
        return Fp8Weight(torch.empty(shape, dtype=FP8_DTYPE, device="meta"), scale,
                         torch.empty(1, device="meta") if plan.static else None)

    def ct_group(self, plan: LinearPlan, targets: list[str] | None) -> dict:
        return ct_fp8_group(plan.per_channel, plan.static, targets)

    def runtime_module(self, weight: Fp8Weight, bias: torch.Tensor | None) -> nn.Module:
        from qfid.quant.linear import Fp8Linear

        return Fp8Linear.from_fp8(weight, bias)


CODECS = {codec.kind: codec for codec in (Int4Codec(), Fp8Codec())}


def codec_of(weight: Int4Weight | Fp8Weight):
    for codec in CODECS.values():
        if isinstance(weight, codec.weight_type):
            return codec
    raise QfidError(f"no codec stores a {type(weight).__name__}")


def packed_tensors(name: str, weight: Int4Weight | Fp8Weight, fmt: str) -> dict[str, torch.Tensor]:
    """`{name}.{leaf}` -> tensor, as the checkpoint stores this layer."""
    return {f"{name}.{leaf}": t for leaf, t in codec_of(weight).pack(weight, fmt).items()}


def packed_specs(name: str, shape: tuple[int, int], plan: LinearPlan) -> list[TensorSpec]:
    """What `packed_tensors` will write for a layer of this shape, without its data."""
    codec = CODECS[plan.codec]
    tensors = packed_tensors(name, codec.placeholder(shape, plan), plan.format)
    return [TensorSpec.of(n, t) for n, t in tensors.items()]


def quantization_config(plans: dict[str, LinearPlan], not_converted: list[str]) -> dict:
    """config.json's `quantization_config` for a checkpoint whose Linears (by checkpoint
    name) follow `plans`. One scheme: AutoAWQ's entry, or one compressed-tensors group
    targeting every Linear. Several (sensitive layers kept in FP8 inside an INT4 model):
    compressed-tensors only, one group per scheme targeting its layers by name."""
    distinct = sorted(set(plans.values()), key=repr)
    if len(distinct) == 1 and distinct[0].format == "autoawq":
        return awq_config(distinct[0].group_size, not_converted)
    if any(p.format == "autoawq" for p in distinct):
        raise QfidError("the AutoAWQ format holds one INT4 scheme; keep layers in another scheme with "
                        "--format compressed-tensors")
    if len(distinct) == 1:
        return ct_config([CODECS[distinct[0].codec].ct_group(distinct[0], None)], not_converted)
    groups = [CODECS[p.codec].ct_group(p, sorted(n for n, q in plans.items() if q == p)) for p in distinct]
    return ct_config(groups, not_converted)
