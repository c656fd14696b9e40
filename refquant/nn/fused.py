"""Row-wise float32 ops fused into one Numba pass each: layer norm, masked softmax.

NumPy needs five passes over a [B, H, T, S] score tensor for a masked softmax and six for a
layer norm; these kernels read each row once into cache and finish it there. They define
the same functions as the NumPy expressions in their docstrings, with one stated order of
operations (so results are deterministic and the same on every backend); statistics are
accumulated in float64.
"""
from __future__ import annotations

import math

import numpy as np

from .._numba import numba
from ._split import in_halves

MASKED = np.float32(np.finfo(np.float32).min)


@numba.njit(cache=True, inline="always")
def _rstd(v, c, eps):
    """float32(1 / sqrt(float32(v / c) + eps)): + eps and sqrt in float32, 1 / in float64."""
    return np.float32(1.0 / math.sqrt(np.float32(v / c) + eps))


@numba.njit(cache=True, inline="always")
def layer_norm_row_stats(x, r, eps):
    """(mean, rstd) of row r, in THE defined order: s = sum_j x[r, j] left to right in float64,
    mean = float32(s / C); v = sum_j float64(x[r, j] - mean)^2 left to right in float64;
    rstd = float32(1 / sqrt(float32(v / C) + eps))."""
    c = x.shape[1]
    s = 0.0
    for j in range(c):
        s += x[r, j]
    mean = np.float32(s / c)
    v = 0.0
    for j in range(c):
        d = np.float64(x[r, j] - mean)
        v += d * d
    return mean, _rstd(v, c, eps)


ROW_BLOCK = 4  # rows whose statistics are summed side by side


@numba.njit(cache=True, inline="always")
def layer_norm_block_stats(x, r0, eps, mean, rstd):
    """layer_norm_row_stats of rows r0 .. r0 + ROW_BLOCK - 1 (fewer at the end) into mean[r] and
    rstd[r]. Each row's sums keep THE order above; four rows are summed side by side only so
    that their four float64 dependency chains overlap (one chain waits 4 cycles per add). The
    fused LayerNorm -> quantize kernel (refquant.kernels.cpu) calls this same function."""
    rows, c = x.shape
    if r0 + 4 > rows:
        for r in range(r0, rows):
            mean[r], rstd[r] = layer_norm_row_stats(x, r, eps)
        return
    s0 = s1 = s2 = s3 = 0.0
    for j in range(c):
        s0 += x[r0, j]
        s1 += x[r0 + 1, j]
        s2 += x[r0 + 2, j]
        s3 += x[r0 + 3, j]
    m0, m1, m2, m3 = np.float32(s0 / c), np.float32(s1 / c), np.float32(s2 / c), np.float32(s3 / c)
    v0 = v1 = v2 = v3 = 0.0
    for j in range(c):
        d0 = np.float64(x[r0, j] - m0)
        d1 = np.float64(x[r0 + 1, j] - m1)
        d2 = np.float64(x[r0 + 2, j] - m2)
        d3 = np.float64(x[r0 + 3, j] - m3)
        v0 += d0 * d0
        v1 += d1 * d1
        v2 += d2 * d2
        v3 += d3 * d3
    mean[r0], mean[r0 + 1], mean[r0 + 2], mean[r0 + 3] = m0, m1, m2, m3
    rstd[r0], rstd[r0 + 1] = _rstd(v0, c, eps), _rstd(v1, c, eps)
    rstd[r0 + 2], rstd[r0 + 3] = _rstd(v2, c, eps), _rstd(v3, c, eps)


@numba.njit(cache=True, parallel=True)
def _layer_norm_rows(x, gamma, beta, eps, y, xhat, rstd):
    rows, c = x.shape
    means = np.empty(rows, np.float32)
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        r0 = blk * ROW_BLOCK
        layer_norm_block_stats(x, r0, eps, means, rstd)
        for r in range(r0, min(rows, r0 + ROW_BLOCK)):
            mean, inv = means[r], rstd[r]
            for j in range(c):
                h = (x[r, j] - mean) * inv
                xhat[r, j] = h
                y[r, j] = h * gamma[j] + beta[j]


def layer_norm_rows(x, gamma, beta, eps):
    """Over the last axis: mean = float32(sum(x) / C) and var = float32(sum((x - mean)^2) / C),
    both summed in float64; rstd = float32(1 / sqrt(var + eps)); xhat = (x - mean) * rstd and
    y = xhat * gamma + beta in float32. Returns y, xhat, rstd [..., 1]."""
    x2 = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    xhat = np.empty_like(x2)
    rstd = np.empty(x2.shape[0], np.float32)
    _layer_norm_rows(x2, np.ascontiguousarray(gamma, np.float32), np.ascontiguousarray(beta, np.float32),
                     np.float32(eps), y, xhat, rstd)
    return y.reshape(x.shape), xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,))


@numba.njit(cache=True, parallel=True)
def _residual_layer_norm_rows(x, y, bias, has_bias, gamma, beta, eps, out, xhat, rstd):
    rows, c = x.shape
    means = np.empty(rows, np.float32)
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        r0 = blk * ROW_BLOCK
        r1 = min(rows, r0 + ROW_BLOCK)
        for r in range(r0, r1):  # the residual sum lands in out's rows, then is normalized there
            for j in range(c):
                out[r, j] = x[r, j] + ((y[r, j] + bias[j]) if has_bias else y[r, j])
        layer_norm_block_stats(out, r0, eps, means, rstd)
        for r in range(r0, r1):
            mean, inv = means[r], rstd[r]
            for j in range(c):
                h = (out[r, j] - mean) * inv
                xhat[r, j] = h
                out[r, j] = h * gamma[j] + beta[j]


def residual_layer_norm_rows(x, y, bias, gamma, beta, eps):
    """layer_norm_rows(x + (y + bias)), the sums in float32 in that order (bias may be None:
    x + y); the residual sum is never written out. Returns y, xhat, rstd [..., 1]."""
    shape, c = x.shape, x.shape[-1]
    x2 = np.ascontiguousarray(x, np.float32).reshape(-1, c)
    y2 = np.ascontiguousarray(y, np.float32).reshape(-1, c)
    out, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(x2.shape[0], np.float32)
    b = np.zeros(c, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    _residual_layer_norm_rows(x2, y2, b, bias is not None, np.ascontiguousarray(gamma, np.float32),
                              np.ascontiguousarray(beta, np.float32), np.float32(eps), out, xhat, rstd)
    return out.reshape(shape), xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,))


@numba.njit(cache=True, inline="always")
def rms_norm_row_rstd(x, r, eps):
    """rstd of row r (contract rule 14): s = sum_j float64(x[r, j])^2 left to right in float64,
    then LayerNorm's step float32(1 / sqrt(float32(s / C) + eps))."""
    c = x.shape[1]
    s = 0.0
    for j in range(c):
        d = np.float64(x[r, j])
        s += d * d
    return _rstd(s, c, eps)


@numba.njit(cache=True, parallel=True)
def _rms_norm_rows(x, gamma, eps, y, rstd):
    rows, c = x.shape
    for r in numba.prange(rows):
        inv = rms_norm_row_rstd(x, r, eps)
        rstd[r] = inv
        for j in range(c):
            y[r, j] = gamma[j] * (x[r, j] * inv)


def rms_norm_rows(x, gamma, eps):
    """Over the last axis: rstd = float32(1 / sqrt(float32(sum(x^2) / C) + eps)), the sum of
    squares in float64 left to right; y = gamma * (x * rstd) in float32 (HF's order).
    Returns y, rstd [..., 1]."""
    x2 = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    rstd = np.empty(x2.shape[0], np.float32)
    _rms_norm_rows(x2, np.ascontiguousarray(gamma, np.float32), np.float32(eps), y, rstd)
    return y.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,))


@numba.njit(cache=True, parallel=True)
def _split_heads(y, bias, has_bias, out):
    B, T, C = y.shape
    H, D = out.shape[1], out.shape[3]
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        for h in range(H):
            for d in range(D):
                c = h * D + d
                out[b, h, t, d] = (y[b, t, c] + bias[c]) if has_bias else y[b, t, c]


def split_heads(y, bias, heads):
    """[B, T, H*D] (+ bias, in float32) -> contiguous [B, H, T, D]: the bias add of the GEMM
    before it fused into the copy that attention needs anyway."""
    B, T, C = y.shape
    out = np.empty((B, heads, T, C // heads), np.float32)
    b = np.zeros(C, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    _split_heads(np.ascontiguousarray(y, np.float32), b, bias is not None, out)
    return out


@numba.njit(cache=True, inline="always")
def _hide_and_max(row, key_ok, b, t, shift, causal, has_hidden):
    """Hide masked scores (key_ok[b, s] == 0, or s > t + shift when causal) and return the row's
    max. The max is order-free (exact), so it is taken in 8 independent lanes (no branch
    mispredictions, no single dependency chain)."""
    S = row.shape[0]
    limit = min(S, t + shift + 1) if causal else S
    for s in range(limit, S):
        row[s] = MASKED
    if has_hidden:
        for s in range(limit):
            if key_ok[b, s] == 0:
                row[s] = MASKED
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = MASKED
    S8 = S - S % 8
    for s in range(0, S8, 8):
        m0 = max(m0, row[s])
        m1 = max(m1, row[s + 1])
        m2 = max(m2, row[s + 2])
        m3 = max(m3, row[s + 3])
        m4 = max(m4, row[s + 4])
        m5 = max(m5, row[s + 5])
        m6 = max(m6, row[s + 6])
        m7 = max(m7, row[s + 7])
    for s in range(S8, S):
        m0 = max(m0, row[s])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@numba.njit(cache=True, parallel=True)
def _mask_and_shift_rows(scores, key_ok, causal, has_hidden):
    """Hide masked scores, then subtract each row's max (one pass per row)."""
    B, H, T, S = scores.shape
    shift = S - T
    for flat in numba.prange(B * H * T):
        b = flat // (H * T)
        t = flat % T
        row = scores[b, (flat // T) % H, t]
        m = _hide_and_max(row, key_ok, b, t, shift, causal, has_hidden[b])
        for s in range(S):
            row[s] = row[s] - m


@numba.njit(cache=True, parallel=True)
def _normalize_rows(e):
    """Divide each row by its sum, accumulated left to right in float32. Four rows are summed
    side by side (each in its own order) so that their dependency chains overlap."""
    rows, S = e.shape
    for blk in numba.prange((rows + 3) // 4):
        r0 = 4 * blk
        if r0 + 4 <= rows:
            t0 = t1 = t2 = t3 = np.float32(0.0)
            for s in range(S):
                t0 += e[r0, s]
                t1 += e[r0 + 1, s]
                t2 += e[r0 + 2, s]
                t3 += e[r0 + 3, s]
            for s in range(S):
                e[r0, s] = e[r0, s] / t0
                e[r0 + 1, s] = e[r0 + 1, s] / t1
                e[r0 + 2, s] = e[r0 + 2, s] / t2
                e[r0 + 3, s] = e[r0 + 3, s] / t3
        else:
            for r in range(r0, rows):
                total = np.float32(0.0)
                for s in range(S):
                    total += e[r, s]
                for s in range(S):
                    e[r, s] = e[r, s] / total


def masked_softmax_(scores, key_mask=None, causal=False):
    """In place over the last axis of scores [B, H, T, S]: hidden scores (key_mask[b, s] == 0,
    or s > t + S - T when causal) become float32's most negative value, then
    p = exp(x - max) / sum(exp(x - max)), the sum accumulated left to right in float32.
    exp is NumPy's (vectorized); masking, the max and the normalization are fused passes."""
    B, _, _, S = scores.shape
    ok = np.ones((B, S), np.uint8) if key_mask is None else (np.asarray(key_mask) != 0).astype(np.uint8)
    _mask_and_shift_rows(scores, ok, causal, (ok == 0).any(axis=1).astype(np.uint8))
    in_halves(lambda lo, hi: np.exp(scores[lo:hi], out=scores[lo:hi]), B, scores.size)
    _normalize_rows(scores.reshape(-1, S))
    return scores
