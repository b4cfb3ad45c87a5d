"""Write safetensors checkpoints tensor by tensor, in shards planned up front.

`safetensors.torch.save_file` needs every tensor of a file in memory at once: a 5 GB shard
would put 5 GB in RAM. Here the shard layout (names, shapes, dtypes, so every offset) is
planned before any data exists; each file gets its header and its full length at once, and
every tensor is written at its offset when it is produced (`os.pwrite`). Memory holds one
tensor, files come out byte-compatible with the library's (little-endian data, an 8-byte
aligned header, tensors ordered by alignment then name, so each is aligned for mmap).

A file can be reopened to write the tensors it still lacks (a resumed run), and names follow
the hub: `model.safetensors`, or `model-0000i-of-0000n.safetensors` plus
`model.safetensors.index.json`.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

INDEX_FILE = "model.safetensors.index.json"
DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorSpec":
        return cls(name, tuple(tensor.shape), tensor.dtype)


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive groups of `specs`, each at most `max_shard_bytes` unless one tensor alone
    is larger (the hub's rule)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardFile:
    """One safetensors file whose layout is fixed at creation; tensors arrive in any order."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None = None,
                 resume: bool = False):
        self.path = Path(path)
        header, self.offsets, data_bytes = _layout(specs, metadata or {"format": "pt"})
        self.specs = {s.name: s for s in specs}
        self.data_start = 8 + len(header)
        mode = os.O_RDWR if resume and self.path.exists() else os.O_RDWR | os.O_CREAT | os.O_TRUNC
        self.fd = os.open(self.path, mode, 0o666)
        os.pwrite(self.fd, struct.pack("<Q", len(header)) + header, 0)
        os.ftruncate(self.fd, self.data_start + data_bytes)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self.specs[name]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise ValueError(f"{name}: planned {spec.dtype} {spec.shape}, got {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        written = os.pwrite(self.fd, memoryview(data), self.data_start + self.offsets[name])
        if written != data.nbytes:
            raise OSError(f"short write of {name} to {self.path}")

    def copy_bytes(self, name: str, source: Path, offset: int, length: int) -> None:
        """Fill `name` with `length` bytes of `source` from `offset` (a tensor stored as it
        is): copied by the kernel (copy_file_range), never through this process's memory."""
        if length != self.specs[name].nbytes:
            raise ValueError(f"{name}: planned {self.specs[name].nbytes} bytes, source holds {length}")
        target = self.data_start + self.offsets[name]
        with open(source, "rb") as src:
            done = 0
            while done < length:
                n = _copy_range(src.fileno(), offset + done, self.fd, target + done, length - done)
                if n <= 0:
                    raise OSError(f"short copy of {name} from {source} to {self.path}")
                done += n

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


def _copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> int:
    """Bytes copied from one file to another: copy_file_range where the OS has it, else a
    bounded read and write."""
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(src, dst, length, src_offset, dst_offset)
        except OSError:
            pass   # e.g. across file systems on older kernels
    data = os.pread(src, min(length, 64 << 20), src_offset)
    return os.pwrite(dst, data, dst_offset) if data else 0


def _layout(specs: list[TensorSpec], metadata: dict[str, str]) -> tuple[bytes, dict[str, int], int]:
    """(padded header bytes, data offset per name, data length)."""
    ordered = sorted(specs, key=lambda s: (-s.dtype.itemsize, s.name))
    entries: dict[str, object] = {"__metadata__": metadata}
    offsets, position = {}, 0
    for spec in ordered:
        offsets[spec.name] = position
        entries[spec.name] = {"dtype": DTYPE_CODES[spec.dtype], "shape": list(spec.shape),
                              "data_offsets": [position, position + spec.nbytes]}
        position += spec.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 8)
    return header, offsets, position


class ShardedWriter:
    """A checkpoint's weight files: the plan, the open shards, the index."""

    def __init__(self, folder: Path, specs: list[TensorSpec], max_shard_bytes: int, resume: bool = False):
        groups = plan_shards(specs, max_shard_bytes)
        self.folder = Path(folder)
        self.names = shard_names(len(groups))
        self.files = [ShardFile(self.folder / name, group, resume=resume) for name, group in zip(self.names, groups)]
        self.file_of = {spec.name: f for f, group in zip(self.files, groups) for spec in group}
        self.bytes_written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.file_of[name].write(name, tensor)
        self.bytes_written += self.file_of[name].specs[name].nbytes

    def copy_bytes(self, name: str, source: Path, offset: int, length: int) -> None:
        self.file_of[name].copy_bytes(name, source, offset, length)
        self.bytes_written += length

    def close(self) -> None:
        for f in self.files:
            f.close()
        if len(self.files) > 1:
            total = sum(s.nbytes for f in self.files for s in f.specs.values())
            index = {"metadata": {"total_size": total},
                     "weight_map": {name: f.path.name for name, f in sorted(self.file_of.items())}}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_tensors(folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    """Every tensor of an in-memory dict, sharded like a streamed checkpoint."""
    writer = ShardedWriter(folder, [TensorSpec.of(n, t) for n, t in tensors.items()], max_shard_bytes)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()
