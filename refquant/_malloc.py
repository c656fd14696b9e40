"""glibc's malloc, told to keep freed memory for the next forward pass.

A forward pass allocates and frees the same activation arrays (6 MiB each for MiniLM's scores
and FFN at 8 x 128) every layer. By default glibc serves blocks that size with fresh mmap()s
and returns freed memory at the top of the heap to the kernel, so every layer page-faults its
outputs in again: on the project's 2-core VMs that cost 25-35 % of the float forward (MiniLM
8 x 128, min of 15 runs: 169-210 ms -> 136 ms). Raising M_MMAP_THRESHOLD to its maximum (32 MiB)
and M_TRIM_THRESHOLD to 1 GiB keeps those pages mapped and reused; the price is that the
process keeps its peak heap after a forward (the peak itself does not grow).

rq.load calls keep_freed_memory() once; REFQUANT_MALLOPT=0 in the environment turns it off.
Elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1   # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set the two thresholds once per process; True when they are in effect."""
    global _done
    if _done is None:
        _done = False
        if os.environ.get("REFQUANT_MALLOPT", "1") != "0" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
