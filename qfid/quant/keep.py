"""Sensitive layers kept in higher precision inside a quantized model (`QuantConfig.keep`).

Serving engines fuse some Linears into one matmul (vLLM: q/k/v into qkv_proj, gate/up into
gate_up_proj), and a fused matmul has one weight format, so a kept layer's fused partners
are kept with it: `fused_units` lists those units per block, the granularity at which the
sweep measures sensitivity and keeps layers.

Kept layers go through the scheme's block search like the others (AWQ folds its scales into
them, so the block computes the same function) and are stored differently afterwards:
FP8 per-channel weights with dynamic activations (a second compressed-tensors config group),
or the source's 16-bit dtype (not converted).
"""
from __future__ import annotations

from torch import nn

from qfid.config import QuantConfig
from qfid.errors import QfidError
from qfid.layouts.primitives import fp8_quantize
from qfid.models.linears import block_weight
from qfid.models.mappings import ArchSpec
from qfid.quant.codecs import LinearPlan

KEPT_FP8_PLAN = LinearPlan("fp8", "compressed-tensors", per_channel=True, static=False)


def fused_units(spec: ArchSpec) -> list[tuple[str, ...]]:
    """A dense block's Linears grouped as serving engines fuse them (block-relative names)."""
    if spec.moe:
        raise QfidError("keeping layers in higher precision is supported for dense models; this one is MoE")
    names = spec.runtime
    units = [tuple(names.qkv), (names.o,), tuple(names.gate_up), (names.down,)]
    return [u for u in units if u and all(u)]


def model_units(spec: ArchSpec, num_blocks: int) -> list[tuple[str, ...]]:
    """Every fused unit of the model, by full checkpoint name, block by block."""
    return [tuple(f"{spec.blocks}.{i}.{name}" for name in unit) for i in range(num_blocks) for unit in fused_units(spec)]


def plan_linears(shapes: dict[str, tuple[int, int]], base: LinearPlan, config: QuantConfig,
                 spec: ArchSpec, num_blocks: int) -> dict[str, LinearPlan]:
    """The storage plan of every block Linear: the scheme's, FP8 for kept layers, none (left
    dense) for layers kept in 16 bits. Unknown names and half-kept fused units fail here."""
    keep = set(config.keep)
    if not keep:
        return {name: base for name in shapes}
    unknown = sorted(keep - set(shapes))
    if unknown:
        raise QfidError(f"cannot keep {unknown[0]}: the model has no such quantizable Linear")
    for unit in model_units(spec, num_blocks):
        split = keep.intersection(unit)
        if split and len(split) < len(unit):
            raise QfidError(f"{', '.join(unit)} are fused by serving engines: keep all or none of them")
    plans = {}
    for name in shapes:
        if name not in keep:
            plans[name] = base
        elif config.keep_as == "fp8":
            plans[name] = KEPT_FP8_PLAN
    return plans


def store_kept(block: nn.Module, prefix: str, quantized: dict, config: QuantConfig) -> None:
    """Replace the scheme's result for kept layers of one block (block-relative names in
    `quantized`): FP8 of the block's weight as the search left it, or nothing (the writer
    then stores the weight dense)."""
    keep = set(config.keep)
    for rel in [r for r in quantized if f"{prefix}.{r}" in keep]:
        del quantized[rel]
        if config.keep_as == "fp8":
            quantized[rel] = fp8_quantize(block_weight(block, rel).get(), per_channel=True)
