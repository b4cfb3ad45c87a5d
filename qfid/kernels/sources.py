"""Where the kernel sources live, and how a Triton source file becomes a module.

The sources in kernels/{triton,cuda,cpu} are package data, not an importable package (a
PyPI project called `kernels` exists), so the Triton files are loaded by path under a
qfid-private module name.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from qfid.paths import bundled_dir
from qfid.utils.modules import import_file

_PREFIX = "qfid_kernel_sources"


def source_path(kind: str, name: str) -> Path:
    """`kernels/<kind>/<name>`, wherever qfid was installed."""
    path = bundled_dir("kernels") / kind / name
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {path} is missing from this installation")
    return path


def load_source_module(kind: str, stem: str) -> ModuleType:
    """Import `kernels/<kind>/<stem>.py` once, as `qfid_kernel_sources.<kind>.<stem>`.

    Registered in sys.modules before execution so that Triton can find the source of its
    jitted functions and sibling modules load only once.
    """
    return import_file(f"{_PREFIX}.{kind}.{stem}", source_path(kind, f"{stem}.py"))
