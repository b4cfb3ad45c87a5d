"""One decoder block resolved into a plain description, once, before any search: its
quantized Linears (by checkpoint-relative name), its experts, and the AWQ mappings that
apply to it (`{e}` expanded, shape-ruled-out ones dropped). Everything downstream (the AWQ
search, the scheme handlers, the writer) consumes this instead of re-reading the arch spec.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from qfid.models.linears import WeightRef, block_weight, expand_experts, num_experts
from qfid.models.mappings import ArchSpec, AwqMapping


@dataclass(frozen=True)
class BlockLayout:
    linears: dict[str, WeightRef]     # quantized Linears by block-relative checkpoint name
    mappings: list["BlockMapping"]    # AWQ (smooth -> balance) mappings that apply here
    experts: int                      # 0 for a dense block


def describe_block(block: nn.Module, spec: ArchSpec) -> BlockLayout:
    return BlockLayout(block_linears(block, spec), resolve_block_mappings(block, spec), num_experts(block))


@dataclass(frozen=True)
class BlockMapping:
    """An AwqMapping resolved inside one block: `{e}` expanded, names block-relative."""

    smooth: str
    balance: tuple[str, ...]
    inspect: str
    extra_balance: tuple[str, ...] = ()


def block_linears(block: nn.Module, spec: ArchSpec) -> dict[str, WeightRef]:
    return {name: block_weight(block, name) for name in expand_experts(spec.linears, block)}


def resolve_block_mappings(block: nn.Module, spec: ArchSpec) -> list[BlockMapping]:
    """The block's mappings, minus those whose shapes rule them out (v -> o under GQA)."""
    resolved = []
    for mapping in spec.awq:
        for bm in _expand(mapping, block):
            if mapping.requires_same_shape and not _same_shapes(block, bm):
                continue
            resolved.append(bm)
    return resolved


def _expand(mapping: AwqMapping, block: nn.Module) -> list[BlockMapping]:
    if "{e}" in mapping.smooth:
        return [BlockMapping(mapping.smooth.format(e=e), tuple(b.format(e=e) for b in mapping.balance),
                             mapping.inspect.format(e=e)) for e in range(num_experts(block))]
    return [BlockMapping(mapping.smooth, tuple(expand_experts(mapping.balance, block)), mapping.inspect,
                         mapping.extra_balance)]


def _same_shapes(block: nn.Module, m: BlockMapping) -> bool:
    shape = block_weight(block, m.smooth).shape
    return all(block_weight(block, b).shape == shape for b in m.balance)
