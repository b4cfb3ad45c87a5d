"""Run a model one decoder block at a time on calibration tokens.

Block-wise calibration (AWQ, and any scheme that needs activations) never runs the whole
model at once: it captures what the first decoder block receives, then feeds each block its
predecessor's output. That keeps memory to one block's activations and lets a block's
Linear inputs be recorded with hooks while it runs.

Sequences are processed in batches (each may live in CPU memory while the block runs on a
GPU: offloaded activations); each batch keeps the keyword arguments the model built
for exactly those sequences (rotary embeddings, causal mask, position ids), so no tensor
ever has to be sliced by guessing which dimension is the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BlockBatch:
    """A batch of calibration sequences as a decoder block receives them."""

    hidden: torch.Tensor   # [batch, seq_len, hidden]
    kwargs: dict           # what the model passes every block for these sequences


class _StopForward(Exception):
    """Raised by the first block's hook: the rest of the model need not run."""


def capture_block_inputs(model: nn.Module, first_block: nn.Module, ids: torch.LongTensor,
                         batch_size: int, embed=None) -> list[BlockBatch]:
    """The first decoder block's inputs for `ids`, one BlockBatch per `batch_size` sequences
    (the usual hook-on-layer-0-and-raise trick: only embeddings and rotary run). With
    `embed` (ids -> hidden states), the model gets `inputs_embeds`: a model whose weights are
    on the meta device (a streamed one) then runs only its rotary and mask code."""
    batches: list[BlockBatch] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        batches.append(BlockBatch(hidden.detach(), dict(kwargs)))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            for chunk in ids.split(batch_size):
                inputs = {"input_ids": chunk} if embed is None else {"inputs_embeds": embed(chunk)}
                try:
                    model(**inputs, use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return batches


def run_block(block: nn.Module, batches: list[BlockBatch],
              record: dict[str, nn.Module]) -> tuple[list[BlockBatch], dict[str, torch.Tensor]]:
    """Run `block` on every batch, recording the input of each module in `record`.

    Returns the block's outputs (the next block's inputs) and each recorded input flattened
    to [tokens, width] in batch order. Modules fed the very same tensor (q, k and v read one
    normed hidden state) share one recorded tensor instead of holding copies.
    """
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in record}
    device = _device_of(block)
    handles = [module.register_forward_pre_hook(_recorder(seen[name]), with_kwargs=True)
               for name, module in record.items()]
    outputs = []
    try:
        with torch.inference_mode():
            for batch in batches:
                out = block(batch.hidden.to(device), **batch.kwargs)
                out = out[0] if isinstance(out, tuple) else out
                outputs.append(BlockBatch(out.to(batch.hidden.device), batch.kwargs))
    finally:
        for handle in handles:
            handle.remove()
    return outputs, _concat_shared(seen)


def _device_of(block: nn.Module) -> torch.device:
    """Where the block computes: batches kept elsewhere (offloaded activations) move there
    one at a time, and its outputs go back where their inputs were."""
    first = next(block.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _recorder(store: list[torch.Tensor]):
    def hook(module, args, kwargs):
        store.append(args[0] if args else kwargs["hidden_states"])
    return hook


def _concat_shared(seen: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One [tokens, width] tensor per recorded module; each name's parts are dropped once
    concatenated, so at most one concatenation beside the parts is ever alive."""
    by_identity: dict[tuple[int, ...], torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    for name in list(seen):
        parts = seen.pop(name)
        key = tuple(id(p) for p in parts)
        if key not in by_identity:
            by_identity[key] = torch.cat([p.reshape(-1, p.shape[-1]) for p in parts])
        inputs[name] = by_identity[key]
    return inputs


def sequence_kwargs(module: nn.Module, kwargs: dict) -> dict:
    """The subset of a block's keyword arguments `module.forward` accepts (everything when
    it takes **kwargs, as attention does). Empty means the module works token by token."""
    import inspect

    params = inspect.signature(module.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}
