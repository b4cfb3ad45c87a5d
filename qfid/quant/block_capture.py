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
    to [tokens, width] in batch order (see `_InputRecorder`).
    """
    device = _device_of(block)
    recorder = _InputRecorder(list(record), sum(b.hidden.shape[0] * b.hidden.shape[1] for b in batches))
    handles = [module.register_forward_pre_hook(recorder.hook(name), with_kwargs=True)
               for name, module in record.items()]
    outputs = []
    try:
        with torch.inference_mode():
            for batch in batches:
                out = block(batch.hidden.to(device), **batch.kwargs)
                out = out[0] if isinstance(out, tuple) else out
                outputs.append(BlockBatch(out.to(batch.hidden.device), batch.kwargs))
                recorder.end_batch()
    finally:
        for handle in handles:
            handle.remove()
    return outputs, recorder.inputs()


class _InputRecorder:
    """Recorded module inputs, copied batch by batch into one [tokens, width] tensor per
    module (allocated at the first batch), so a block's inputs never exist twice as parts
    and their concatenation (+0.5 GB at an 8B block's down projection). Modules fed the very
    same tensor (q, k and v read one normed hidden state) share one tensor instead of
    holding copies. A module whose input is not one tensor of the batch's every token (an
    expert Linear fed routed tokens, or one skipped) keeps its parts and concatenates them
    at the end."""

    def __init__(self, names: list[str], tokens: int):
        self.tokens = tokens
        self.pending: dict[str, list[torch.Tensor]] = {name: [] for name in names}   # this batch's parts
        self.filled: dict[str, tuple[torch.Tensor, int]] = {}   # name -> (buffer, rows written)
        self.loose: dict[str, list[torch.Tensor]] = {}          # name -> parts (the fallback)
        self.owner: dict[str, str] = {}                          # name -> the name whose buffer it shares
        self.batch_start: dict[str, int] = {}                    # rows each buffer held before this batch

    def hook(self, name: str):
        def record(module, args, kwargs):
            self.pending[name].append(args[0] if args else kwargs["hidden_states"])
        return record

    def end_batch(self) -> None:
        self.batch_start = {name: written for name, (_, written) in self.filled.items()}
        copied: dict[int, str] = {}   # id of a part copied this batch -> the name it went to
        for name, parts in self.pending.items():
            if name not in self.loose and len(parts) == 1 and self._fits(name, parts[0], copied):
                self._copy(name, parts[0], copied)
            else:
                self._loosen(name).extend(p.reshape(-1, p.shape[-1]) for p in parts)
            self.pending[name] = []

    def _fits(self, name: str, x: torch.Tensor, copied: dict[int, str]) -> bool:
        """x continues this name's buffer: the same sharing as before, room left."""
        owner = copied.get(id(x), name)
        if self.owner.setdefault(name, owner) != owner:
            return False
        if owner != name:
            return True   # its owner has just copied this very tensor
        rows = x.numel() // x.shape[-1]
        buffer, written = self.filled.get(owner, (None, 0))
        return (buffer is None or buffer.shape[1] == x.shape[-1]) and written + rows <= self.tokens

    def _copy(self, name: str, x: torch.Tensor, copied: dict[int, str]) -> None:
        if self.owner[name] != name:
            return   # its owner copied this very tensor already
        copied[id(x)] = name
        rows = x.reshape(-1, x.shape[-1])
        buffer, written = self.filled.get(name) or (rows.new_empty(self.tokens, rows.shape[1]), 0)
        buffer[written:written + rows.shape[0]].copy_(rows)
        self.filled[name] = (buffer, written + rows.shape[0])

    def _loosen(self, name: str) -> list[torch.Tensor]:
        """Switch `name` to collecting parts, starting from what its buffer held before this batch."""
        if name not in self.loose:
            owner = self.owner.get(name, name)
            buffer, _ = self.filled.get(owner, (None, 0))
            written = self.batch_start.get(owner, 0)
            self.loose[name] = [buffer[:written]] if buffer is not None and written else []
        return self.loose[name]

    def inputs(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.pending:
            if name in self.loose:
                parts = self.loose.pop(name)
                if parts:   # a module never called has no inputs (the caller says so)
                    out[name] = torch.cat(parts)
            else:
                buffer, written = self.filled[self.owner[name]]
                out[name] = buffer[:written] if written < buffer.shape[0] else buffer
        return out


def _device_of(block: nn.Module) -> torch.device:
    """Where the block computes: batches kept elsewhere (offloaded activations) move there
    one at a time, and its outputs go back where their inputs were."""
    first = next(block.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def sequence_kwargs(module: nn.Module, kwargs: dict) -> dict:
    """The subset of a block's keyword arguments `module.forward` accepts (everything when
    it takes **kwargs, as attention does). Empty means the module works token by token."""
    import inspect

    params = inspect.signature(module.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}
