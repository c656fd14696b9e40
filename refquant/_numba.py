"""Numba, configured once for refquant before any parallel loop runs."""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    # Numba's OpenMP / TBB pools spin after a parallel loop and starve OpenBLAS's threads on
    # small machines (MiniLM's forward: 364 -> 282 ms on 2 cores); the workqueue layer sleeps
    # instead. Set NUMBA_THREADING_LAYER to choose another.
    numba.config.THREADING_LAYER = "workqueue"

__all__ = ["numba"]
