"""Find a model's quantizable Linear weights by their *checkpoint* names.

Dense families hold each projection in an nn.Linear whose module path equals its checkpoint
name. transformers 5 fuses MoE experts into 3-D parameters (`mlp.experts.gate_up_proj`
[E, 2I, H], `mlp.experts.down_proj` [E, H, I]) while checkpoints keep one tensor per expert
(`block_sparse_moe.experts.{e}.w1/w3/w2`); a `WeightRef` hides that difference by
pointing at a 2-D view of the fused parameter. Everything that reads or rewrites weights
(RTN, AWQ, FP8, the savers) goes through `WeightRef.get()` / `WeightRef.set()`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from qfid.errors import QfidError
from qfid.models.mappings import ArchSpec

# checkpoint-name suffix -> (module path under the block, fused parameter, half of rows or None)
_FUSED_EXPERTS = {
    "w1": ("mlp.experts", "gate_up_proj", 0),
    "w3": ("mlp.experts", "gate_up_proj", 1),
    "w2": ("mlp.experts", "down_proj", None),
}
_EXPERT_NAME = re.compile(r"^block_sparse_moe\.experts\.(\d+)\.(w[123])$")


@dataclass
class WeightRef:
    """A 2-D [out, in] weight inside a module, addressed by its checkpoint name."""

    name: str
    module: nn.Module
    param: str
    expert: int | None = None
    half: int | None = None

    def _view(self) -> torch.Tensor:
        return self.view_of(getattr(self.module, self.param).data)

    def view_of(self, full: torch.Tensor) -> torch.Tensor:
        """This weight's [out, in] view inside `full`, a tensor shaped like the whole
        parameter: lets a search assemble a candidate parameter without touching the model's."""
        if self.expert is None:
            return full
        w = full[self.expert]
        if self.half is None:
            return w
        rows = w.shape[0] // 2
        return w[self.half * rows : (self.half + 1) * rows]

    def get(self) -> torch.Tensor:
        return self._view()

    def set(self, value: torch.Tensor) -> None:
        view = self._view()
        view.copy_(value.to(view.dtype))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._view().shape)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None) if self.expert is None else None


def num_experts(block: nn.Module) -> int:
    for path in ("block_sparse_moe.experts", "mlp.experts"):
        try:
            experts = block.get_submodule(path)
        except AttributeError:
            continue
        n = getattr(experts, "num_experts", None)
        return n if n is not None else len(experts)
    return 0


def expand_experts(names: tuple[str, ...], block: nn.Module) -> list[str]:
    """Replace `{e}` with each expert index of this block."""
    n = num_experts(block)
    out: list[str] = []
    for name in names:
        out.extend(name.format(e=e) for e in range(n)) if "{e}" in name else out.append(name)
    return out


def block_weight(block: nn.Module, name: str) -> WeightRef:
    """The weight a block-relative checkpoint name refers to; a clear error if none."""
    try:
        module = block.get_submodule(name)
        if isinstance(module, nn.Linear):
            return WeightRef(name, module, "weight")
    except AttributeError:
        pass
    match = _EXPERT_NAME.match(name)
    if match:
        path, param, half = _FUSED_EXPERTS[match.group(2)]
        try:
            return WeightRef(name, block.get_submodule(path), param, int(match.group(1)), half)
        except AttributeError:
            pass
    raise QfidError(f"architecture mapping names {name!r} but the model has no such Linear layer")


def block_module(block: nn.Module, name: str) -> nn.Module:
    """A module by checkpoint-relative name, accepting transformers 5's MoE renames."""
    for candidate in (name, name.replace("block_sparse_moe", "mlp")):
        try:
            return block.get_submodule(candidate)
        except AttributeError:
            continue
    raise QfidError(f"architecture mapping names module {name!r} but the model has none")


@dataclass
class ParamRef:
    """A parameter or buffer that is not a quantized weight (a norm, a router), by
    checkpoint-relative name; the same get/set as WeightRef."""

    module: nn.Module
    attr: str

    def get(self) -> torch.Tensor:
        return getattr(self.module, self.attr).data

    def set(self, value: torch.Tensor) -> None:
        target = self.get()
        if tuple(target.shape) != tuple(value.shape):
            raise QfidError(f"checkpoint tensor .{self.attr} has shape {tuple(value.shape)}; the model expects "
                            f"{tuple(target.shape)}")
        target.copy_(value.to(target.dtype))


def block_tensor(block: nn.Module, name: str) -> WeightRef | ParamRef:
    """What a block-relative *checkpoint* tensor name (`self_attn.q_proj.weight`,
    `block_sparse_moe.experts.3.w1.weight`, `input_layernorm.weight`) refers to in the
    in-memory block: how a streamed block is filled and read back."""
    path, _, leaf = name.rpartition(".")
    if leaf == "weight":
        try:
            return block_weight(block, path)
        except QfidError:
            pass
    module = block_module(block, path) if path else block
    if not hasattr(module, leaf):
        raise QfidError(f"checkpoint tensor {name!r} has no counterpart in the model's block")
    return ParamRef(module, leaf)


def decoder_blocks(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    try:
        return model.get_submodule(spec.blocks)
    except AttributeError:
        raise QfidError(f"model has no decoder blocks at {spec.blocks!r}") from None


def model_linears(model: nn.Module, spec: ArchSpec) -> dict[str, WeightRef]:
    """Every quantized weight of the model by full checkpoint name (without `.weight`).
    Resolved up front so a mapping that matches nothing fails before any work is done."""
    refs: dict[str, WeightRef] = {}
    for i, block in enumerate(decoder_blocks(model, spec)):
        for rel in expand_experts(spec.linears, block):
            ref = block_weight(block, rel)
            ref.name = f"{spec.blocks}.{i}.{rel}"
            refs[ref.name] = ref
    return refs
