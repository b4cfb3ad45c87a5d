"""Dense bf16 Linear layers of the runtime model, reordered once for qfid's CPU kernel.

Why: on a CPU without AMX, torch's bf16 `linear` (oneDNN) reorders the plain [N, K] weight
on every call, so a decode step with a few rows reads the weights at a fraction of memory
speed (bench/kernels.py: 3-4x slower than the packed kernel at one row, ~1.4x at 16-64
rows, equal at prefill sizes). `PackedBf16Linear` keeps only the packed copy, so it costs
no extra memory except for a head tied to the embedding. Applied by `pack_dense_linears`
where the CPU kernels run (not under QFID_KERNEL=reference, which keeps torch's path as
the comparison).
"""
from __future__ import annotations

import torch
from torch import nn


class PackedBf16Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        from qfid.kernels.cpu import pack_bf16

        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", pack_bf16(linear.weight.data), persistent=False)
        bias = None if linear.bias is None else linear.bias.data.float()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from qfid.kernels.cpu import bf16_linear

        return bf16_linear(x, self.packed, self.bias, self.out_features)


def pack_dense_linears(model: nn.Module) -> int:
    """Replace every bf16 `nn.Linear` under `model` the CPU kernel can run by a
    `PackedBf16Linear`; returns how many were replaced."""
    from qfid.kernels.dispatch import packed_dense

    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and packed_dense(module.weight)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PackedBf16Linear(linear))
    return len(targets)
