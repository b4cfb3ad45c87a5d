"""One handler per quantization scheme, in one registry the CLI, the pipeline and the writer
consult (gpt-fast's shape): how a scheme quantizes one decoder block, which calibration it
needs, which weight codec (and so which formats and runtime module) stores its result.

A new scheme is one class here plus its codec in codecs.py; nothing else branches on the
scheme's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qfid.config import QuantConfig
from qfid.models.mappings import ArchSpec
from qfid.quant.block_capture import BlockBatch, run_block
from qfid.quant.block_layout import BlockLayout
from qfid.quant.codecs import LinearPlan
from qfid.utils.memory import reused_heap
from qfid.layouts.primitives import FP8_E4M3_MAX, Fp8Weight, Int4Weight, fp8_quantize, int4_quantize


@dataclass
class BlockJob:
    """One decoder block to quantize, with what every scheme may need."""

    block: nn.Module                       # fp32, on the compute device; a scheme may fold scales into it
    prefix: str                            # checkpoint prefix, e.g. "model.layers.3"
    layout: BlockLayout
    spec: ArchSpec
    config: QuantConfig
    group_size: int | None
    calib: list[BlockBatch] | None         # fp calibration activations into the block (None: scheme needs none)
    score_dtype: torch.dtype = torch.float32
    saved_search: dict[str, torch.Tensor] | None = None   # AWQ: a saved search to replay (full names)


@dataclass
class BlockOutcome:
    quantized: dict[str, Int4Weight | Fp8Weight]            # block-relative names
    calib_out: list[BlockBatch] | None = None               # fp activations into the next block
    artifact: dict[str, torch.Tensor] = field(default_factory=dict)   # full names
    fallbacks: dict[str, str] = field(default_factory=dict)           # full name -> why
    timings: dict[str, float] = field(default_factory=dict)


class RtnInt4:
    name = "rtn-int4"
    codec = "int4"

    def needs_calibration(self, config: QuantConfig) -> bool:
        return False

    def plan(self, config: QuantConfig, group_size: int | None) -> LinearPlan:
        return LinearPlan("int4", config.format, group_size=group_size)

    def quantize_block(self, job: BlockJob) -> BlockOutcome:
        return BlockOutcome({name: int4_quantize(ref.get(), job.group_size) for name, ref in job.layout.linears.items()})


class AwqInt4(RtnInt4):
    name = "awq-int4"

    def needs_calibration(self, config: QuantConfig) -> bool:
        return config.awq_search_from is None   # a replayed search needs no activations

    def quantize_block(self, job: BlockJob) -> BlockOutcome:
        from qfid.quant.awq import DEFAULT_SEARCH_TOKENS, AwqResult, awq_block, replay_awq_block

        if job.saved_search is not None:
            quantized, used = replay_awq_block(job.block, job.prefix, job.layout, job.saved_search, job.group_size)
            return BlockOutcome(quantized, artifact=dict(used))
        result = AwqResult({}, {}, {})
        result.timings = _zeroed()
        with reused_heap():   # the searches make the same large temporaries at every grid point
            calib_out = awq_block(job.block, job.prefix, job.layout, job.spec, job.calib, job.group_size,
                                  job.config.awq_grid, job.config.awq_clip, DEFAULT_SEARCH_TOKENS, job.score_dtype,
                                  result)
        cut = len(job.prefix) + 1
        return BlockOutcome({name[cut:]: w for name, w in result.quantized.items()}, calib_out, result.artifact,
                            result.fallbacks, dict(result.timings))


class Fp8(RtnInt4):
    name = "fp8"
    codec = "fp8"

    def needs_calibration(self, config: QuantConfig) -> bool:
        return config.fp8_activations == "static"

    def plan(self, config: QuantConfig, group_size: int | None) -> LinearPlan:
        return LinearPlan("fp8", config.format, per_channel=config.fp8_weights == "channel",
                          static=config.fp8_activations == "static")

    def quantize_block(self, job: BlockJob) -> BlockOutcome:
        per_channel = job.config.fp8_weights == "channel"
        quantized = {name: fp8_quantize(ref.get(), per_channel) for name, ref in job.layout.linears.items()}
        if job.calib is None:
            return BlockOutcome(quantized)
        amax, calib_out = observe_input_amax(job.block, job.layout, job.calib)
        for name, value in amax.items():
            quantized[name].input_scale = (value / FP8_E4M3_MAX).clamp(min=1e-12).reshape(1)
        return BlockOutcome(quantized, calib_out)


def observe_input_amax(block: nn.Module, layout: BlockLayout,
                       batches: list[BlockBatch]) -> tuple[dict[str, torch.Tensor], list[BlockBatch]]:
    """Max |input| of each quantized Linear over the calibration batches (fp32, on the
    block's device), and the block's outputs."""
    amax = {name: torch.zeros((), device=batches[0].hidden.device) for name in layout.linears}
    hooks = []
    for name, ref in layout.linears.items():
        def record(_module, args, name=name):
            amax[name] = torch.maximum(amax[name], args[0].detach().abs().amax().float())
        hooks.append(ref.module.register_forward_pre_hook(record))
    try:
        outputs, _ = run_block(block, batches, {})
    finally:
        for hook in hooks:
            hook.remove()
    return amax, outputs


def _zeroed() -> dict[str, float]:
    from collections import defaultdict

    return defaultdict(float)


SCHEMES = {handler.name: handler for handler in (AwqInt4(), RtnInt4(), Fp8())}
