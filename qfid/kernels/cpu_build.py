"""Compile kernels/cpu at first use, cache the library, and register its torch ops.

Why a build at run time: the kernels need AVX-512 BF16 code that a portable wheel cannot
assume, and the machine that runs them is the only one that knows its own CPU. The
library is keyed by the source hash and the torch version under the user cache, so it is
built once per machine: the sources are copied into that folder and compiled from there,
because torch's build files record source paths, and two checkouts of the same sources
(a worktree, an installed copy) compiling from their own paths rebuilt the library each
time the other had loaded it (50 s on 2 cores, inside whatever was being timed). Anything
missing (no compiler, no ninja, an older CPU) means the ops are simply absent and the
dispatcher falls back — with one log line saying why.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch

from qfid.paths import bundled_dir, cache_dir

log = logging.getLogger(__name__)

_SOURCES = ("int4_gemm.cpp", "fp8_gemm.cpp", "bf16_gemm.cpp", "paged_attention.cpp", "prefill_attention.cpp",
            "elementwise.cpp", "int4_fake_quant.cpp", "fp8_activations.cpp", "decode_layers.cpp", "argmax.cpp")
_HEADERS = ("bf16_dot.h", "bf16_tile.h", "activations.h", "vec16.h", "elementwise.h", "paged_attention.h",
            "int4_gemm.h")
_REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512vbmi", "f16c", "fma")
# -ffp-contract=off: the fused elementwise ops reproduce torch's separate multiply and add
# roundings; a contracted FMA would round once. The GEMMs use explicit FMA intrinsics.
_CFLAGS = ["-O3", "-ffp-contract=off", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vbmi", "-mf16c", "-mfma", "-fopenmp"]


def source_dir() -> Path:
    return bundled_dir("kernels") / "cpu"


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel needs to find (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def missing_requirements() -> list[str]:
    """Why the kernels cannot be built or run here; empty when they can."""
    missing = [f"cpu flag {f}" for f in _REQUIRED_FLAGS if f not in cpu_flags()]
    if not shutil.which(os.environ.get("CXX", "c++")):
        missing.append("a C++ compiler")
    if not shutil.which("ninja"):
        missing.append("ninja")
    return missing


def _build_dir() -> Path:
    digest = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        digest.update((source_dir() / name).read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(_CFLAGS).encode())
    path = cache_dir() / "kernels" / f"cpu-{digest.hexdigest()[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stable_sources(build: Path) -> Path:
    """The kernel sources copied into `build` (whose name is their hash), so every checkout
    compiles the very same paths. Each file lands by rename: a concurrent first use never
    reads half of one."""
    folder = build / "src"
    folder.mkdir(exist_ok=True)
    for name in _SOURCES + _HEADERS:
        target = folder / name
        if not target.is_file():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(source_dir() / name, tmp)
            os.replace(tmp, target)
    return folder


@functools.lru_cache(maxsize=1)
def load_cpu_ops() -> bool:
    """Build (once) and load the CPU ops into `torch.ops.qfid_cpu`; False when unavailable."""
    missing = missing_requirements()
    if missing:
        log.info("qfid CPU kernels unavailable: missing %s", ", ".join(missing))
        return False
    from torch.utils.cpp_extension import load

    build = _build_dir()
    if not any(build.glob("*.so")):
        log.info("compiling the qfid CPU kernels (once per machine) into %s", build)
    try:
        sources = _stable_sources(build)
        load(name="qfid_cpu_kernels", sources=[str(sources / s) for s in _SOURCES],
             extra_cflags=_CFLAGS, extra_ldflags=["-fopenmp"], build_directory=str(build),
             is_python_module=False, verbose=False)
    except (RuntimeError, OSError, ImportError) as exc:  # compiler errors surface as RuntimeError
        log.warning("qfid CPU kernels failed to build, using fallbacks: %s", exc)
        return False
    return True
