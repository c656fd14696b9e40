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

MASKED = np.float32(np.finfo(np.float32).min)


@numba.njit(cache=True, inline="always")
def layer_norm_row_stats(x, r, eps):
    """(mean, rstd) of row r, in THE defined order (sums left to right in float64); the fused
    LayerNorm -> quantize kernel (refquant.kernels.cpu) calls this same function."""
    c = x.shape[1]
    s = 0.0
    for j in range(c):
        s += x[r, j]
    mean = np.float32(s / c)
    v = 0.0
    for j in range(c):
        d = np.float64(x[r, j] - mean)
        v += d * d
    return mean, np.float32(1.0 / math.sqrt(np.float32(v / c) + eps))


@numba.njit(cache=True, parallel=True)
def _layer_norm_rows(x, gamma, beta, eps, y, xhat, rstd):
    rows, c = x.shape
    for r in numba.prange(rows):
        mean, inv = layer_norm_row_stats(x, r, eps)
        rstd[r] = inv
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
    for r in numba.prange(rows):
        for j in range(c):  # the residual sum lands in out's row, then is normalized there
            out[r, j] = x[r, j] + ((y[r, j] + bias[j]) if has_bias else y[r, j])
        mean, inv = layer_norm_row_stats(out, r, eps)
        rstd[r] = inv
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


@numba.njit(cache=True, parallel=True)
def _mask_and_shift_rows(scores, key_ok, causal):
    """Hide masked scores, then subtract each row's max (one pass per row)."""
    B, H, T, S = scores.shape
    shift = S - T
    for flat in numba.prange(B * H * T):
        b = flat // (H * T)
        t = flat % T
        row = scores[b, (flat // T) % H, t]
        m = MASKED
        for s in range(S):
            if key_ok[b, s] == 0 or (causal and s > t + shift):
                row[s] = MASKED
            if row[s] > m:
                m = row[s]
        for s in range(S):
            row[s] = row[s] - m


@numba.njit(cache=True, parallel=True)
def _normalize_rows(e):
    """Divide each row by its sum, accumulated left to right in float32."""
    rows, S = e.shape
    for r in numba.prange(rows):
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
    _mask_and_shift_rows(scores, ok, causal)
    np.exp(scores, out=scores)
    _normalize_rows(scores.reshape(-1, S))
    return scores
