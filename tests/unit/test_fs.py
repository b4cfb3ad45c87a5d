"""Write-then-rename helpers: nothing half-written is left behind, and what is written is as
readable as any file the user's umask allows."""
from __future__ import annotations

import os
import stat

import pytest

from qfid.errors import QfidError
from qfid.utils.fs import atomic_output_dir, atomic_write_text


def test_atomic_write_text_replaces_and_honours_the_umask(tmp_path):
    target = tmp_path / "deep" / "report.md"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_atomic_output_dir_leaves_nothing_on_failure_and_refuses_to_clobber(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"ok")
    with pytest.raises(QfidError, match="already exists"):
        with atomic_output_dir(target):
            pass
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
    assert (target / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
