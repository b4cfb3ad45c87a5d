"""A safetensors checkpoint read tensor by tensor, by name, without loading the model.

The quantize pipeline streams decoder blocks: it needs one block's tensors at a time, in the
dtype they are stored in, and must not keep a shard's memory mapping alive once the block is
read (resident memory should be the block, not the 5 GB file). So files are opened per
read and closed before returning; shapes and dtypes come from the headers alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from qfid.errors import QfidError
from qfid.utils.safetensors_stream import CODE_DTYPES, INDEX_FILE, TensorSpec


class CheckpointSource:
    """Names, specs and on-demand reads of a folder's model weights (one file, or shards
    named by `model.safetensors.index.json`)."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.file_of = _weight_map(self.model_dir)
        self.specs = self._read_specs()

    @property
    def names(self) -> list[str]:
        return list(self.file_of)

    def files(self) -> list[Path]:
        return sorted({self.model_dir / f for f in self.file_of.values()})

    def _read_specs(self) -> dict[str, TensorSpec]:
        from safetensors import safe_open

        specs = {}
        for path in self.files():
            with safe_open(path, "pt") as f:
                for name in f.keys():
                    if self.file_of.get(name) != path.name:
                        continue
                    piece = f.get_slice(name)
                    specs[name] = TensorSpec(name, tuple(piece.get_shape()), CODE_DTYPES[piece.get_dtype()])
        missing = [n for n in self.file_of if n not in specs]
        if missing:
            raise QfidError(f"{self.model_dir}: the index names {missing[0]} but its file does not hold it")
        return specs

    def read(self, names: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors in their stored dtype (or cast to `dtype`), copied out of the
        files: safetensors hands back views of its memory mapping, which would keep the file
        resident for as long as any tensor lives."""
        from safetensors import safe_open

        tensors = {}
        for filename, wanted in self._by_file(names).items():
            with safe_open(self.model_dir / filename, "pt") as f:
                for name in wanted:
                    mapped = f.get_tensor(name)
                    tensors[name] = mapped.clone() if dtype in (None, mapped.dtype) else mapped.to(dtype)
        return {name: tensors[name] for name in names}

    def copy_into(self, targets: dict[str, torch.Tensor]) -> None:
        """Copy each named tensor from the files into `targets[name]` (a tensor of its shape,
        any dtype or device: `copy_` converts), straight out of the memory mapping: no copy
        in between, whose pages would be faulted in and freed again (a block of an 8B is
        1.7 GB in fp32). The mapping is closed before returning."""
        from safetensors import safe_open

        for filename, wanted in self._by_file(list(targets)).items():
            with safe_open(self.model_dir / filename, "pt") as f:
                for name in wanted:
                    mapped, target = f.get_tensor(name), targets[name]
                    if tuple(mapped.shape) != tuple(target.shape):
                        raise QfidError(f"{self.model_dir}: {name} has shape {tuple(mapped.shape)}; the model "
                                        f"expects {tuple(target.shape)}")
                    target.copy_(mapped)

    def byte_range(self, name: str) -> tuple[Path, int, int]:
        """(file, offset, length) of a tensor's stored bytes: lets a tensor that is written
        out as stored be copied file to file without passing through memory."""
        path = self.model_dir / self.file_of[name]
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            start, end = json.loads(f.read(header_len))[name]["data_offsets"]
        return path, 8 + header_len + start, end - start

    def _by_file(self, names: list[str]) -> dict[str, list[str]]:
        by_file: dict[str, list[str]] = {}
        for name in names:
            if name not in self.file_of:
                raise QfidError(f"{self.model_dir} has no tensor {name}")
            by_file.setdefault(self.file_of[name], []).append(name)
        return by_file

    def with_prefix(self, prefix: str) -> list[str]:
        return [n for n in self.file_of if n.startswith(prefix)]

    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())


def _weight_map(model_dir: Path) -> dict[str, str]:
    """{tensor name: file name}: the index when there is one, else every top-level
    safetensors file except qfid's old side files."""
    from safetensors import safe_open

    index = model_dir / INDEX_FILE
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    files = sorted(p for p in model_dir.glob("*.safetensors") if not p.name.startswith("qfid_"))
    if not files:
        raise QfidError(f"{model_dir} has no .safetensors weights (qfid does not load pickled .bin checkpoints)")
    weight_map = {}
    for path in files:
        with safe_open(path, "pt") as f:
            weight_map.update({name: path.name for name in f.keys()})
    return weight_map
