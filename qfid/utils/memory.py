"""Give memory that was freed back to the operating system."""
from __future__ import annotations


def release_freed_memory() -> None:
    """Hand memory freed by the process back to the OS.

    glibc keeps freed chunks in its heap (its mmap threshold rises after large frees, so
    later large tensors come from the heap too), where they count in RSS for the process's
    whole life: hundreds of MB after the runtime model is built from loaded weights, and a
    growing share of a streamed quantization's peak as blocks come and go. `malloc_trim`
    returns them. A no-op where glibc is absent."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc_name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(libc_name).malloc_trim if libc_name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)
