"""The runtime model's Linear layers, bound to their kernels once at build time.

Quantized layers (`Int4Linear`, `Fp8Linear`: anything with `bind_kernel()`) become a
`BoundLinear` calling the kernel `kernels.dispatch` chose for them, with the weight
repacked, so a decode step pays no per-call selection (at batch 1 on the default model that
selection was ~15 us of Python per matmul, a fifth of the step).

Dense bf16 layers are reordered once for qfid's CPU kernel. Why: on a CPU without AMX,
torch's bf16 `linear` (oneDNN) reorders the plain [N, K] weight on every call, so a decode
step with a few rows reads the weights at a fraction of memory speed (bench/kernels.py:
3-4x slower than the packed kernel at one row, ~1.4x at 16-64 rows, equal at prefill sizes).
`PackedBf16Linear` keeps only the packed copy, so it costs no extra memory except for a head
tied to the embedding. Applied by `pack_dense_linears` where the CPU kernels run (not under
QFID_KERNEL=reference, which keeps torch's path as the comparison).
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


class BoundLinear(nn.Module):
    """A quantized linear as its bound kernel (`x -> y`). What the kernel reads is also
    registered as (unsaved) buffers, so memory accounting sees it; the binding is made on
    the model's device and does not follow a later `.to()`."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kind = type(linear).__name__
        self.run = linear.bind_kernel()
        for i, tensor in enumerate(self.run.tensors()):
            self.register_buffer(f"kernel_tensor_{i}", tensor, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def extra_repr(self) -> str:
        return f"{self.kind}, in_features={self.in_features}, out_features={self.out_features}"


def bind_linears(model: nn.Module) -> None:
    """Swap the runtime model's linears for their kernel-bound forms (see the module docstring)."""
    _swap(model, lambda m: hasattr(m, "bind_kernel"), BoundLinear)
    pack_dense_linears(model)


def _swap(model: nn.Module, wanted, replacement) -> int:
    targets = [(name, module) for name, module in model.named_modules() if wanted(module)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, replacement(module))
    return len(targets)


def pack_dense_linears(model: nn.Module) -> int:
    """Replace every bf16 `nn.Linear` under `model` the CPU kernel can run by a
    `PackedBf16Linear`; returns how many were replaced."""
    from qfid.kernels.dispatch import packed_dense

    return _swap(model, lambda m: type(m) is nn.Linear and packed_dense(m.weight), PackedBf16Linear)
