"""Linear layers that read the same input, run as one matmul where their kind allows."""
from __future__ import annotations

import torch
from torch import nn


class ParallelLinears(nn.Module):
    """Linear layers reading the same input (q/k/v; gate/up), concatenated into one layer
    where their kind allows (plain `nn.Linear`s; `Int4Linear`s / `Fp8Linear`s of one format,
    see their `concatenated`): a CPU runs one matmul markedly faster than three small ones,
    and each output column is the same dot product. Otherwise each is called as is."""

    def __init__(self, linears: list[nn.Module]):
        super().__init__()
        self.sizes = [linear.out_features for linear in linears]
        self.fused = _concatenated(linears)
        self.parts = None if self.fused is not None else nn.ModuleList(linears)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.fused is not None:
            return self.fused(x).split(self.sizes, dim=-1)
        return tuple(linear(x) for linear in self.parts)


def _concatenated(linears: list[nn.Module]) -> nn.Module | None:
    kind = type(linears[0])
    if not all(type(linear) is kind for linear in linears):
        return None
    if hasattr(kind, "concatenated"):
        return kind.concatenated(linears)
    if kind is not nn.Linear:
        return None
    biases = [linear.bias for linear in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    weight = linears[0].weight
    fused = nn.Linear(weight.shape[1], sum(l.out_features for l in linears), bias=biases[0] is not None,
                      dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([linear.weight for linear in linears]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat(biases))
    return fused.requires_grad_(False)
