"""Process tuning for phantom runs: let glibc reuse freed large blocks instead of mapping fresh pages each time."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["reuse_large_allocations"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_large_allocations() -> bool:
    """Serve large arrays from the heap and keep freed memory for reuse (glibc only; a no-op elsewhere).

    A study allocates and frees hundreds of 10-100 MB arrays. By default glibc maps each from the kernel and unmaps
    it when freed, so every allocation page-faults its memory in again (seconds of system time per study). Call this
    once in a process that generates studies (the command line and the benchmark do); it raises the process's
    peak memory a little and returns True when applied.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31))
    except (OSError, AttributeError):
        return False
    logger.debug("glibc allocation tuning applied: %s", applied)
    return applied
