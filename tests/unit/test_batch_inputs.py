"""`prepare_inputs` builds positions and cache slots as Python ranges; here against the
per-token tensor formula it replaced (slot = table[p // block_size] * block_size +
p % block_size), on random mixed steps: decodes, first chunks, later chunks, block edges."""
from __future__ import annotations

import random

import torch

from qfid.engine.batch_inputs import prepare_inputs
from qfid.engine.scheduler import ScheduledBatch
from qfid.engine.sequence import Sequence
from qfid.layers.attention import AttentionBackend, CpuAttention


def random_batch(rng: random.Random, block_size: int) -> ScheduledBatch:
    batch = ScheduledBatch()
    free_blocks = rng.sample(range(5000), 12 * 90)
    for _ in range(rng.randint(1, 12)):
        length = rng.randint(1, 90)
        seq = Sequence([rng.randint(0, 99) for _ in range(length)], params=None)
        seq.block_table = [free_blocks.pop() for _ in range(-(-length // block_size))]
        decode = rng.random() < 0.5
        seq.num_computed_tokens = length - 1 if decode else rng.randint(0, length - 1)
        batch.add(seq, 1 if decode else rng.randint(1, length - seq.num_computed_tokens))
    return batch


def expected(inputs, block_size: int) -> tuple[list[int], list[int], list[int]]:
    """Token ids, positions and slots by the per-token formula, in the inputs' layout order."""
    tokens, positions, slots = [], [], []
    for seq, start, n in zip(inputs.seqs, inputs.starts, inputs.num_new):
        p = torch.arange(start, start + n)
        table = torch.tensor(seq.block_table)
        tokens += seq.token_ids[start:start + n]
        positions += p.tolist()
        slots += (table[p // block_size] * block_size + p % block_size).tolist()
    return tokens, positions, slots


def test_positions_and_slots_match_the_per_token_formula():
    rng = random.Random(0)
    for trial in range(200):
        block_size = rng.choice([1, 4, 16])
        backend = CpuAttention(torch.bfloat16) if trial % 2 else AttentionBackend()
        inputs = prepare_inputs(random_batch(rng, block_size), block_size, backend)
        tokens, positions, slots = expected(inputs, block_size)
        assert inputs.input_ids.tolist() == tokens
        assert inputs.positions.tolist() == positions and inputs.positions.dtype == torch.long
        assert inputs.attention.slot_mapping.tolist() == slots and inputs.attention.slot_mapping.dtype == torch.long
        ends = torch.tensor(inputs.num_new).cumsum(0) - 1
        assert inputs.last_rows == ends.tolist()
        assert all(n == 1 for n in inputs.num_new[:inputs.attention.num_decode_tokens])
