"""AWQ INT4 (Lin et al., MLSys 2024), block by block, AutoAWQ-compatible.

`awq_quantize` captures the first decoder block's inputs, then for each block: records what it
sees, searches a scale per (smooth -> balance) mapping and folds it, searches per-group clips
and quantizes (see awq_block.py and awq_search.py for the steps). Only one block's
activations are alive at a time. The block's fp outputs become the next block's inputs, as in
AutoAWQ (scaling does not change the function, so these equal the fp model's activations).

The search result (scales, clips) is an artifact of named tensors; `apply_awq_artifact`
replays it on a fresh copy of the model and gives bit-identical Int4Weights, so a saved
search can be audited or reused without calibration data.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from qfid.errors import QfidError
from qfid.models.linears import decoder_blocks
from qfid.models.mappings import ArchSpec
from qfid.quant.awq_block import (
    fold_block_scales,
    gather_activations,
    quantize_block_linears,
    clip_grams,
    search_block_clips,
    scoring_dtype,
    search_block_scales,
)
from qfid.quant.block_capture import BlockBatch, capture_block_inputs
from qfid.quant.block_layout import BlockLayout, describe_block
from qfid.layouts.primitives import Int4Weight
from qfid.utils.memory import release_freed_memory

# Tokens each scale candidate is scored on: token-wise modules get every k-th token of all
# sequences, attention gets whole sequences (batches of search_tokens // seq_len). Scoring
# all 16x512 tokens would cost ~45 TFLOP on the default model, several minutes on 2 cores;
# a quarter of that keeps AWQ under the 130 s target. x_mean and the clip search still use
# every token.
DEFAULT_SEARCH_TOKENS = 2048
# An expert routed fewer calibration tokens than this has no statistics worth searching on:
# it keeps s = 1 for its own (w3 -> w2) mapping and no clips, i.e. plain RTN, with a warning.
MIN_EXPERT_TOKENS = 16

Progress = Callable[[str, int, int], None]


@dataclass
class AwqResult:
    quantized: dict[str, Int4Weight]                  # full checkpoint name (no ".weight")
    artifact: dict[str, torch.Tensor]                 # "<smooth>.awq_scale", "<linear>.awq_clip"
    timings: dict[str, float] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)   # full name -> why it got plain RTN


def scale_key(smooth: str) -> str:
    return f"{smooth}.awq_scale"


def clip_key(linear: str) -> str:
    return f"{linear}.awq_clip"


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    yield
    timings[stage] += time.perf_counter() - t0


def awq_quantize(model: nn.Module, spec: ArchSpec, calib_ids: torch.LongTensor, group_size: int,
                 grid: int = 20, clip: bool = True, progress: Progress | None = None,
                 search_tokens: int = DEFAULT_SEARCH_TOKENS, score_dtype: torch.dtype | None = None) -> AwqResult:
    """Quantize every mapped Linear with AWQ. Afterwards the model holds the scaled (folded)
    fp weights, so the tensors that stay in full precision (norms, router) can be saved.
    `score_dtype` is what scale candidates are compared in (default: `scoring_dtype()`)."""
    blocks = decoder_blocks(model, spec)
    score_dtype = score_dtype or scoring_dtype()
    timings: dict[str, float] = defaultdict(float)
    result = AwqResult({}, {}, timings)
    batch_size = max(1, min(len(calib_ids), search_tokens // calib_ids.shape[1]))
    with _timed(timings, "capture"):
        batches = capture_block_inputs(model, blocks[0], calib_ids, batch_size)
    for i, block in enumerate(blocks):
        batches = awq_block(block, f"{spec.blocks}.{i}", describe_block(block, spec), spec, batches, group_size,
                            grid, clip, search_tokens, score_dtype, result)
        if progress is not None:
            progress("awq blocks", i + 1, len(blocks))
    timings["total"] = sum(timings.values())
    return result


def awq_block(block: nn.Module, prefix: str, layout: BlockLayout, spec: ArchSpec, batches: list[BlockBatch],
              group_size: int, grid: int, clip: bool, search_tokens: int, score_dtype: torch.dtype,
              result: AwqResult) -> list[BlockBatch]:
    """AWQ on one block (folds its scales into `block`); adds to `result` and returns the
    block's fp outputs, the next block's inputs."""
    refs, mappings, timings = layout.linears, layout.mappings, result.timings
    with _timed(timings, "forward"):
        acts, next_batches = gather_activations(block, refs, mappings, batches, search_tokens)
    starved = _starved_experts(refs, acts.inputs)
    release_freed_memory(full_collect=False)   # the forward's temporaries: free pages, not the scoring loop's to reuse
    with _timed(timings, "scale_search"):
        scales = search_block_scales(block, refs, mappings, acts, group_size, grid, score_dtype, MIN_EXPERT_TOKENS)
    release_freed_memory(full_collect=False)
    fold_block_scales(block, mappings, scales)
    clips = {}
    if clip:
        with _timed(timings, "clip_search"):
            grams = clip_grams(acts, refs, mappings, scales, spec, group_size, MIN_EXPERT_TOKENS)
            clips = search_block_clips(refs, grams, group_size)
    with _timed(timings, "quantize"):
        quantized = quantize_block_linears(refs, clips, group_size)
    result.fallbacks.update({f"{prefix}.{name}": why for name, why in starved.items()})
    result.quantized.update({f"{prefix}.{name}": q for name, q in quantized.items()})
    result.artifact.update({scale_key(f"{prefix}.{name}"): s.clone() for name, s in scales.items()})
    result.artifact.update({clip_key(f"{prefix}.{name}"): c.clone() for name, c in clips.items()})
    return next_batches


def _starved_experts(refs: dict, inputs: dict[str, torch.Tensor]) -> dict[str, str]:
    """Expert Linears that saw fewer than MIN_EXPERT_TOKENS calibration tokens, with why."""
    return {name: f"expert routed {inputs[name].shape[0]} calibration tokens (< {MIN_EXPERT_TOKENS}): plain RTN"
            for name, ref in refs.items()
            if _is_expert(name, ref) and inputs[name].shape[0] < MIN_EXPERT_TOKENS}


def _is_expert(name: str, ref) -> bool:
    return ref.expert is not None or ".experts." in name


def apply_awq_artifact(model: nn.Module, spec: ArchSpec, artifact: dict[str, torch.Tensor],
                       group_size: int) -> dict[str, Int4Weight]:
    """Replay a saved search on a fresh copy of the whole model (`replay_awq_block` per
    block). Fails loudly when the artifact and the model do not match."""
    quantized: dict[str, Int4Weight] = {}
    used: set[str] = set()
    for i, block in enumerate(decoder_blocks(model, spec)):
        prefix = f"{spec.blocks}.{i}"
        block_quantized, entries = replay_awq_block(block, prefix, describe_block(block, spec), artifact, group_size)
        quantized.update({f"{prefix}.{name}": q for name, q in block_quantized.items()})
        used.update(entries)
    check_artifact_used(artifact, used)
    return quantized


def replay_awq_block(block: nn.Module, prefix: str, layout: BlockLayout, artifact: dict[str, torch.Tensor],
                     group_size: int) -> tuple[dict[str, Int4Weight], dict[str, torch.Tensor]]:
    """AWQ on one block from a saved search instead of a new one: fold the artifact's scales
    into `block` and quantize with its clips, the steps `awq_block` takes after its searches,
    so the weights are bit for bit the searched run's. Returns the block's Int4Weights
    (block-relative names) and the artifact entries it used (full names)."""
    scales = {m.smooth: _take(artifact, scale_key(f"{prefix}.{m.smooth}")) for m in layout.mappings}
    fold_block_scales(block, layout.mappings, scales)
    used = {scale_key(f"{prefix}.{smooth}"): s for smooth, s in scales.items()}
    clips = {}
    for name, ref in layout.linears.items():
        clip = artifact.get(clip_key(f"{prefix}.{name}"))
        if clip is None:
            continue
        rows, columns = ref.get().shape
        if clip.numel() != rows * (columns // group_size):
            raise QfidError(f"the saved AWQ search clipped {prefix}.{name} in groups of "
                            f"{columns * rows // max(clip.numel(), 1)}, not {group_size}: use its group size")
        clips[name] = used[clip_key(f"{prefix}.{name}")] = clip
    return quantize_block_linears(layout.linears, clips, group_size), used


def check_artifact_used(artifact: dict[str, torch.Tensor], used) -> None:
    """A saved search with entries no block took was made on another model."""
    extra = [key for key in artifact if key not in used]
    if extra:
        raise QfidError(f"AWQ artifact has {len(extra)} entries this model lacks, e.g. {extra[0]}")


def _take(artifact: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in artifact:
        raise QfidError(f"AWQ artifact has no {key}: it was searched on a different model or architecture")
    return artifact[key]
