"""CUDA graphs for decode steps: one graph per batch-size bucket, captured once at start-up,
replayed for every step whose sequences all decode one token.

A decode step of a small model, or of a large one at small batches, is dozens of short
kernels per layer; launching them from Python costs more than running them (vLLM and
nano-vllm capture decode for the same reason). A graph fixes shapes and addresses, so the
step's inputs live in static buffers sized for the largest bucket: a step of n sequences
copies its inputs into the first n rows and replays the smallest bucket b >= n. The b - n
padding rows decode a dummy token at position 0 with a context of one slot and store their
K/V into the padding slot, a slot of one cache block reserved for it (the block manager
never hands it out), so they touch no sequence's cache. Block tables are as wide as
`max_model_len` needs, so the Triton decode kernel's split count, fixed at capture, fits
every step. Prefill and mixed steps, steps asking for prompt logprobs, and batches above
the largest bucket run eagerly.

Captured only on CUDA with an attention backend that reads block tables (Triton), and not
under `EngineConfig.enforce_eager`.
"""
from __future__ import annotations

import torch

from qfid.layers.attention import AttentionMetadata

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def graph_buckets(max_num_seqs: int) -> list[int]:
    """The batch sizes to capture: the standard buckets up to `max_num_seqs`, and it."""
    buckets = [b for b in BUCKETS if b < max_num_seqs]
    return buckets + [max_num_seqs]


class DecodeGraphs:
    def __init__(self, model, kv_caches, max_num_seqs: int, max_blocks_per_seq: int, padding_slot: int):
        device = model.device
        self.model, self.kv_caches = model, kv_caches
        self.buckets = graph_buckets(max_num_seqs)
        largest = self.buckets[-1]
        self.padding_slot = padding_slot
        self.input_ids = torch.zeros(largest, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((largest,), padding_slot, dtype=torch.long, device=device)
        self.tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.long, device=device)
        self.lens = torch.ones(largest, dtype=torch.long, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    @property
    def largest(self) -> int:
        return self.buckets[-1]

    def _metadata(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slot_mapping[:size], num_decode_tokens=size,
                                 decode_tables=self.tables[:size], decode_lens=self.lens[:size])

    def _forward(self, size: int) -> torch.Tensor:
        return self.model(self.input_ids[:size], self.positions[:size], self._metadata(size), self.kv_caches)

    @torch.inference_mode()
    def capture(self) -> None:
        """Largest bucket first, all graphs sharing one memory pool (a smaller graph's
        buffers fit inside the largest's). Each bucket runs once eagerly first: lazy
        allocations, kernel compilation and INT4 repacking happen outside the capture."""
        pool = None
        stream = torch.cuda.Stream(self.model.device)
        stream.wait_stream(torch.cuda.current_stream(self.model.device))
        for size in reversed(self.buckets):
            with torch.cuda.stream(stream):
                self._forward(size)
            torch.cuda.current_stream(self.model.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(self.model.device)

    def bucket_for(self, rows: int) -> int | None:
        return next((b for b in self.buckets if b >= rows), None)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [rows, hidden] of a decode-only step, by replaying its bucket's graph."""
        rows = input_ids.shape[0]
        size = self.bucket_for(rows)
        width = meta.decode_tables.shape[1]
        self.input_ids[:rows].copy_(input_ids, non_blocking=True)
        self.positions[:rows].copy_(positions, non_blocking=True)
        self.slot_mapping[:rows].copy_(meta.slot_mapping, non_blocking=True)
        self.tables[:rows, :width].copy_(meta.decode_tables, non_blocking=True)
        self.lens[:rows].copy_(meta.decode_lens, non_blocking=True)
        if size > rows:                      # padding rows: one slot of context, K/V to the padding slot
            self.input_ids[rows:size].zero_()
            self.positions[rows:size].zero_()
            self.slot_mapping[rows:size].fill_(self.padding_slot)
            self.tables[rows:size].zero_()
            self.lens[rows:size].fill_(1)
        self.graphs[size].replay()
        return self.outputs[size][:rows]
