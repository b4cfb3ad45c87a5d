"""Owns the KV cache and runs one scheduled batch through the model: flat inputs in,
one sampled token per finished chunk out, plus the logprobs requests asked for.

The LM head is the most expensive matmul per row (vocab-wide), so it runs only on the rows
that need logits: each sequence's last token when its chunk completes it, and prompt
positions of requests that want prompt logprobs. Prompt rows go through the head
`PROMPT_LOGITS_ROWS` at a time: a scoring request over a long prompt with a 128k vocabulary
would otherwise build one [tokens, vocab] fp32 tensor (and its log_softmax) of gigabytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qfid.engine.batch_inputs import BatchInputs, prepare_inputs
from qfid.engine.sampling import logprob_entries, sample
from qfid.engine.scheduler import ScheduledBatch

PROMPT_LOGITS_ROWS = 256


@dataclass
class StepOutput:
    """Per batch sequence (batch order): the sampled token (None mid-prefill), its logprob
    entry when asked for, and new prompt-logprob entries keyed by prompt position."""

    token_ids: list[int | None]
    logprobs: list[dict[int, float] | None]
    prompt_logprobs: list[dict[int, dict[int, float]]]

    @classmethod
    def empty(cls, size: int) -> "StepOutput":
        return cls([None] * size, [None] * size, [{} for _ in range(size)])


def kv_block_bytes(model, block_size: int) -> int:
    layers, kv_heads, dim = model.kv_shape
    return 2 * layers * kv_heads * dim * block_size * torch.empty((), dtype=model.dtype).element_size()


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros whose pages the OS maps on first touch (numpy allocates zeros with calloc),
    so a large KV cache costs no start-up time and only the memory actually used. Zeros,
    not garbage: padded attention positions read never-written slots, and 0 * NaN is NaN."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(math.prod(shape) * itemsize, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).view(shape)


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int):
        self.model = model
        self.block_size = block_size
        layers, kv_heads, dim = model.kv_shape
        shape = (kv_heads, num_blocks, block_size, dim)
        self.kv_caches = [(lazy_zeros(shape, model.dtype), lazy_zeros(shape, model.dtype)) for _ in range(layers)]
        self.decode_kernel = _decode_kernel_available(model)
        self.prefill_kernel = self.decode_kernel and model.dtype == torch.bfloat16

    @property
    def kv_cache_bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv_caches)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepOutput:
        inputs = prepare_inputs(batch, self.block_size, self.decode_kernel, self.prefill_kernel)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.attention, self.kv_caches)
        sampling = [i for i, seq in enumerate(inputs.seqs) if inputs.starts[i] + inputs.num_new[i] == seq.num_tokens]
        output = StepOutput.empty(len(batch))
        if sampling:
            logits = self.model.compute_logits(hidden[[inputs.last_rows[i] for i in sampling]]).float()
            self._sample(output, inputs, sampling, logits)
        prompt_rows = _prompt_logprob_rows(inputs)
        for first in range(0, len(prompt_rows), PROMPT_LOGITS_ROWS):
            chunk = prompt_rows[first:first + PROMPT_LOGITS_ROWS]
            logits = self.model.compute_logits(hidden[[row for _, _, row in chunk]]).float()
            self._add_prompt_logprobs(output, inputs, chunk, logits)
        return output

    @staticmethod
    def _sample(output: StepOutput, inputs: BatchInputs, sampling: list[int], logits: torch.Tensor) -> None:
        seqs = [inputs.seqs[i] for i in sampling]
        tokens = sample(logits, seqs)
        for i, token in zip(sampling, tokens):
            output.token_ids[inputs.order[i]] = token
        wanted = [j for j, seq in enumerate(seqs) if seq.params.logprobs is not None]
        if wanted:
            logprobs = torch.log_softmax(logits[wanted], dim=-1)
            entries = logprob_entries(logprobs, [tokens[j] for j in wanted], [seqs[j].params.logprobs for j in wanted])
            for j, entry in zip(wanted, entries):
                output.logprobs[inputs.order[sampling[j]]] = entry

    @staticmethod
    def _add_prompt_logprobs(output, inputs: BatchInputs, prompt_rows, logits) -> None:
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = [inputs.seqs[i].token_ids[position] for i, position, _ in prompt_rows]
        entries = logprob_entries(logprobs, targets, [inputs.seqs[i].params.prompt_logprobs for i, _, _ in prompt_rows])
        for (i, position, _), entry in zip(prompt_rows, entries):
            output.prompt_logprobs[inputs.order[i]][position] = entry


def _decode_kernel_available(model) -> bool:
    from qfid.kernels.cpu import paged_decode_supported

    _, kv_heads, dim = model.kv_shape
    return paged_decode_supported(torch.device("cpu"), model.dtype, model.config.num_attention_heads, kv_heads, dim)


def _prompt_logprob_rows(inputs: BatchInputs) -> list[tuple[int, int, int]]:
    """(laid-out index, prompt position predicted, flat row) for every prompt token this
    chunk can score: the logits at position p score token p + 1. Positions a sequence
    already scored (before a preemption) or before its `prompt_logprobs_start` are skipped."""
    rows = []
    first_row = 0
    for i, (seq, start, n) in enumerate(zip(inputs.seqs, inputs.starts, inputs.num_new)):
        if seq.params.prompt_logprobs is not None:
            first_target = max(start + 1, len(seq.prompt_logprobs), seq.params.prompt_logprobs_start)
            for target in range(first_target, min(start + n, seq.num_prompt_tokens - 1) + 1):
                rows.append((i, target, first_row + target - 1 - start))
        first_row += n
    return rows

