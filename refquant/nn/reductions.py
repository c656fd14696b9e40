"""The NumPy definitions of the row reductions (contract rules 10 and 14): slow, written as the
rules read, one column at a time so that every sum is visibly left to right. The fused Numba
passes of ``refquant.nn.fused`` compute the same bytes (tests/test_reductions.py)."""
from __future__ import annotations

import numpy as np

F32, F64 = np.float32, np.float64


def _rows(x):
    x = np.asarray(x, F32)
    return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)


def rstd_from_sum(s, c, eps):
    """float32(1 / sqrt(float32(s / C) + eps)): the sum + eps and the square root in float32
    (both correctly rounded), the division in float64 (the step LayerNorm and RMSNorm share,
    refquant.nn.fused._rstd)."""
    return (1.0 / np.sqrt((s / c).astype(F32) + F32(eps)).astype(F64)).astype(F32)


def layer_norm_stats_definition(x, eps):
    """(mean, rstd) per row: mean = float32(sum_j float64(x_j) / C); v = sum_j
    float64(x_j - mean)^2 (the difference in float32), both left to right in float64."""
    x2 = _rows(x)
    rows, c = x2.shape
    s = np.zeros(rows, F64)
    for j in range(c):
        s += x2[:, j].astype(F64)
    mean = (s / c).astype(F32)
    v = np.zeros(rows, F64)
    for j in range(c):
        d = (x2[:, j] - mean).astype(F64)
        v += d * d
    return mean, rstd_from_sum(v, c, eps)


def layer_norm_definition(x, gamma, beta, eps):
    """y = ((x - mean) * rstd) * gamma + beta in float32, the statistics above."""
    x2 = _rows(x)
    mean, rstd = layer_norm_stats_definition(x2, eps)
    h = (x2 - mean[:, None]) * rstd[:, None]
    return (h * np.asarray(gamma, F32) + np.asarray(beta, F32)).reshape(np.shape(x))


def rms_norm_definition(x, gamma, eps):
    """y = gamma * (x * rstd), rstd from s = sum_j float64(x_j)^2 left to right (rule 14)."""
    x2 = _rows(x)
    rows, c = x2.shape
    s = np.zeros(rows, F64)
    for j in range(c):
        d = x2[:, j].astype(F64)
        s += d * d
    rstd = rstd_from_sum(s, c, eps)
    return (np.asarray(gamma, F32) * (x2 * rstd[:, None])).reshape(np.shape(x))
