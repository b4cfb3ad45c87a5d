"""Give memory that was freed back to the operating system."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from contextlib import contextmanager

# mallopt parameters (glibc's malloc.h) and the defaults restored afterwards
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# Setting any threshold ends glibc's dynamic one for the process, so the exit restores the
# state the dynamic threshold settles in after large frees: blocks up to 32 MB from the heap,
# trimmed past twice that (not the 128 KB start, which would map every later tensor afresh).
_SETTLED_MMAP_THRESHOLD, _SETTLED_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 32 << 20, 64 << 20, 65536
_HELD_FREE_BYTES = 64 << 20


def release_freed_memory(full_collect: bool = True) -> None:
    """Hand memory freed by the process back to the OS.

    glibc keeps freed chunks in its heap (its mmap threshold rises after large frees, so
    later large tensors come from the heap too), where they count in RSS for the process's
    whole life: hundreds of MB after the runtime model is built from loaded weights, and a
    growing share of a streamed quantization's peak as blocks come and go. `malloc_trim`
    returns them. A no-op where glibc is absent.

    Reference cycles are collected first: all generations by default, only the young ones
    with `full_collect=False`: a full collection walks every object the process holds
    (0.4 s with transformers loaded), and once per decoder block that was 18% of an FP8
    quantization of the default model; what a block leaves behind is young or freed by
    reference counting already."""
    import gc

    gc.collect() if full_collect else gc.collect(1)
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def reused_heap():
    """Serve every allocation inside from glibc's heap and keep what is freed there for reuse.

    glibc maps each allocation above its mmap threshold (32 MB at most) afresh and unmaps it
    on free, so a loop that makes the same large temporaries each time (AWQ scores 20 grid
    points per mapping, each through a forward whose intermediates on an 8B block are
    60-120 MB) page-faults all of them in every round: measured on a 2-core Zen 4, 11% of
    the quantizer's CPU time was system time. Inside this context nothing is mmapped and up
    to 64 MB of freed memory stays at the heap top; on exit mapping is allowed again and the free
    memory is returned (`malloc_trim`), so the peak is the loop's working set, once. A
    no-op without glibc."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _HELD_FREE_BYTES)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None
