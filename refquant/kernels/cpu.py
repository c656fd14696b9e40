"""Numba versions of refquant.kernels.reference: the same names and signatures, the same bytes.

Every function here returns exactly the bytes of its namesake in ``reference`` for every
input (tests/test_kernels.py checks it bit for bit): the int32 sums are exact, and the float32
epilogue performs the reference's operations in the reference's order (no fast-math, no FMA
contraction, no reassociation anywhere). Extra keyword ``path=`` (default DEFAULT_PATH) picks
the GEMM; all paths give identical results:

``"amx"``       (default where the CPU has AMX-INT8 and Linux grants the tile state) TDPBUSD
                on 32 x 32 output tiles for M >= AMX_MIN_ROWS; smaller M, and int4 weights,
                run the VNNI kernels.
``"vnni"``      (default with AVX-512 VNNI but no AMX) register-tiled ``vpdpbusd``
                micro-kernels (8 x 48 outputs in 24 zmm accumulators over the whole K).
``"portable"``  plain int32 loops, everywhere.

AMX and VNNI compute int8 x int8 as ``(a + 128) x w - 128 * colsum(w)`` (u8 x s8, exact in
int32: every partial sum is exact modulo 2^32 and the K limit keeps the true sum in int32).
Weights are PREPACKED once (``prepack(w)`` -> PackedWeight, ``prepack_w4`` -> PackedW4); a
plain int8 / pack_w4 array is also accepted and then prepacked on every call. Activations are
packed (shifted to uint8, K padded) inside the GEMM call by the thread that uses them.
``quantize_linear_i8`` quantizes float32 activations there too (per-token dynamic, per-tensor,
or static QParams), so the int8 activations are never written out.

The micro-kernels (refquant.kernels._vnni, LLVM IR through Numba intrinsics) run the epilogue
on the accumulators before they leave the registers (VNNI) or the tile buffer (AMX):
``float32(acc [+ int32 bias]) * (s_a[m] * s_w[n]) [+ bias[n]]``, masked stores at the edges.
The activation (GELU) is a second pass with ``refquant.nn.fast_erf.gelu_erf_float32`` (see
``_activate``). int4 weights stay 4-bit in memory: the VNNI kernel unpacks the nibbles in
registers (``v & 0xf``, ``v >> 4``, offset binary, corrected by -8 * rowsum(a)); the portable
kernel unpacks the ``pack_w4`` bytes.

Threads: each call is cut into ``numba.get_num_threads()`` parts run by refquant.kernels._pool
(the caller runs part 0); see that module for why not ``prange``. Enough rows: each thread
takes its own rows (and packs / quantizes only those); few rows: threads split the columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weights_io.errors import ConfigError, DTypeError, NonFiniteError, OutOfRangeError, ShapeError
from .._numba import numba
from ..floats import canonical_nan_value, float32_from_bits
from ..nn.fast_erf import gelu_erf_float32
from ..nn.fused import layer_norm_row_stats
from ..quant import QParams
from ..spec import QuantSpec
from . import _pool, _vnni as _v, reference as ref
from .reference import (ACTIVATIONS, I8_MAX_K, W4_MAX_K, dequant_step, pack_w4, unpack_w4)

F32 = np.float32

__all__ = ["gemm_i8", "linear_i8", "linear_i8_int32_bias", "pack_w4", "unpack_w4",
           "linear_w4a8_rows", "linear_w4a8_groups", "quantize_rows", "quantize_activation",
           "quantize_dynamic", "quantize_linear_i8", "layer_norm_quantize_per_token", "dequant_step",
           "prepack", "prepack_w4", "PackedWeight", "PackedW4", "HAVE_VNNI", "HAVE_AMX",
           "DEFAULT_PATH", "PATHS", "AMX_MIN_ROWS", "I8_MAX_K", "W4_MAX_K", "ACTIVATIONS"]


HAVE_VNNI = {"avx512f", "avx512bw", "avx512vnni"} <= _v.target_features()
HAVE_AMX = HAVE_VNNI and _v.AMX_COMPILES and _v.request_amx()
_AMX_CFG = _v.amx_config_bytes()
PATHS = ("amx", "vnni", "portable")
DEFAULT_PATH = "amx" if HAVE_AMX else "vnni" if HAVE_VNNI else "portable"
AMX_MIN_ROWS = 32   # below this the "amx" path runs the VNNI kernel (one AMX tile has 32 rows)

NR = 3          # 16-column blocks per micro-kernel tile (48 output columns)
TILE_W = 16 * NR
OUT_INT, OUT_FLOAT, OUT_INT_BIAS = 0, 1, 2


def _path(path) -> str:
    path = DEFAULT_PATH if path is None else path
    if path not in PATHS:
        raise ConfigError(f"path must be one of {PATHS} or None, got {path!r}")
    if path == "vnni" and not HAVE_VNNI:
        raise ConfigError("path 'vnni' needs a CPU with AVX-512 VNNI; this one has none "
                          "(use path='portable' or None)")
    if path == "amx" and not HAVE_AMX:
        raise ConfigError("path 'amx' needs AMX-INT8 and the Linux tile-data permission; this "
                          "process has neither (use path='vnni', 'portable' or None)")
    return path


def _rows_per_block(M: int) -> int:
    """Rows per micro-kernel tile (_vnni.ROWS)."""
    return 8 if M >= 8 else 4 if M >= 2 else 1


def _aligned_empty(n: int, dtype) -> np.ndarray:
    """A 1-D array whose data starts on a 64-byte boundary (one zmm load per cache line)."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + n * dtype.itemsize].view(dtype)


# ---------------------------------------------------------------------------------------
# prepacked weights
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PackedWeight:
    """int8 weights [N, K] prepacked for the AMX / VNNI kernels (build once with ``prepack``).

    data     int8 [NB * Kq * 64], 64-byte aligned: block b (16 output rows), K-step t (4 values)
             holds w[16b + l, 4t + j] at byte 64 * (b * Kq + t) + 4 l + j (zeros past N and K;
             K padded to a multiple of 64 and N to a multiple of 32, so that 16 consecutive
             K-steps of a block are one AMX tile).
    colinit  int32 [NB * 16]: -128 * sum_k w[n, k], the u8-shift correction.
    The original [N, K] array is not kept (the packed copy is the only one a QuantizedModel
    holds); ``unpack()`` gives it back, byte for byte, for the portable path and for saving.
    """
    data: np.ndarray
    colinit: np.ndarray
    N: int
    K: int
    Kq: int
    NB: int

    def unpack(self) -> np.ndarray:
        """The int8 [N, K] array this was packed from."""
        blocks = self.data[:self.NB * self.Kq * 64].reshape(self.NB, self.Kq, 16, 4)
        return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3).reshape(self.NB * 16, self.Kq * 4)
                                    [:self.N, :self.K])


def prepack(w) -> PackedWeight:
    """Pack int8 weights [N, K] once for linear_i8 / gemm_i8 / linear_i8_int32_bias."""
    ref.check_int_matrix(w, np.int8, "prepack: w")
    N, K = w.shape
    w = np.ascontiguousarray(w)
    Kq = -(-K // 64) * 16          # K padded to whole blocks of 64 (one AMX tile)
    NB = -(-N // 32) * 2           # N padded to whole pairs of 16-column blocks
    padded = np.zeros((NB * 16, Kq * 4), np.int8)
    padded[:N, :K] = w
    data = _aligned_empty(max(NB * Kq * 64, 1), np.int8)
    data[:NB * Kq * 64] = padded.reshape(NB, 16, Kq, 4).transpose(0, 2, 1, 3).reshape(-1)
    colinit = np.zeros(NB * 16, np.int32)
    colinit[:N] = -128 * w.astype(np.int64).sum(axis=1)  # |.| <= 2^14 K: fits int32 for K <= I8_MAX_K
    return PackedWeight(data, colinit, N, K, Kq, NB)


@dataclass(frozen=True, eq=False)
class PackedW4:
    """int4 weights prepacked for the VNNI W4A8 micro-kernel (build once with ``prepack_w4``).

    K is cut into G groups of ``group_size`` (one group of K for output-row scales), each
    padded with zeros to Gp = a multiple of 8 values. data uint8 [NB * G * Gp / 8 * 64]:
    block b (16 output rows), K-step pair t (8 values of the padded K) holds ``w + 8`` (0..15)
    of row 16b + l, values 8t + j (low nibble) and 8t + 4 + j (high nibble) at byte
    64 * (b * G * Gp / 8 + t) + 4 l + j.
    The pack_w4 array is not kept; ``values()`` gives the int4 values [N, K] back (the portable
    path packs them again).
    """
    data: np.ndarray
    N: int
    K: int
    group_size: int | None
    G: int
    Gp: int
    NB: int

    def values(self) -> np.ndarray:
        """The int4 values, int8 [N, K] in -8..7, this was packed from."""
        n = self.NB * 16 * self.G * self.Gp  # values, two per byte
        nib = np.empty((n // 2, 2), np.int8)
        nib[:, 0] = self.data[:n // 2] & np.uint8(0xF)
        nib[:, 1] = self.data[:n // 2] >> np.uint8(4)
        nib = nib.reshape(self.NB, self.G * self.Gp // 8, 16, 4, 2).transpose(0, 2, 1, 4, 3)
        padded = nib.reshape(self.NB * 16, self.G, self.Gp)[:self.N] - np.int8(8)
        gs = self.K if self.group_size is None else self.group_size
        out = np.empty((self.N, self.K), np.int8)
        for g in range(self.G):
            lo, hi = g * gs, min(self.K, (g + 1) * gs)
            out[:, lo:hi] = padded[:, g, :hi - lo]
        return out


def prepack_w4(w_packed, K, group_size=None) -> PackedW4:
    """Pack pack_w4 weights once for linear_w4a8_rows (group_size None) or linear_w4a8_groups."""
    K = ref.check_packed_w4(w_packed, K, "prepack_w4")
    w = unpack_w4(w_packed, K).astype(np.int16)
    N = w.shape[0]
    if group_size is None:
        gs, G = max(K, 1), 1
    else:
        G = ref.group_count(K, group_size, "prepack_w4")
        gs = int(group_size)
    Gp = -(-gs // 8) * 8
    NB = -(-N // 16)
    padded = np.full((NB * 16, G, Gp), 8, np.int16)           # zeros, in offset binary
    for g in range(G):
        lo, hi = g * gs, min(K, (g + 1) * gs)
        padded[:N, g, :hi - lo] = w[:, lo:hi] + 8
    nib = padded.reshape(NB, 16, G * Gp // 8, 2, 4).transpose(0, 2, 1, 4, 3).astype(np.uint8)
    data = _aligned_empty(max(nib.size // 2, 1), np.uint8)
    data[:nib.size // 2] = (nib[..., 0] | (nib[..., 1] << np.uint8(4))).reshape(-1)
    return PackedW4(data, N, K, None if group_size is None else gs, G, Gp, NB)


# ---------------------------------------------------------------------------------------
# Numba kernels: epilogue
# ---------------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _store_tile(tile, W, rows, cols, m0, n0, mode, s_a, sa_stride, s_w, bias, has_bias, qbias,
                qb_rows, out_i, out_f, err):
    """Epilogue of one int32 tile (row stride W) into the outputs at [m0, n0], every NaN stored
    as the canonical one (rule 12). (Slices, not offset indexing, so that indices are provably
    >= 0 and the loops vectorize.)"""
    sw = s_w[n0:n0 + cols]
    for r in range(rows):
        m = m0 + r
        t = tile[r * W:r * W + cols]
        if mode == OUT_INT:
            o = out_i[m, n0:n0 + cols]
            for j in range(cols):
                o[j] = t[j]
            continue
        sa = s_a[m * sa_stride]
        o = out_f[m, n0:n0 + cols]
        if mode == OUT_FLOAT:
            if has_bias:
                b = bias[n0:n0 + cols]
                for j in range(cols):
                    o[j] = canonical_nan_value(np.float32(t[j]) * (sa * sw[j]) + b[j])
            else:
                for j in range(cols):
                    o[j] = canonical_nan_value(np.float32(t[j]) * (sa * sw[j]))
        else:
            qb = qbias[m * qb_rows, n0:n0 + cols]
            for j in range(cols):
                v = np.int64(t[j]) + np.int64(qb[j])
                if v < -2147483648 or v > 2147483647:
                    err[0] = 1
                    v = 0
                o[j] = canonical_nan_value(np.float32(np.int32(v)) * (sa * sw[j]))


@numba.njit(cache=True, inline="always")
def _add_group(tile, W, ftile, rows, cols, m0, n0, g, s_a, sa_stride, s_wT):
    """ftile (+)= float32(tile) * (s_a[m] * s_w[n, g]): group g's partial result, in group order
    (s_wT is s_w transposed, [G, N])."""
    sw = s_wT[g, n0:n0 + cols]
    for r in range(rows):
        sa = s_a[(m0 + r) * sa_stride]
        t = tile[r * W:r * W + cols]
        f = ftile[r * W:r * W + cols]
        if g == 0:
            for j in range(cols):
                f[j] = np.float32(t[j]) * (sa * sw[j])
        else:
            for j in range(cols):
                f[j] = f[j] + np.float32(t[j]) * (sa * sw[j])


@numba.njit(cache=True, inline="always")
def _store_ftile(ftile, W, rows, cols, m0, n0, bias, has_bias, out_f):
    """The summed groups of a float32 tile (+ bias) into out_f at [m0, n0], NaN canonical."""
    for r in range(rows):
        f = ftile[r * W:r * W + cols]
        o = out_f[m0 + r, n0:n0 + cols]
        if has_bias:
            b = bias[n0:n0 + cols]
            for j in range(cols):
                o[j] = canonical_nan_value(f[j] + b[j])
        else:
            for j in range(cols):
                o[j] = canonical_nan_value(f[j])


# ---------------------------------------------------------------------------------------
# Numba kernels: portable GEMMs
# ---------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _portable_i8(a, w, mode, s_a, sa_stride, s_w, bias, has_bias, qbias, qb_rows, out_i, out_f,
                 err, part, nparts):
    M, K = a.shape
    N = w.shape[0]
    nblocks = (N + TILE_W - 1) // TILE_W
    for nb in range(part * nblocks // nparts, (part + 1) * nblocks // nparts):
        n0 = nb * TILE_W
        cols = min(TILE_W, N - n0)
        tile = np.empty(4 * TILE_W, np.int32)
        for m0 in range(0, M, 4):
            rows = min(4, M - m0)
            if rows == 4:  # four rows against one weight row: four sums per load of w
                a0, a1, a2, a3 = a[m0], a[m0 + 1], a[m0 + 2], a[m0 + 3]
                for j in range(cols):
                    wr = w[n0 + j]
                    s0 = s1 = s2 = s3 = np.int32(0)
                    for k in range(K):
                        wk = np.int32(wr[k])
                        s0 = np.int32(s0 + np.int32(a0[k]) * wk)
                        s1 = np.int32(s1 + np.int32(a1[k]) * wk)
                        s2 = np.int32(s2 + np.int32(a2[k]) * wk)
                        s3 = np.int32(s3 + np.int32(a3[k]) * wk)
                    tile[j] = s0
                    tile[TILE_W + j] = s1
                    tile[2 * TILE_W + j] = s2
                    tile[3 * TILE_W + j] = s3
            else:
                for r in range(rows):
                    ar = a[m0 + r]
                    for j in range(cols):
                        wr = w[n0 + j]
                        s = np.int32(0)
                        for k in range(K):
                            s = np.int32(s + np.int32(ar[k]) * np.int32(wr[k]))
                        tile[r * TILE_W + j] = s
            _store_tile(tile, TILE_W, rows, cols, m0, n0, mode, s_a, sa_stride, s_w, bias, has_bias,
                        qbias, qb_rows, out_i, out_f, err)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _portable_w4(a, packed, G, gs, s_a, sa_stride, s_wT, bias, has_bias, out_f, part, nparts):
    """int4 nibbles unpacked in the kernel, one output row at a time, groups in order."""
    M, K = a.shape
    N = packed.shape[0]
    nblocks = (N + TILE_W - 1) // TILE_W
    for nb in range(part * nblocks // nparts, (part + 1) * nblocks // nparts):
        n0 = nb * TILE_W
        cols = min(TILE_W, N - n0)
        wrow = np.empty((TILE_W, K + 1), np.int8)
        for j in range(cols):
            for t in range(packed.shape[1]):
                byte = np.int32(packed[n0 + j, t])
                lo = byte & 15
                hi = byte >> 4
                wrow[j, 2 * t] = np.int8(lo - 16 if lo >= 8 else lo)
                wrow[j, 2 * t + 1] = np.int8(hi - 16 if hi >= 8 else hi)
        tile = np.empty(4 * TILE_W, np.int32)
        ftile = np.empty(4 * TILE_W, np.float32)
        for m0 in range(0, M, 4):
            rows = min(4, M - m0)
            for g in range(G):
                k0 = g * gs
                k1 = min(K, k0 + gs)
                for r in range(rows):
                    ar = a[m0 + r, k0:k1]
                    for j in range(cols):
                        wr = wrow[j, k0:k1]
                        s = np.int32(0)
                        for k in range(k1 - k0):
                            s = np.int32(s + np.int32(ar[k]) * np.int32(wr[k]))
                        tile[r * TILE_W + j] = s
                _add_group(tile, TILE_W, ftile, rows, cols, m0, n0, g, s_a, sa_stride, s_wT)
            if G == 0:
                ftile[:] = 0
            _store_ftile(ftile, TILE_W, rows, cols, m0, n0, bias, has_bias, out_f)


# ---------------------------------------------------------------------------------------
# quantizing activations
# ---------------------------------------------------------------------------------------
MAP_DIVIDE, MAP_RECIPROCAL, MAP_MULTIPLIER = 0, 1, 2


@numba.njit(cache=True, inline="always")
def _mul(a, b):
    """a * b, rounded once. refquant.kernels.cuda compiles _params for the GPU with this name
    bound to __nv_fmul_rn, which no compiler contracts into an FMA."""
    return a * b


@numba.njit(cache=True, error_model="numpy")
def _params(amax, fp, ip):
    """(param, step) of one slice from its amax: refquant.quant.qparams_from_minmax's symmetric
    branch in float32, for fp = [amax_floor, d, scale_floor, degenerate_amax, zero_scale,
    fallback multiplier] and ip = [mapping, multiplier_form (1: (1/amax) * d), ...]."""
    amax = max(amax, fp[0])
    d = fp[1]
    scale = max(amax / d, fp[2])
    mapping = ip[0]
    mult = np.float32(0)
    if mapping == MAP_MULTIPLIER:
        mult = _mul(np.float32(1) / amax, d) if ip[1] == 1 else d / amax
    degenerate = amax <= fp[3] or scale == 0
    if mapping == MAP_RECIPROCAL:
        degenerate = degenerate or not math.isfinite(np.float32(1) / scale)
    elif mapping == MAP_MULTIPLIER:
        degenerate = degenerate or (not math.isfinite(mult) and amax > 0)
    if degenerate:
        scale = fp[4]
        mult = fp[5]
    if mapping == MAP_DIVIDE:
        return scale, scale
    if mapping == MAP_RECIPROCAL:
        return np.float32(1) / scale, scale
    return mult, (np.float32(1) if mult == 0 else np.float32(1) / mult)


@numba.njit(cache=True, inline="always")
def _row_amax(xi, m):
    """(max |x[m, :]|, whether the row is all finite) from x's int32 view: for |x| the integer
    order of the bits is the float order, and an integer max reduction vectorizes (a float one
    does not without fast-math). NaN / Inf have bits >= 0x7f800000."""
    mx = np.int32(0)
    for k in range(xi.shape[1]):
        mx = max(mx, np.int32(xi[m, k] & 0x7FFFFFFF))
    return float32_from_bits(mx), mx < 0x7F800000


@numba.njit(cache=True, inline="always")
def _quantize_value(v, p, divide, half_away, qmin, qmax):
    """clip(round(v / p or v * p), qmin, qmax) as an int32, float32 arithmetic."""
    y = v / p if divide else v * p
    if half_away:
        whole = np.trunc(y)
        r = whole
        if abs(y - whole) >= np.float32(0.5):
            r = whole + np.float32(1) if y > 0 else whole - np.float32(1)
    else:
        r = np.rint(y)
    return np.int32(min(max(r, qmin), qmax))


@numba.njit(cache=True, inline="always")
def _quantize_into(x, m, p, divide, half_away, qmin, qmax, dst, off, shift):
    """dst[off + k] = quantize(x[m, k]) + shift for every k (one loop per case, so that each
    vectorizes)."""
    K = x.shape[1]
    d = dst[off:off + K]
    xr = x[m]
    if half_away:
        for k in range(K):
            d[k] = _quantize_value(xr[k], p, divide, True, qmin, qmax) + shift
    elif divide:
        for k in range(K):
            d[k] = np.int32(min(max(np.rint(xr[k] / p), qmin), qmax)) + shift
    else:
        for k in range(K):
            d[k] = np.int32(min(max(np.rint(xr[k] * p), qmin), qmax)) + shift


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _quantize_kernel(x, xi, dynamic, do_quant, check, fp, ip, param, sa_stride, step, amax_out, q,
                     bad, part, nparts):
    """Per row: (dynamic) amax -> param, step; then (do_quant) q = quantize(x[m], param) into
    the flat int8 q; bad[m] = 1 where the row holds NaN / Inf (dynamic or check). xi: x's
    int32 view."""
    M, K = x.shape
    divide = ip[2] == 0
    half_away = ip[3] == 1
    qmin = np.float32(ip[4])
    qmax = np.float32(ip[5])
    for m in range(part * M // nparts, (part + 1) * M // nparts):
        if dynamic or check:
            amax, finite = _row_amax(xi, m)
            if not finite:
                bad[m] = 1
            if dynamic:
                amax_out[m] = amax
                if do_quant:
                    p, s = _params(amax, fp, ip)
                    param[m] = p
                    step[m] = s
        if do_quant:
            _quantize_into(x, m, param[m * sa_stride], divide, half_away, qmin, qmax, q, m * K, 0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _ln_quantize_kernel(x, gamma, beta, eps, do_quant, fp, ip, y, yi, param, step, amax_out, q, bad,
                        part, nparts):
    """layer_norm_rows' arithmetic per row (the same layer_norm_row_stats), then amax and (per token)
    parameters and quantization of the row while it is in cache."""
    rows, c = x.shape
    divide = ip[2] == 0
    half_away = ip[3] == 1
    qmin = np.float32(ip[4])
    qmax = np.float32(ip[5])
    for r in range(part * rows // nparts, (part + 1) * rows // nparts):
        mean, inv = layer_norm_row_stats(x, r, eps)
        for j in range(c):
            h = (x[r, j] - mean) * inv
            y[r, j] = h * gamma[j] + beta[j]
        amax, finite = _row_amax(yi, r)
        if not finite:
            bad[r] = 1
        amax_out[r] = amax
        if do_quant:
            p, st = _params(amax, fp, ip)
            param[r] = p
            step[r] = st
            _quantize_into(y, r, p, divide, half_away, qmin, qmax, q, r * c, 0)


def _int_params(mode, rounding, qmin, qmax, mapping=MAP_DIVIDE, mult_form=0):
    return np.array([mapping, mult_form, 0 if mode == "divide" else 1,
                     1 if rounding == "half_away" else 0, qmin, qmax], np.int64)


_NO_FP = np.zeros(6, F32)


def _spec_params(spec: QuantSpec):
    """(fp, ip) of _params for a supported spec."""
    d = F32(ref_denominator(spec))
    fallback = F32(0) if spec.degenerate_output == "zero" else F32(1) / F32(spec.zero_scale)
    fp = np.array([spec.amax_floor, d, spec.scale_floor, spec.degenerate_amax, spec.zero_scale,
                   fallback], F32)
    mapping = {"divide": MAP_DIVIDE, "reciprocal": MAP_RECIPROCAL, "multiplier": MAP_MULTIPLIER}[spec.mapping]
    ip = _int_params("divide" if spec.mapping == "divide" else "multiply", spec.rounding, spec.qmin,
                     spec.qmax, mapping, 1 if spec.multiplier_form == "reciprocal_times_d" else 0)
    return fp, ip


def ref_denominator(spec: QuantSpec) -> float:
    from ..quant import _denominator
    return _denominator(spec)


def _raise_nonfinite(x2, bad, name):
    m = int(np.flatnonzero(bad)[0])
    k = int(np.flatnonzero(~np.isfinite(x2[m]))[0])
    raise NonFiniteError(f"{name}: element ({m}, {k}) is {x2[m, k]!r}; refquant does not quantize "
                         "NaN or Inf (numeric contract rule 6)")


# ---------------------------------------------------------------------------------------
# Numba kernels: VNNI GEMMs
# ---------------------------------------------------------------------------------------
IN_INT8, IN_FLOAT, IN_DYNAMIC = 0, 1, 2   # A given as int8 / float32 with given params / per-token


def _work_grid(M: int, MR: int, nchunks: int):
    """(row parts, column parts), one part per thread. Enough rows: each thread packs and
    multiplies its own rows against all of B (no shared A, nothing to wait for); few rows
    (decode): threads split the columns of B and each packs all of A."""
    nt = _pool.threads()
    nmb = -(-M // MR)
    if nmb >= 4 * nt:
        return nt, 1
    return 1, max(1, min(nt, nchunks))


if HAVE_VNNI:
    @numba.njit(cache=True, inline="always")
    def _uk_i8_int(MR, nr, A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
            ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows,
            has_qb, err, ftile, first):
        if MR == 8:
            if nr == 3:
                _v.I8_INT_8x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.I8_INT_8x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.I8_INT_8x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        elif MR == 4:
            if nr == 3:
                _v.I8_INT_4x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.I8_INT_4x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.I8_INT_4x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        else:
            if nr == 3:
                _v.I8_INT_1x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.I8_INT_1x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.I8_INT_1x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)

    @numba.njit(cache=True, inline="always")
    def _uk_i8_float(MR, nr, A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
            ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows,
            has_qb, err, ftile, first):
        if MR == 8:
            if nr == 3:
                _v.I8_FLOAT_8x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.I8_FLOAT_8x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.I8_FLOAT_8x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        elif MR == 4:
            if nr == 3:
                _v.I8_FLOAT_4x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.I8_FLOAT_4x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.I8_FLOAT_4x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        else:
            if nr == 3:
                _v.I8_FLOAT_1x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.I8_FLOAT_1x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.I8_FLOAT_1x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)

    @numba.njit(cache=True, inline="always")
    def _uk_w4_float(MR, nr, A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
            ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows,
            has_qb, err, ftile, first):
        if MR == 8:
            if nr == 3:
                _v.W4_FLOAT_8x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.W4_FLOAT_8x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.W4_FLOAT_8x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        elif MR == 4:
            if nr == 3:
                _v.W4_FLOAT_4x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.W4_FLOAT_4x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.W4_FLOAT_4x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        else:
            if nr == 3:
                _v.W4_FLOAT_1x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.W4_FLOAT_1x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.W4_FLOAT_1x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)

    @numba.njit(cache=True, inline="always")
    def _uk_w4_group(MR, nr, A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
            ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows,
            has_qb, err, ftile, first):
        if MR == 8:
            if nr == 3:
                _v.W4_GROUP_8x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.W4_GROUP_8x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.W4_GROUP_8x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        elif MR == 4:
            if nr == 3:
                _v.W4_GROUP_4x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.W4_GROUP_4x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.W4_GROUP_4x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
        else:
            if nr == 3:
                _v.W4_GROUP_1x3(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            elif nr == 2:
                _v.W4_GROUP_1x2(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)
            else:
                _v.W4_GROUP_1x1(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                    ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias,
                    qb, qb_rows, has_qb, err, ftile, first)

    @numba.njit(cache=True, inline="always")
    def _work_item(item, R, Cn, nmb, nchunks):
        ri = item // Cn
        ci = item % Cn
        return (ri * nmb // R, (ri + 1) * nmb // R, ci * nchunks // Cn, (ci + 1) * nchunks // Cn)

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _vnni_i8(in_mode, a, x, xi, fp, ip, param, pstride, s_a, sa_stride, bad, use_amx, cfg, MR,
                 R, Cn, Bpk, colinit, Kq, NB, N, mode, s_w, bias, has_bias, qb, qb_rows, has_qb,
                 out_i, out_f, err, item, nparts):
        """Work item ``item`` of R x Cn (row parts x column parts): pack this item's rows of A as
        uint8 a + 128 (quantizing them first for in_mode IN_FLOAT / IN_DYNAMIC, which also
        writes param[m] and s_a[m]), then run the micro-kernel (with its epilogue) over this
        item's column chunks: VNNI tiles of MR x 48 (rows in groups of 8 blocks, so that a B
        panel of K x 48 bytes is reused from L1 across a group), or with use_amx AMX tiles of
        32 x 32 (MR = 32)."""
        M = a.shape[0] if in_mode == IN_INT8 else x.shape[0]
        K = a.shape[1] if in_mode == IN_INT8 else x.shape[1]
        Kp = Kq * 4
        lda = Kp + 64 if Kp % 1024 == 0 else Kp  # rows 2^k bytes apart would share L1 sets
        CB = 2 if use_amx else NR  # 16-column blocks per chunk
        nchunks = (NB + CB - 1) // CB
        nmb = (M + MR - 1) // MR
        mb0, mb1, ch0, ch1 = _work_item(item, R, Cn, nmb, nchunks)
        divide = ip[2] == 0
        half_away = ip[3] == 1
        qmin = np.float32(ip[4])
        qmax = np.float32(ip[5])
        m0 = mb0 * MR
        rows_p = (mb1 - mb0) * MR
        A = np.empty(rows_p * lda, np.uint8)
        for r in range(rows_p):
            m = m0 + r
            base = r * lda
            if m < M:
                if in_mode == IN_INT8:
                    d = A[base:base + K]
                    ar = a[m]
                    for k in range(K):
                        d[k] = np.uint8(ar[k]) ^ np.uint8(128)
                else:
                    amax, finite = _row_amax(xi, m)
                    if not finite:
                        bad[m] = 1
                    if in_mode == IN_DYNAMIC:
                        p, st = _params(amax, fp, ip)
                        param[m] = p
                        s_a[m] = st
                    else:
                        p = param[m * pstride]
                    _quantize_into(x, m, p, divide, half_away, qmin, qmax, A, base, 128)
                A[base + K:base + lda] = 128
            else:
                A[base:base + lda] = 128
        if use_amx:
            cbuf = np.empty(_v.AMX_ROWS * _v.AMX_COLS, np.int32)
            _v.amx_config(cfg)
            for ch in range(ch0, ch1):
                nb0 = 2 * ch
                cols = min(32, N - 16 * nb0)
                for mb in range(mb0, mb1):
                    rows = min(32, M - mb * 32)
                    if mode == OUT_INT:
                        _v.AMX_INT(A, (mb - mb0) * 32 * lda, lda, 64, Bpk, nb0 * Kq * 64, Kq * 64, Kq // 16,
                                   colinit, nb0 * 16, cbuf, out_i, out_f, mb * 32, 16 * nb0, rows,
                                   cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows, has_qb, err)
                    else:
                        _v.AMX_FLOAT(A, (mb - mb0) * 32 * lda, lda, 64, Bpk, nb0 * Kq * 64, Kq * 64,
                                     Kq // 16, colinit, nb0 * 16, cbuf, out_i, out_f, mb * 32,
                                     16 * nb0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb,
                                     qb_rows, has_qb, err)
            _v.amx_release()
            return
        rowinit = np.zeros(8, np.int32)
        ftile = np.empty(1, np.float32)
        for g0 in range(mb0, mb1, 8):
            g1 = min(mb1, g0 + 8)
            for ch in range(ch0, ch1):
                nb0 = ch * NR
                nr = min(NR, NB - nb0)
                cols = min(16 * nr, N - 16 * nb0)
                if cols <= 0:  # a padding block of B (N is padded to pairs of blocks)
                    continue
                for mb in range(g0, g1):
                    rows = min(MR, M - mb * MR)
                    if mode == OUT_INT:
                        _uk_i8_int(MR, nr, A, (mb - mb0) * MR * lda, lda, Bpk, nb0 * Kq * 64, Kq * 64,
                                   Kq, colinit, nb0 * 16, rowinit, 0, out_i, out_f, mb * MR, 16 * nb0,
                                   rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows,
                                   has_qb, err, ftile, 0)
                    else:
                        _uk_i8_float(MR, nr, A, (mb - mb0) * MR * lda, lda, Bpk, nb0 * Kq * 64,
                                     Kq * 64, Kq, colinit, nb0 * 16, rowinit, 0, out_i, out_f,
                                     mb * MR, 16 * nb0, rows, cols, s_a, sa_stride, s_w, bias,
                                     has_bias, qb, qb_rows, has_qb, err, ftile, 0)

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _vnni_w4(a, MR, R, Cn, Bpk, G, gs, Gp, NB, N, s_a, sa_stride, s_wT, bias, has_bias, out_f,
                 item, nparts):
        """W4A8, work split as _vnni_i8. The item packs its rows of A as int8 with every group
        of gs values padded with zeros to Gp, and -8 * (row sum per group) for the
        accumulators' start. One group (output-row scales): the micro-kernel's float epilogue
        writes the output. Several: each group's scaled tile is added, in group order, into a
        float32 tile, which then gets the bias and is copied out."""
        M, K = a.shape
        Lp = G * Gp
        nchunks = (NB + NR - 1) // NR
        nmb = (M + MR - 1) // MR
        mb0, mb1, ch0, ch1 = _work_item(item, R, Cn, nmb, nchunks)
        m0 = mb0 * MR
        rows_p = (mb1 - mb0) * MR
        A = np.zeros(rows_p * Lp, np.int8)
        rowinit = np.zeros(G * rows_p, np.int32)
        for r in range(rows_p):
            m = m0 + r
            if m < M:
                for g in range(G):
                    k0 = g * gs
                    n_g = min(K, k0 + gs) - k0
                    base = r * Lp + g * Gp
                    d = A[base:base + n_g]
                    ar = a[m, k0:k0 + n_g]
                    s = 0
                    for kk in range(n_g):
                        d[kk] = ar[kk]
                        s += np.int32(ar[kk])
                    rowinit[g * rows_p + r] = np.int32(-8 * s)
        colinit = np.zeros(TILE_W, np.int32)
        ftile = np.empty(8 * TILE_W, np.float32)
        qb = np.zeros((1, 1), np.int32)
        err = np.zeros(1, np.uint8)
        out_i = np.zeros((1, 1), np.int32)
        for g0 in range(mb0, mb1, 8):
            g1 = min(mb1, g0 + 8)
            for ch in range(ch0, ch1):
                nb0 = ch * NR
                nr = min(NR, NB - nb0)
                cols = min(16 * nr, N - 16 * nb0)
                n0 = 16 * nb0
                for mb in range(g0, g1):
                    rows = min(MR, M - mb * MR)
                    if G == 1:
                        _uk_w4_float(MR, nr, A, (mb - mb0) * MR * Lp, Lp, Bpk, nb0 * Lp * 8, Lp * 8,
                                     Gp // 8, colinit, 0, rowinit, (mb - mb0) * MR, out_i, out_f,
                                     mb * MR, n0, rows, cols, s_a, sa_stride, s_wT[0], bias,
                                     has_bias, qb, 0, 0, err, ftile, 0)
                        continue
                    for g in range(G):
                        _uk_w4_group(MR, nr, A, (mb - mb0) * MR * Lp + g * Gp, Lp, Bpk,
                                     (nb0 * Lp + g * Gp) * 8, Lp * 8, Gp // 8, colinit, 0, rowinit,
                                     g * rows_p + (mb - mb0) * MR, out_i, out_f, mb * MR, n0, rows,
                                     cols, s_a, sa_stride, s_wT[g], bias, has_bias, qb, 0, 0, err,
                                     ftile, g == 0)
                    _store_ftile(ftile, TILE_W, rows, cols, mb * MR, n0, bias, has_bias, out_f)


# ---------------------------------------------------------------------------------------
# GEMM front ends
# ---------------------------------------------------------------------------------------
_DUMMY_F1 = np.zeros(1, F32)
_DUMMY_I2 = np.zeros((1, 1), np.int32)
_DUMMY_I8 = np.zeros((1, 1), np.int8)
_DUMMY_F2 = np.zeros((1, 1), F32)
_DUMMY_U1 = np.zeros(1, np.uint8)
_DUMMY_IP = np.zeros(6, np.int64)
_DUMMY_I1 = np.zeros(1, np.int8)


def _as_weight(w, what):
    """(int8 w [N, K] or None, PackedWeight or None, (N, K)): one of the first two is set."""
    if isinstance(w, PackedWeight):
        return None, w, (w.N, w.K)
    ref.check_int_matrix(w, np.int8, f"{what}: w")
    return w, None, w.shape


def _check_a(a, K, what):
    ref.check_int_matrix(a, np.int8, f"{what}: a")
    if a.shape[1] != K:
        raise ShapeError(f"{what}: a is [M, K] = {list(a.shape)} and the weights have K = {K}: "
                         "K differs")


def _scales(s_a, M):
    """(float32 1-D array, stride): [M] per row (stride 1) or one value for all rows (stride 0)."""
    s_a = np.asarray(s_a, F32)
    return (s_a.reshape(1).copy(), 0) if s_a.ndim == 0 else (np.ascontiguousarray(s_a), 1)


def _activate(y, activation):
    """The activation, as a second parallel pass: refquant.nn.fast_erf's GELU costs ~3.5 ns per
    element at 2 threads, more than the GEMM feeding it, so fusing it into the tile epilogue
    would save only one pass over y (and it doubled the drivers' compile time)."""
    return gelu_erf_float32(y) if activation == "gelu_erf" else y


class _Epilogue:
    """The float32 epilogue's arguments, checked, as the kernels take them."""

    def __init__(self, what, mode, M, N, s_a=None, s_w=None, bias=None, activation=None,
                 q_bias=None):
        self.mode = mode
        self.activation = activation
        if mode == OUT_INT:
            self.s_a, self.sa_stride, self.s_w, self.bias = _DUMMY_F1, 0, _DUMMY_F1, _DUMMY_F1
            self.has_bias = 0
        else:
            if s_a is None:  # quantize_linear: s_a comes from the quantizer
                s_a = np.zeros(M, F32)
            s_a, s_w, bias = ref.check_epilogue(M, N, s_a, s_w, bias, activation, what)
            self.s_a, self.sa_stride = _scales(s_a, M)
            self.s_w = np.ascontiguousarray(s_w)
            self.bias = _DUMMY_F1 if bias is None else np.ascontiguousarray(bias)
            self.has_bias = int(bias is not None)
        self.qb, self.qb_rows = _DUMMY_I2, 0
        if mode == OUT_INT_BIAS:
            q_bias = ref.check_q_bias(q_bias, M, N, what)
            self.q_bias = q_bias
            if q_bias.ndim == 1:
                self.qb, self.qb_rows = np.ascontiguousarray(q_bias.reshape(1, N)), 0
            else:
                self.qb, self.qb_rows = np.ascontiguousarray(q_bias), 1
        self.out_i = np.empty((M, N), np.int32) if mode == OUT_INT else _DUMMY_I2
        self.out_f = np.empty((M, N), F32) if mode != OUT_INT else _DUMMY_F2
        self.err = np.zeros(1, np.uint8)


def _run_vnni_i8(ep, packed, M, N, path, in_mode, a=_DUMMY_I8, x=_DUMMY_F2, fp=_NO_FP, ip=_DUMMY_IP,
                 param=_DUMMY_F1, pstride=0, bad=_DUMMY_U1):
    """The VNNI (or AMX: path "amx" and at least AMX_MIN_ROWS rows) GEMM with its epilogue."""
    xi = x.view(np.int32)
    use_amx = path == "amx" and M >= AMX_MIN_ROWS
    MR = 32 if use_amx else _rows_per_block(M)
    R, Cn = _work_grid(M, MR, -(-packed.NB // (2 if use_amx else NR)))
    mode = OUT_INT if ep.mode == OUT_INT else OUT_FLOAT  # the float epilogue adds int32 biases
    _pool.run(_vnni_i8, R * Cn, in_mode, a, x, xi, fp, ip, param, pstride, ep.s_a, ep.sa_stride, bad,
              use_amx, _AMX_CFG, MR, R, Cn, packed.data, packed.colinit, packed.Kq, packed.NB, N, mode,
              ep.s_w, ep.bias, ep.has_bias, ep.qb, ep.qb_rows, int(ep.mode == OUT_INT_BIAS), ep.out_i,
              ep.out_f, ep.err)


def _run_portable_i8(ep, a, w):
    _pool.run(_portable_i8, _pool.threads(), np.ascontiguousarray(a), np.ascontiguousarray(w),
              ep.mode, ep.s_a, ep.sa_stride, ep.s_w, ep.bias, ep.has_bias, ep.qb, ep.qb_rows, ep.out_i,
              ep.out_f, ep.err)


def _result(ep, what, a, w, packed):
    if ep.mode == OUT_INT:
        return ep.out_i
    if ep.err[0]:
        total = ref.gemm_i8(a, packed.unpack() if w is None else w).astype(np.int64) + ep.q_bias.astype(np.int64)
        raise OutOfRangeError(ref._bias_overflow_message(np.broadcast_to(total, ep.out_f.shape), what))
    return _activate(ep.out_f, ep.activation)


def _gemm(what, a, w, path, mode, s_a=None, s_w=None, bias=None, activation=None, q_bias=None):
    w_arr, packed, (N, K) = _as_weight(w, what)
    _check_a(a, K, what)
    M = a.shape[0]
    ref.check_k(M, K, N, I8_MAX_K, what)
    path = _path(path)
    ep = _Epilogue(what, mode, M, N, s_a, s_w, bias, activation, q_bias)
    if M and N:
        if path == "portable" or K == 0:
            _run_portable_i8(ep, a, packed.unpack() if w_arr is None else w_arr)
        else:
            _run_vnni_i8(ep, packed if packed is not None else prepack(w_arr), M, N, path, IN_INT8,
                         a=np.ascontiguousarray(a))
    return _result(ep, what, a, w_arr, packed)


def gemm_i8(a, w, path=None) -> np.ndarray:
    """reference.gemm_i8 (int32 [M, N] = a @ w.T, exact); w int8 [N, K] or a PackedWeight."""
    return _gemm("gemm_i8", a, w, path, OUT_INT)


def linear_i8(a, s_a, w, s_w, bias=None, activation=None, path=None) -> np.ndarray:
    """reference.linear_i8, the epilogue fused into the GEMM; w int8 [N, K] or a PackedWeight."""
    return _gemm("linear_i8", a, w, path, OUT_FLOAT, s_a, s_w, bias, activation)


def linear_i8_int32_bias(a, s_a, w, s_w, q_bias, path=None) -> np.ndarray:
    """reference.linear_i8_int32_bias (int32 bias added in the epilogue, OutOfRangeError when a
    sum leaves int32); w int8 [N, K] or a PackedWeight."""
    return _gemm("linear_i8_int32_bias", a, w, path, OUT_INT_BIAS, s_a, s_w, q_bias=q_bias)


def quantize_linear_i8(x, quant, w, s_w, bias=None, activation=None, path=None) -> np.ndarray:
    """reference.quantize_linear_i8: float32 x [M, K] quantized (a dynamic QuantSpec, per token or
    per tensor, or static QParams) and fed to linear_i8. On the VNNI path the quantization runs
    inside the GEMM's single parallel launch (each thread quantizes the rows it multiplies), so
    the int8 activations are never written out (per-tensor dynamic specs take one more pass
    for the amax)."""
    what = "quantize_linear_i8"
    w_arr, packed, (N, K_w) = _as_weight(w, what)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise DTypeError(f"{what}: x must be a float32 array [M, K], got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    M, K = x.shape
    if K_w != K:
        raise ShapeError(f"{what}: x is [M, K] = {list(x.shape)} and w is [N, K] = "
                         f"{[N, K_w]}: K differs")
    ref.check_k(M, K, N, I8_MAX_K, what)
    path = _path(path)
    if path == "portable" or K == 0 or not (M and N):
        q, s_a = quantize_dynamic(x, quant) if isinstance(quant, QuantSpec) else \
            quantize_activation(x, quant)
        return linear_i8(q, s_a, w_arr if packed is None else packed, s_w, bias, activation, path)
    x = np.ascontiguousarray(x)
    bad = np.zeros(M, np.uint8)
    if isinstance(quant, QuantSpec):
        ref.check_activation_spec(quant, what)
        fp, ip = _spec_params(quant)
        if quant.granularity == "token":
            ep = _Epilogue(what, OUT_FLOAT, M, N, None, s_w, bias, activation)
            ep.s_a, ep.sa_stride = np.empty(M, F32), 1
            param = np.empty(M, F32)
            _run_vnni_i8(ep, packed or prepack(w_arr), M, N, path, IN_DYNAMIC, x=x, fp=fp, ip=ip,
                         param=param, pstride=1, bad=bad)
        else:
            amax = np.zeros(M, F32)
            dummy = np.empty(1, F32)
            _pool.run(_quantize_kernel, _pool.threads(), x, x.view(np.int32), True, False, False, fp,
                      ip, dummy, 0, dummy, amax, _DUMMY_I1, bad)
            if bad.any():
                _raise_nonfinite(x, bad, f"{what}: x")
            p, st = _params(F32(amax.max()), fp, ip)
            ep = _Epilogue(what, OUT_FLOAT, M, N, np.float32(st), s_w, bias, activation)
            _run_vnni_i8(ep, packed or prepack(w_arr), M, N, path, IN_FLOAT, x=x, ip=ip,
                         param=np.array([p], F32), pstride=0, bad=bad)
    else:
        mode, param, rounding = ref.activation_params(quant, what)
        ref.as_rows(x, quant, what)
        step = dequant_step(quant)
        ep = _Epilogue(what, OUT_FLOAT, M, N, step.reshape(-1) if step.ndim else step, s_w, bias,
                       activation)
        p, pstride = _scales(param.reshape(-1) if param.ndim else param, M)
        ip = _int_params(mode, rounding, quant.spec.qmin, quant.spec.qmax)
        _run_vnni_i8(ep, packed or prepack(w_arr), M, N, path, IN_FLOAT, x=x, ip=ip, param=p,
                     pstride=pstride, bad=bad)
    if bad.any():
        _raise_nonfinite(x, bad, f"{what}: x")
    return _activate(ep.out_f, activation)


def _w4(what, a, s_a, w_packed, K, s_w, group_size, bias, activation, path):
    prepacked = w_packed if isinstance(w_packed, PackedW4) else None
    M, K, N, G, s_a, s_w, bias = ref.check_w4a8_call(what, a, s_a, w_packed, K, s_w, group_size, bias,
                                                     activation)
    if group_size is None:
        gs = K
        s_wT = np.ascontiguousarray(s_w.reshape(1, N))
    else:
        gs = int(group_size)
        s_wT = np.ascontiguousarray(s_w.T)
    path = _path(path)
    s_a_arr, sa_stride = _scales(s_a, M)
    bias_arr = _DUMMY_F1 if bias is None else np.ascontiguousarray(bias)
    out_f = np.empty((M, N), F32)
    if M and N:
        if path == "portable" or K == 0 or G == 0:
            if prepacked is not None:
                w_packed = ref.pack_w4(prepacked.values())
            _pool.run(_portable_w4, _pool.threads(), np.ascontiguousarray(a),
                      np.ascontiguousarray(w_packed), G, gs, s_a_arr, sa_stride, s_wT, bias_arr,
                      int(bias is not None), out_f)
        else:
            if prepacked is None:
                prepacked = prepack_w4(w_packed, K, group_size)
            MR = _rows_per_block(M)
            R, Cn = _work_grid(M, MR, -(-prepacked.NB // NR))
            _pool.run(_vnni_w4, R * Cn, np.ascontiguousarray(a), MR, R, Cn, prepacked.data, G, gs,
                      prepacked.Gp, prepacked.NB, N, s_a_arr, sa_stride, s_wT, bias_arr,
                      int(bias is not None), out_f)
    return _activate(out_f, activation)


def linear_w4a8_rows(a, s_a, w_packed, K, s_w_rows, bias=None, activation=None, path=None):
    """reference.linear_w4a8_rows; w_packed is pack_w4's uint8 [N, ceil(K/2)] or a PackedW4
    from prepack_w4(w_packed, K)."""
    return _w4("linear_w4a8_rows", a, s_a, w_packed, K, s_w_rows, None, bias, activation, path)


def linear_w4a8_groups(a, s_a, w_packed, K, s_w_groups, group_size, bias=None, activation=None,
                       path=None):
    """reference.linear_w4a8_groups; w_packed is pack_w4's uint8 [N, ceil(K/2)] or a PackedW4
    from prepack_w4(w_packed, K, group_size)."""
    return _w4("linear_w4a8_groups", a, s_a, w_packed, K, s_w_groups, group_size, bias, activation,
               path)


# ---------------------------------------------------------------------------------------
# quantizing activations: front ends
# ---------------------------------------------------------------------------------------
def quantize_rows(x, param, mode, qmin, qmax, rounding="half_even") -> np.ndarray:
    """reference.quantize_rows in one parallel pass."""
    x = ref.check_rows(x, "quantize_rows: x")
    param = ref.check_row_param(param, x.shape[0], mode, qmin, qmax, rounding, "quantize_rows")
    return _quantize_given(np.ascontiguousarray(x), param, mode, int(qmin), int(qmax), rounding,
                           "quantize_rows: x")


def _quantize_given(x2, param, mode, qmin, qmax, rounding, name):
    M = x2.shape[0]
    p, stride = _scales(param, M)
    q = np.empty(x2.shape, np.int8)
    bad = np.zeros(M, np.uint8)
    dummy = np.empty(1, F32)
    _pool.run(_quantize_kernel, _pool.threads(), x2, x2.view(np.int32), False, True, True, _NO_FP,
              _int_params(mode, rounding, qmin, qmax), p, stride, dummy, dummy, q.reshape(-1), bad)
    if bad.any():
        _raise_nonfinite(x2, bad, name)
    return q


def quantize_activation(x, qp: QParams):
    """reference.quantize_activation: (q, s_a), q = refquant.quant.quantize(x, qp) bit for bit."""
    mode, param, rounding = ref.activation_params(qp)
    rows = ref.as_rows(x, qp, "quantize_activation")
    spec = qp.spec
    p = param.reshape(-1) if spec.granularity == "token" else param.reshape(())
    q = _quantize_given(rows, p, mode, spec.qmin, spec.qmax, rounding,
                        "quantize_activation: x")
    return q.reshape(x.shape), dequant_step(qp)


def _dynamic_rows(x2, spec, name, y=None, ln=None):
    """Dynamic quantization of rows x2 (or of LayerNorm(x2) into y when ln = (gamma, beta, eps))."""
    M = x2.shape[0]
    fp, ip = _spec_params(spec)
    token = spec.granularity == "token"
    q = np.empty(x2.shape, np.int8)
    param = np.empty(max(M, 1), F32)
    step = np.empty(max(M, 1), F32)
    amax = np.zeros(max(M, 1), F32)
    bad = np.zeros(M, np.uint8)
    if ln is None:
        _pool.run(_quantize_kernel, _pool.threads(), x2, x2.view(np.int32), True, token, False, fp, ip,
                  param, 1, step, amax, q.reshape(-1), bad)
        src = x2
    else:
        _pool.run(_ln_quantize_kernel, _pool.threads(), x2, ln[0], ln[1], ln[2], token, fp, ip, y,
                  y.view(np.int32), param, step, amax, q.reshape(-1), bad)
        src = y
    if bad.any():
        _raise_nonfinite(src, bad, name)
    if token:
        return q, step[:M]
    p, s = _params(F32(amax[:M].max()) if M else F32(0), fp, ip)
    p = np.array([p], F32)
    _pool.run(_quantize_kernel, _pool.threads(), src, src.view(np.int32), False, True, False, fp, ip, p,
              0, step, amax, q.reshape(-1), bad)
    return q, np.array(s, F32)


def quantize_dynamic(x, spec: QuantSpec):
    """reference.quantize_dynamic (choose_qparams + quantize_activation) in one pass per row
    (per token) or two (per tensor: the amax first)."""
    ref.check_activation_spec(spec, "quantize_dynamic")
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise DTypeError(f"quantize_dynamic: expected a float array, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 1:
        raise ShapeError("quantize_dynamic: expected at least 1 dimension")
    x2 = np.ascontiguousarray(x.astype(F32, copy=False).reshape(ref.rows_of(x.shape), x.shape[-1]))
    q, s = _dynamic_rows(x2, spec, "quantize_dynamic: x")
    return q.reshape(x.shape), (s.reshape(x.shape[:-1]) if spec.granularity == "token" else s)


def layer_norm_quantize_per_token(x, gamma, beta, eps, spec: QuantSpec):
    """reference.layer_norm_quantize_per_token: (y, q, s_a), LayerNorm and per-token
    quantization fused in one pass per row (per-tensor specs: a second pass)."""
    ref.check_activation_spec(spec, "layer_norm_quantize_per_token")
    ref.check_layer_norm_args(x, gamma, beta, "layer_norm_quantize_per_token")
    x2 = np.ascontiguousarray(x.reshape(ref.rows_of(x.shape), x.shape[-1]))
    y = np.empty_like(x2)
    q, s = _dynamic_rows(x2, spec, "quantize_dynamic: x", y,
                         (np.ascontiguousarray(gamma), np.ascontiguousarray(beta), F32(eps)))
    s = s.reshape(x.shape[:-1]) if spec.granularity == "token" else s
    return y.reshape(x.shape), q.reshape(x.shape), s
