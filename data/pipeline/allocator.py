"""Keeping freed memory in the process, so that per-sample buffers are not page-faulted anew each time.

glibc's malloc serves blocks above a threshold (128 KiB, raised on the fly up to
32 MiB) with fresh mappings and gives the top of its heap back to the system once
more than twice that threshold is free. Preprocessing allocates and frees the same
few megabytes per sample (a 10 s clip's filterbank makes about 6 MiB of temporaries;
a decoded image a few hundred KiB), so each sample faults its buffers in again.
Each fault costs microseconds, more on virtual machines, where it can dominate a
filterbank's time (tests/data/pipeline/test_allocator.py counts the faults with and without).

:func:`retain_freed_memory` raises both thresholds, so freed blocks stay in the heap
and the next sample reuses pages already mapped. The resident size then stays at the
peak the process has reached instead of shrinking between samples. It is a
process-wide setting: the data loader applies it in its own worker processes, and
the training script applies it to itself.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Fixes glibc's mmap and trim thresholds (bytes), which also stops their raising on the fly.

    True if both took effect; False where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


@functools.cache
def retain_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory for reuse; True if it took effect.

    Blocks up to 32 MiB come from the heap, and up to 1 GiB of free heap is kept
    instead of being returned to the system. Does nothing (returns False) where the C
    library is not glibc, e.g. on macOS, Windows or musl.
    """
    return set_malloc_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD)


__all__ = ["retain_freed_memory", "set_malloc_thresholds"]
