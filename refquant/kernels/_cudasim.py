"""Numba's CUDA simulator with thread-safe shared memory (imported only under the simulator).

The simulator runs every CUDA thread of a block as a Python thread. Its
``FakeCUDAShared.array`` gives the threads of a launch one array per source line by a
check-then-act without a lock: look the line up, and when it is absent allocate an array
(``np.empty``) and store it. A thread preempted between the look-up and the store lets the
other threads of the block find nothing and allocate arrays of their own, so threads that must
share ``_rows_kernel``'s ``red`` / ``stats`` / ``flag`` or ``_linear_kernel``'s ``sA`` / ``sW``
each work on a private, uninitialized one: a whole row's amax or a GEMM tile computed from
whatever that memory held before (often another model's data, since np.empty recycles the
previous launch's buffers). Real GPUs have one shared memory per block, so only the simulator
gave other bytes (issue 14). ``install`` replaces the method with the same look-up (the calling
file and line) done under a lock.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

_LOCK = threading.Lock()


def install() -> None:
    """Make the simulator's static shared-memory allocation atomic (idempotent)."""
    from numba.cuda.simulator import kernelapi

    cls = kernelapi.FakeCUDAShared
    if getattr(cls.array, "refquant_locked", False):
        return
    numba_array = cls.array
    as_dtype, numba_type = kernelapi.numpy_support.as_dtype, kernelapi.types.Type

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # numba's refusal, or the one dynamic buffer: no look-up
            return numba_array(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)  # numba's key: the calling line
        with _LOCK:
            res = self._allocations.get(key)
            if res is None:
                res = np.empty(shape, as_dtype(dtype) if isinstance(dtype, numba_type) else dtype)
                self._allocations[key] = res
        return res

    array.refquant_locked = True
    cls.array = array
