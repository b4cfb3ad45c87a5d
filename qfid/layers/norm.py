"""RMSNorm as transformers' LlamaRMSNorm computes it, optionally as one fused CPU op."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """transformers' LlamaRMSNorm; `cpu_ops` runs it as one fused CPU op (kernels/cpu/elementwise.cpp,
    same rounding steps), and `add_norm` folds in the residual add before it."""

    def __init__(self, weight: torch.Tensor, eps: float, cpu_ops: bool = False):
        super().__init__()
        self.weight = weight
        self.eps = eps
        self.cpu_ops = cpu_ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_ops:
            return torch.ops.qfid_cpu.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x); the fused op updates `residual` in place."""
        if self.cpu_ops:
            return torch.ops.qfid_cpu.add_rms_norm_(x, residual, self.weight, self.eps), residual
        residual = residual + x
        return self(residual), residual
