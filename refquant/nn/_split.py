"""Run a NumPy call on two halves of its work at once: one half on a helper thread.

NumPy's ufuncs (np.exp) and its batched matmul of many small matrices (attention's 96 heads of
128 x 32 x 128 for MiniLM at batch 8) run on one core: OpenBLAS does not thread matrices that
small. Both release the GIL, so splitting the batch across two threads runs them on both cores
of the project's machines. Results are the same bytes: each element is computed by the same
code either way.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

MIN_ELEMENTS = 1 << 16   # below this a thread hand-off costs more than it saves
_pool: ThreadPoolExecutor | None = None


def _helper() -> ThreadPoolExecutor | None:
    global _pool
    if _pool is None and (os.cpu_count() or 1) > 1:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refquant-split")
    return _pool


def in_halves(fn, n: int, elements: int) -> None:
    """fn(lo, hi) over [0, n): [0, n/2) on the helper thread, [n/2, n) here; serial when
    n < 2, the work is small (``elements``) or there is one CPU."""
    pool = _helper() if n > 1 and elements >= MIN_ELEMENTS else None
    if pool is None:
        fn(0, n)
        return
    half = n // 2
    first = pool.submit(fn, 0, half)
    try:
        fn(half, n)
    finally:
        first.result()
