"""Give the memory of a finished phase back to the system.

A stitch allocates and frees hundreds of MiB of temporaries (Parquet decode buffers, numpy
arrays the size of the graph). Both allocators keep what was freed for reuse: Arrow's pool
(mimalloc) in its segments, glibc's malloc in its heap, where a freed array above the heap's
top cannot be returned. So a run's resident memory only grows, the next phase's peak sitting
on the last one's leftovers. Between phases, :func:`give_back` hands it back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import pyarrow as pa


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None on another C library (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def give_back() -> None:
    """Return freed memory to the system: Arrow's pool, then glibc's heap (a few ms)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
