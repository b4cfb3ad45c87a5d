"""Owns the KV cache and runs one scheduled batch through the model: flat inputs in,
one sampled token per finished chunk out (the verified tokens where a chunk carried
speculative drafts: speculative.py), plus the logprobs requests asked for.

The LM head is the most expensive matmul per row (vocab-wide), so it runs only on the rows
that need logits: each sequence's last token when its chunk completes it, and prompt
positions of requests that want prompt logprobs. Prompt rows go through the head
`PROMPT_LOGITS_ROWS` at a time: a scoring request over a long prompt with a 128k vocabulary
would otherwise build one [tokens, vocab] fp32 tensor (and its log_softmax) of gigabytes.

One runner for every device: the model's device and attention backend decide where the cache
lives and how inputs are laid out; inputs are staged on the host and copied once per step;
the only host synchronisation in a step is reading the sampled token ids (and logprobs,
when asked for). On CUDA, decode-only steps replay captured CUDA graphs (cuda_graphs.py)
unless `use_graphs` is off.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qfid.engine.batch_inputs import BatchInputs, prepare_inputs, stage
from qfid.engine.cuda_graphs import DecodeGraphs
from qfid.engine.kv_cache import allocate_kv_cache
from qfid.engine.sampling import generator_of, logprob_entries, sample, sampling_probs
from qfid.engine.scheduler import ScheduledBatch
from qfid.engine.speculative import rejection_sample, verify_greedy
from qfid.kernels import dispatch

PROMPT_LOGITS_ROWS = 256


@dataclass
class StepOutput:
    """Per batch sequence (batch order): the sampled token (None mid-prefill; a list of tokens
    where drafts were verified), its logprob entry (a list of entries with a list of tokens)
    when asked for, and new prompt-logprob entries keyed by prompt position."""

    token_ids: list[int | list[int] | None]
    logprobs: list[dict[int, float] | list[dict[int, float]] | None]
    prompt_logprobs: list[dict[int, dict[int, float]]]

    @classmethod
    def empty(cls, size: int) -> "StepOutput":
        return cls([None] * size, [None] * size, [{} for _ in range(size)])


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, max_num_seqs: int = 256,
                 max_model_len: int = 2048, use_graphs: bool = True):
        self.model = model
        self.device = model.device
        self.attention = model.attention_backend
        self.block_size = block_size
        self.attention.plan(max_blocks=-(-max_model_len // block_size))
        graphs = use_graphs and self.device.type == "cuda" and self.attention.decode_tables
        # with graphs, one block more than the block manager hands out: the padding rows' slot
        self.kv_caches = allocate_kv_cache(model, num_blocks + 1 if graphs else num_blocks, block_size)
        self.graphs = None
        if graphs:
            self.graphs = DecodeGraphs(model, self.kv_caches, max_num_seqs, -(-max_model_len // block_size),
                                       padding_slot=num_blocks * block_size)
            self.graphs.capture()

    @property
    def kv_cache_bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv_caches)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepOutput:
        inputs, staged, sampling, sample_rows, prompt_rows, prompt_row_ids = self.stage(batch)
        hidden = self.forward(staged, replay=not prompt_rows)
        output = StepOutput.empty(len(batch))
        if sampling:
            logits = self.model.compute_logits(hidden.index_select(0, sample_rows)).float()
            self._sample_all(output, inputs, sampling, logits)
        for first in range(0, len(prompt_rows), PROMPT_LOGITS_ROWS):
            chunk = prompt_rows[first:first + PROMPT_LOGITS_ROWS]
            rows = prompt_row_ids[first:first + PROMPT_LOGITS_ROWS]
            logits = self.model.compute_logits(hidden.index_select(0, rows)).float()
            self._add_prompt_logprobs(output, inputs, chunk, logits)
        return output

    def forward(self, staged: BatchInputs, replay: bool = True) -> torch.Tensor:
        """Final hidden states of a staged step: a graph replay when the step only decodes and
        a graph fits it (and `replay`), else the eager forward."""
        meta = staged.attention
        rows = staged.input_ids.shape[0]
        if replay and self.graphs is not None and meta.num_decode_tokens == rows and rows <= self.graphs.largest:
            return self.graphs.run(staged.input_ids, staged.positions, meta)
        return self.model(staged.input_ids, staged.positions, meta, self.kv_caches)

    def stage(self, batch: ScheduledBatch):
        """Everything a step builds on the host, copied to the device once: the inputs (host
        and device copies), the laid-out indices that sample and the flat rows they read,
        the prompt rows to score and their flat rows."""
        inputs = prepare_inputs(batch, self.block_size, self.attention)
        sampling = [i for i, seq in enumerate(inputs.seqs) if inputs.starts[i] + inputs.num_new[i] == seq.num_tokens]
        prompt_rows = _prompt_logprob_rows(inputs)
        sample_rows = torch.tensor([row for i in sampling for row in _sample_rows(inputs, i)], dtype=torch.long)
        prompt_row_ids = torch.tensor([row for _, _, row in prompt_rows], dtype=torch.long)
        return (inputs, inputs.to(self.device), sampling, stage(sample_rows, self.device), prompt_rows,
                stage(prompt_row_ids, self.device))

    def _sample_all(self, output: StepOutput, inputs: BatchInputs, sampling: list[int], logits: torch.Tensor) -> None:
        """Plain rows through the batched sampler; each drafting sequence's 1 + k rows
        through verification (greedy ones read their argmaxes back in one transfer).
        `logits` holds every sampling sequence's rows in order."""
        plain, plain_rows, drafting, first = [], [], [], 0
        for i in sampling:
            drafts = inputs.seqs[i].num_draft_tokens
            if drafts:
                drafting.append((i, first, drafts + 1))
            else:
                plain.append(i)
                plain_rows.append(first)
            first += drafts + 1
        if drafting:
            greedy = any(inputs.seqs[i].params.greedy for i, _, _ in drafting)
            argmax = dispatch.argmax(logits).tolist() if greedy else None
            for i, start, rows in drafting:
                self._verify(output, inputs, i, logits[start:start + rows], argmax and argmax[start:start + rows])
        if plain:
            rows = plain_rows if len(plain_rows) < logits.shape[0] else slice(None)
            self._sample(output, inputs, plain, logits[rows])

    @staticmethod
    def _verify(output: StepOutput, inputs: BatchInputs, i: int, logits: torch.Tensor, argmax: list[int] | None) -> None:
        seq = inputs.seqs[i]
        drafts = seq.token_ids[-seq.num_draft_tokens:]
        if seq.params.greedy:
            emitted = verify_greedy(argmax, drafts)
        else:
            emitted = rejection_sample(sampling_probs(logits, seq.params), drafts, None, generator_of(seq, logits.device))
        output.token_ids[inputs.order[i]] = emitted
        if seq.params.logprobs is not None:
            logprobs = torch.log_softmax(logits[:len(emitted)], dim=-1)
            output.logprobs[inputs.order[i]] = logprob_entries(logprobs, emitted, [seq.params.logprobs] * len(emitted))

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


def _sample_rows(inputs: BatchInputs, i: int) -> range:
    """Flat rows whose logits sample for laid-out sequence i: its last row, and the rows of
    its drafts' positions before it when it carries drafts."""
    last = inputs.last_rows[i]
    return range(last - inputs.seqs[i].num_draft_tokens, last + 1)


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

