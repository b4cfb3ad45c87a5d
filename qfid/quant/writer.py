"""Write a quantized checkpoint's weights from a source checkpoint's tensor list, tensor by
tensor: every source tensor keeps its name, shape and stored dtype, except each quantized
Linear's `.weight`, which becomes its codec's tensors (qweight/qzeros/scales, weight_packed
..., or an FP8 weight and its scales).

The whole file layout is planned from the source's headers and each Linear's `LinearPlan`
before any layer is quantized, so shards of about 5 GB are written as blocks stream by and
memory never holds more than the block at hand (see utils/safetensors_stream.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from qfid.errors import QfidError
from qfid.quant.codecs import LinearPlan, packed_specs, packed_tensors
from qfid.layouts.primitives import Fp8Weight, Int4Weight
from qfid.utils.safetensors_stream import ShardedWriter, TensorSpec

MAX_SHARD_BYTES = 5 * 10**9   # the hub's shard size


class CheckpointWriter:
    """The weight files of one output checkpoint."""

    def __init__(self, folder: Path, source_specs: dict[str, TensorSpec], plans: dict[str, LinearPlan],
                 max_shard_bytes: int = MAX_SHARD_BYTES, resume: bool = False):
        self.source_specs, self.plans = source_specs, plans
        self.specs = self._output_specs()
        self.shards = ShardedWriter(folder, self.specs, max_shard_bytes, resume=resume)
        self.quantized_bytes = sum(s.nbytes for name in plans for s in packed_specs(name, self._shape(name), plans[name]))

    def _shape(self, linear: str) -> tuple[int, int]:
        spec = self.source_specs.get(f"{linear}.weight")
        if spec is None:
            raise QfidError(f"quantized layer {linear} has no dense weight in the model's checkpoint; "
                            "names must be checkpoint names")
        return spec.shape

    def _output_specs(self) -> list[TensorSpec]:
        for linear in self.plans:
            self._shape(linear)
        specs: list[TensorSpec] = []
        for name, spec in self.source_specs.items():
            linear = name[: -len(".weight")] if name.endswith(".weight") else None
            specs += packed_specs(linear, spec.shape, self.plans[linear]) if linear in self.plans else [spec]
        return specs

    def write_dense(self, name: str, tensor: torch.Tensor) -> None:
        """A tensor that is not quantized, cast back to the dtype the source stored it in."""
        self.shards.write(name, tensor.to(self.source_specs[name].dtype))

    def copy_dense(self, name: str, source: Path, offset: int, length: int) -> None:
        """A tensor written exactly as the source stores it, copied file to file."""
        self.shards.copy_bytes(name, source, offset, length)

    def write_quantized(self, linear: str, weight: Int4Weight | Fp8Weight) -> None:
        if tuple(weight.shape) != self._shape(linear):
            raise QfidError(f"quantized {linear} has shape {tuple(weight.shape)} but the model's weight is "
                            f"{self._shape(linear)}")
        for name, tensor in packed_tensors(linear, weight, self.plans[linear].format).items():
            self.shards.write(name, tensor)

    def close(self) -> None:
        self.shards.close()


def plan_of(weight: Int4Weight | Fp8Weight, fmt: str) -> LinearPlan:
    """The plan that stores an already quantized weight as it is."""
    if isinstance(weight, Int4Weight):
        return LinearPlan("int4", fmt, group_size=weight.group_size)
    return LinearPlan("fp8", fmt, per_channel=weight.per_channel, static=weight.input_scale is not None)


def write_side_files(folder: Path, source_dir: Path, tokenizer, quantization_config: dict) -> None:
    """config.json (the source's plus `quantization_config`), generation_config.json and the
    tokenizer: the rest of what a loader reads as the model."""
    hf_config = json.loads((source_dir / "config.json").read_text())
    hf_config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    generation = source_dir / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, folder / generation.name)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
