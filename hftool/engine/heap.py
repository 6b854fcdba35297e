"""Handing freed heap memory back to the system (``train.release_memory_every``, CPU with glibc only).

Batches of varying shapes (length-grouped padding) leave freed activation memory scattered through the heap,
which glibc keeps; ``malloc_trim`` hands it back, so resident memory tracks what the steps really hold, at the
cost of faulting it in again (a lower peak for a slower step; docs/engine.md has the figures).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """Calls ``malloc_trim`` every ``every`` steps; does nothing when ``every`` is 0 or glibc is absent."""

    def __init__(self, every: int):
        self.every = every
        self._trim = glibc_malloc_trim() if every else None

    def after_step(self, step: int) -> None:
        """``step`` counts the steps done before this one, so the first trim follows the first step."""
        if self._trim is not None and step % self.every == 0:
            self._trim(0)
