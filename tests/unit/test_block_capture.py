"""run_block's recorder: each recorded module's inputs over all batches, in batch order, as
plain concatenation would give them; modules fed the same tensor share one; a module fed
partial or repeated inputs (routed tokens) falls back to concatenating its parts."""
from __future__ import annotations

import torch
from torch import nn

from qfid.quant.block_capture import BlockBatch, run_block


class _Toy(nn.Module):
    """q and k read one tensor; `expert` sees one token per sequence, twice per batch (a
    routed Linear); `unused` is never called."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.q, self.k, self.down, self.expert, self.unused = (nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                                               nn.Linear(8, 8), nn.Linear(8, 8))
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen)

    def forward(self, hidden):
        h = hidden * 2
        a = self.q(h) + self.k(h)
        e = self.expert(hidden[:, :1]) + self.expert(hidden[:, 1:2])
        return self.down(torch.tanh(a)) + e


def _plain_record(block: nn.Module, batches: list[BlockBatch], names: list[str]) -> dict[str, torch.Tensor]:
    parts = {name: [] for name in names}
    hooks = [block.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: parts[n].append(args[0]))
             for n in names]
    with torch.inference_mode():
        for b in batches:
            block(b.hidden)
    for h in hooks:
        h.remove()
    return {n: torch.cat([p.reshape(-1, p.shape[-1]) for p in ps]) for n, ps in parts.items() if ps}


def test_recorded_inputs_equal_the_concatenated_parts_and_share_one_tensor():
    block = _Toy()
    gen = torch.Generator().manual_seed(1)
    batches = [BlockBatch(torch.randn(b, 5, 8, generator=gen), {}) for b in (2, 3, 1)]
    names = ["q", "k", "down", "expert", "unused"]
    outputs, inputs = run_block(block, batches, {n: block.get_submodule(n) for n in names})
    expected = _plain_record(block, batches, names)
    assert set(inputs) == set(expected) == {"q", "k", "down", "expert"}
    for name, tensor in expected.items():
        assert torch.equal(inputs[name], tensor), name
    assert inputs["q"].data_ptr() == inputs["k"].data_ptr()            # one tensor for both
    assert inputs["q"].shape == (30, 8) and inputs["expert"].shape == (12, 8)
    with torch.inference_mode():
        assert all(torch.equal(o.hidden, block(b.hidden)) for o, b in zip(outputs, batches))
