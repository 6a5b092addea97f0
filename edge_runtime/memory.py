"""What a long-running device process does about glibc's allocator (measured in
docs/benchmarks.md, "What the daemon's memory is").

glibc gives each thread that allocates its own arena (up to 8 per core) and raises its mmap
threshold as large blocks are freed, so freed batches and decoded frames stay resident in the
heap. Two arenas and a fixed 128 KiB threshold (large blocks go back to the system when freed)
cut the daemon's resident memory by 15-45 MB with the same speed; `release_free_memory` hands
back what loading a model left free. Elsewhere (musl, macOS) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc(arenas: int = 2, mmap_threshold: int = 128 * 1024) -> bool:
    """Set glibc's arena count and mmap threshold; call before threads start. True if done."""
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(M_ARENA_MAX, arenas)) and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    log.debug("malloc: %d arenas, mmap threshold %d bytes (%s)", arenas, mmap_threshold, "set" if done else "refused")
    return done


def release_free_memory() -> None:
    """Return the heap's free pages to the system (after a model load, for example)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
