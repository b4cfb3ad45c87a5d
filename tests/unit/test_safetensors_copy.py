"""Tensors written as stored are copied file to file: the bytes CheckpointSource.byte_range
names, through copy_file_range or the read/write fallback, load back equal; copy_into fills
targets of another dtype straight from the mapping."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from qfid.models.checkpoint_source import CheckpointSource
from qfid.utils.safetensors_stream import ShardedWriter, TensorSpec


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_byte_range_copy_round_trips(tmp_path, monkeypatch, kernel_copy):
    if not kernel_copy:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    gen = torch.Generator().manual_seed(0)
    tensors = {"embed.weight": torch.randn(33, 16, generator=gen).bfloat16(), "norm.weight": torch.rand(16, generator=gen),
               "ids": torch.arange(7, dtype=torch.int64)}
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors, src / "model.safetensors")
    source = CheckpointSource(src)
    out = tmp_path / "out"
    out.mkdir()
    writer = ShardedWriter(out, [TensorSpec.of(n, t) for n, t in tensors.items()], max_shard_bytes=1 << 30)
    for name in tensors:
        writer.copy_bytes(name, *source.byte_range(name))
    writer.close()
    loaded = load_file(out / "model.safetensors")
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[n], t) for n, t in tensors.items())
    targets = {"embed.weight": torch.empty(33, 16), "norm.weight": torch.empty(16, dtype=torch.float64)}
    source.copy_into(targets)
    assert all(torch.equal(targets[n], tensors[n].to(targets[n].dtype)) for n in targets)
    with pytest.raises(Exception, match="shape"):
        source.copy_into({"norm.weight": torch.empty(15)})
