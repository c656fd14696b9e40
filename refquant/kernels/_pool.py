"""A tiny fork-join pool for the kernels: part 0 runs in the calling thread, parts 1.. in
helper threads that sleep on semaphores (no spinning).

Why not ``numba.prange``: refquant runs Numba's "workqueue" threading layer (refquant._numba:
the OpenMP/TBB pools spin and starve OpenBLAS). On the project's 2-vCPU machines a workqueue
launch costs ~25 us, and for work items of ~0.1-2 ms its two workers mostly ran ONE AFTER
THE OTHER: timestamps taken inside a 2-item prange showed the second item starting when the
first one ended (a 2-thread int8 GEMM measured 248 GOP/s against 230 at one thread; 533 with
the OpenMP layer). Here the caller computes part 0 itself while one woken helper computes
part 1; in the same measurement both parts started within ~10-70 us of each other.

Each kernel is a ``numba.njit(nogil=True)`` function whose last two arguments are
``(part, nparts)``; ``run`` calls it once per part and re-raises the first exception. The
number of parts is ``numba.get_num_threads()`` (so ``numba.set_num_threads`` applies). If the
pool is busy (kernels called from several Python threads at once), the caller runs every part
itself.
"""
from __future__ import annotations

import os
import threading

from .._numba import numba


class _Helper:
    def __init__(self):
        self.go = threading.Semaphore(0)
        self.done = threading.Semaphore(0)
        self.job = None
        self.error = None
        threading.Thread(target=self._loop, name="refquant-kernels", daemon=True).start()

    def _loop(self):
        while True:
            self.go.acquire()
            fn, args = self.job
            self.job = None
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller
                self.error = exc
            self.done.release()


_helpers: list[_Helper] = []
_pid = os.getpid()
_lock = threading.Lock()


def threads() -> int:
    """How many parts a kernel is cut into: Numba's thread count (numba.set_num_threads)."""
    return max(1, int(numba.get_num_threads()))


def _get_helpers(n: int) -> list[_Helper]:
    global _pid
    if os.getpid() != _pid:  # threads do not survive fork
        _helpers.clear()
        _pid = os.getpid()
    while len(_helpers) < n:
        _helpers.append(_Helper())
    return _helpers[:n]


def run(fn, nparts: int, *args) -> None:
    """fn(*args, part, nparts) for every part in range(nparts), part 0 in this thread."""
    if nparts <= 1:
        fn(*args, 0, 1)
        return
    if not _lock.acquire(blocking=False):
        for part in range(nparts):
            fn(*args, part, nparts)
        return
    try:
        helpers = _get_helpers(nparts - 1)
        for i, helper in enumerate(helpers):
            helper.job = (fn, args + (i + 1, nparts))
            helper.go.release()
        error = None
        try:
            fn(*args, 0, nparts)
        except BaseException as exc:
            error = exc
        for helper in helpers:
            helper.done.acquire()
            if helper.error is not None:
                error = error or helper.error
                helper.error = None
        if error is not None:
            raise error
    finally:
        _lock.release()
