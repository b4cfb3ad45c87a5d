"""Write-then-rename, so a crash never leaves a half-written checkpoint or run behind.

What is renamed into place follows the umask like any file the user creates: mkdtemp makes
0700 folders and safetensors writes 0600 files, which a serving process under another user
or a shared model store could not read."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from qfid.errors import QfidError


@contextlib.contextmanager
def atomic_output_dir(target: Path | str, overwrite: bool = False):
    """Yield a fresh temp dir beside `target`; on success rename it to `target`.

    On any exception the temp dir is removed and `target` is untouched. An existing
    `target` is an error unless `overwrite`, in which case it is replaced only after the
    new one is complete.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise QfidError(f"output directory {target} already exists (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a text file via a temp file in the same directory and an atomic replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a report is as readable as any file
    os.replace(tmp, path)


def follow_umask(root: Path) -> None:
    """chmod `root` and everything under it to what the umask gives a new file (0666 &
    ~umask) or folder (0777 & ~umask), whatever mode the writer chose."""
    mask = _umask()
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
