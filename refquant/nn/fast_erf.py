"""erf for float32 inputs, exactly as scipy.special.erf gives it, at vector speed.

scipy.special.erf evaluates erf in float64 and rounds to float32 (about 25 ns per element:
BERT's GELU cost as much as all its GEMMs). Here, for |z| < 4, erf(z) = z * p(t) in float64,
where t = z^2 / 8 - 1 and p is the degree-24 Chebyshev interpolant of scipy's own
erf(z) / z on z^2 in [0, 16], fitted at import and evaluated in monomial form by Estrin's
scheme: no table lookups (LLVM does not vectorize gathers on this CPU) and short dependency
chains, so the loop runs 4 lanes wide. For |z| >= 4 the float32 result is +-1
(erfc(4) = 1.5e-8 is below half a float32 ulp of 1).

Exactness does not rest on luck. p is within TOLERANCE (relative) of scipy's float64 erf, so
scipy's float32 result can differ from float32(ours) only where a float32 rounding boundary
lies within TOLERANCE of our value: float32(r * (1 - TOLERANCE)) != float32(r * (1 + TOLERANCE)).
The kernel flags exactly those elements (24 per million) and they are recomputed with
scipy itself. Every NaN out is the canonical one, bits 0x7FC00000 (numeric contract rule 12:
GELU(-inf) is -inf * 0, and x86 would write 0xFFC00000; a NaN input would keep its payload).
The largest error measured against scipy is 8.2e-15 (tests/test_nn_ops.py checks
it stays below TOLERANCE / 100), and validation/check_erf_exhaustive.py found all 2.16e9
float32 values in [-4, 4] identical to scipy (validation/results/erf_exhaustive.txt).
"""
from __future__ import annotations

import numpy as np
from numpy.polynomial import chebyshev
from scipy.special import erf as scipy_erf

from .._numba import numba
from ..floats import canonical_nan_value

Z_MAX = 4.0          # float32(erf(z)) == 1 for every z >= 4 (erfc(4) = 1.54e-8 < 2^-25)
U_MAX = Z_MAX * Z_MAX
DEGREE = 24       # _erf_abs64 spells out this many terms
TOLERANCE = 1e-12    # relative, |ours - scipy| / scipy; measured max is 8e-15


def _fit() -> np.ndarray:
    """Monomial coefficients in t = u / 8 - 1 of the Chebyshev interpolant of
    erf(sqrt(u)) / sqrt(u) on u in [0, 16]."""
    def f(t):
        z = np.sqrt((t + 1) * (U_MAX / 2))
        safe = np.where(z == 0, 1.0, z)
        return np.where(z == 0, 2 / np.sqrt(np.pi), scipy_erf(safe) / safe)
    return chebyshev.cheb2poly(chebyshev.chebinterpolate(f, DEGREE))


COEFFS = _fit()


@numba.njit(cache=True, inline="always")
def _erf_abs64(a, m):
    """erf(a) in float64 for 0 <= a < Z_MAX: a * p(t), Estrin's scheme (short dependency chains,
    so vectorized lanes overlap; the monomial form is well conditioned here: sum |m_k| = 1.1)."""
    t = (a * a) * (2.0 / U_MAX) - 1.0
    t2 = t * t
    t4 = t2 * t2
    t8 = t4 * t4
    t16 = t8 * t8
    b0 = (m[0] + m[1] * t) + (m[2] + m[3] * t) * t2
    b1 = (m[4] + m[5] * t) + (m[6] + m[7] * t) * t2
    b2 = (m[8] + m[9] * t) + (m[10] + m[11] * t) * t2
    b3 = (m[12] + m[13] * t) + (m[14] + m[15] * t) * t2
    b4 = (m[16] + m[17] * t) + (m[18] + m[19] * t) * t2
    b5 = (m[20] + m[21] * t) + (m[22] + m[23] * t) * t2
    d0 = b0 + b1 * t4
    d1 = b2 + b3 * t4
    d2 = b4 + b5 * t4
    p = (d0 + d1 * t8) + (d2 + m[24] * t8) * t16
    return a * p


@numba.njit(cache=True, inline="always")
def _erf32(z, c):
    """(float32 erf of float64 z, 1 when scipy's value could round to another float32)."""
    a = min(abs(z), Z_MAX)
    r = _erf_abs64(a, c)
    lo = np.float32(r * (1.0 - TOLERANCE))
    hi = np.float32(r * (1.0 + TOLERANCE))
    unsure = np.uint8(1) if (lo != hi and a < Z_MAX) else np.uint8(0)
    e = np.float32(r) if a < Z_MAX else np.float32(1.0)
    e = e if z == z else np.float32(z)  # NaN stays NaN
    e = -e if z < 0 else (e if z > 0 else np.float32(z))  # erf(+-0) = +-0
    return e, unsure


@numba.njit(cache=True, parallel=True)
def _erf_kernel(x, out, unsure, c):
    for j in numba.prange(x.size):  # (a count reduction here would stop LLVM vectorizing)
        e, unsure[j] = _erf32(np.float64(x[j]), c)
        out[j] = canonical_nan_value(e)


@numba.njit(cache=True, parallel=True)
def _gelu_kernel(x, out, unsure, c, inv_sqrt2):
    for j in numba.prange(x.size):
        v = x[j]
        e, unsure[j] = _erf32(np.float64(v * inv_sqrt2), c)
        out[j] = canonical_nan_value((np.float32(0.5) * v) * (np.float32(1.0) + e))


@numba.njit(cache=True, parallel=True)
def _bias_gelu_kernel(x, bias, out, unsure, c, inv_sqrt2):
    rows, n = x.shape
    for r in numba.prange(rows):
        for j in range(n):
            v = x[r, j] + bias[j]
            e, unsure[r, j] = _erf32(np.float64(v * inv_sqrt2), c)
            out[r, j] = canonical_nan_value((np.float32(0.5) * v) * (np.float32(1.0) + e))


INV_SQRT2 = np.float32(1 / np.sqrt(2))


def erf_float32(x: np.ndarray) -> np.ndarray:
    """float32 erf of float32 ``x``: the bits of scipy.special.erf(x) (NaN stays NaN, and is the
    canonical NaN)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    unsure = np.empty(x.size, np.uint8)
    _erf_kernel(flat_x, flat_out, unsure, COEFFS)
    if unsure.any():
        j = np.flatnonzero(unsure.view(np.bool_))
        flat_out[j] = scipy_erf(flat_x[j])
    return out


def gelu_erf_float32(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """0.5 * v * (1 + erf(v * float32(1/sqrt(2)))) with v = x (+ bias over the last axis, added
    first, in float32), each operation in float32 as written, erf with scipy.special.erf's
    float32 bits; every NaN the canonical NaN."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    unsure = np.empty(x.size, np.uint8)
    if bias is None:
        _gelu_kernel(flat_x, flat_out, unsure, COEFFS, INV_SQRT2)
    else:
        n = x.shape[-1]
        bias = np.ascontiguousarray(bias, np.float32)
        _bias_gelu_kernel(flat_x.reshape(-1, n), bias, flat_out.reshape(-1, n), unsure.reshape(-1, n),
                          COEFFS, INV_SQRT2)
    if unsure.any():
        j = np.flatnonzero(unsure.view(np.bool_))
        v = flat_x[j] if bias is None else flat_x[j] + bias[j % x.shape[-1]]
        flat_out[j] = (np.float32(0.5) * v) * (np.float32(1.0) + scipy_erf(v * INV_SQRT2))
    return out
