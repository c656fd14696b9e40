"""The backward halves of refquant.nn.ops (llm.c style): ``op_backward(dout, cache)`` takes the
gradient of the loss with respect to the op's output and the cache its forward returned, and
gives the gradients with respect to its inputs and parameters. Written by hand, no autograd;
each is checked against central finite differences in float64 (tests/test_backward.py).

Shapes follow the forwards: leading dimensions are summed over for parameter gradients.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from .ops import visible_keys


def _sum_leading(g, ndim_param: int):
    return g.reshape(-1, *g.shape[g.ndim - ndim_param:]).sum(axis=0)


def linear_backward(dout, cache):
    """y = x @ w.T + b  ->  (dx = dout @ w, dw = dout^T x, db = sum dout), summed over leading dims."""
    x, w = cache
    d2 = dout.reshape(-1, dout.shape[-1])
    dx = (d2 @ w).reshape(x.shape)
    dw = d2.T @ x.reshape(-1, x.shape[-1])
    return dx, dw, d2.sum(axis=0)


def embedding_backward(dout, cache):
    """Rows picked by ids  ->  dtable: each row's gradients summed (np.add.at: repeated ids add)."""
    ids, table_shape = cache
    dtable = np.zeros(table_shape, dout.dtype)
    np.add.at(dtable, np.asarray(ids).reshape(-1), dout.reshape(-1, table_shape[-1]))
    return dtable


def layer_norm_backward(dout, cache):
    """y = xhat * gamma + beta, xhat = (x - mean) * rstd  ->  (dx, dgamma, dbeta):
    dxhat = dout * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    Also the backward of residual_layer_norm_forward: dx is then the gradient of the sum
    x + (y + b), i.e. of x, of y and (summed over leading dims) of b."""
    xhat, rstd, gamma = cache
    dxhat = dout * gamma
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, _sum_leading(dout * xhat, 1), _sum_leading(dout, 1)


def rms_norm_backward(dout, cache):
    """y = gamma * x * rstd, rstd = (mean(x^2) + eps)^-1/2  ->  (dx, dgamma):
    dx = rstd * g - x * rstd^3 * mean(g * x) with g = dout * gamma."""
    x, rstd, gamma = cache
    g = dout * gamma
    dx = rstd * g - x * rstd ** 3 * (g * x).mean(axis=-1, keepdims=True)
    return dx, _sum_leading(dout * x * rstd, 1)


def gelu_erf_backward(dout, cache):
    """v = x (+ bias); y = 0.5 v (1 + erf(v / sqrt 2))  ->  (dx, dbias or None):
    dy/dv = 0.5 (1 + erf(v / sqrt 2)) + v exp(-v^2 / 2) / sqrt(2 pi)."""
    x, bias = cache
    v = (x if bias is None else x + bias).astype(np.float64)
    dv = (0.5 * (1.0 + erf(v / np.sqrt(2.0))) + v * np.exp(-0.5 * v * v) / np.sqrt(2 * np.pi)) * dout
    dv = dv.astype(dout.dtype)
    return dv, None if bias is None else _sum_leading(dv, 1)


def gelu_tanh_backward(dout, cache):
    """y = 0.5 v (1 + tanh(u)), u = c (v + 0.044715 v^3), c = sqrt(2/pi)  ->  (dx, dbias or None):
    dy/dv = 0.5 (1 + tanh u) + 0.5 v (1 - tanh^2 u) c (1 + 3 * 0.044715 v^2)."""
    x, bias = cache
    v = (x if bias is None else x + bias).astype(np.float64)
    c = np.sqrt(2 / np.pi)
    t = np.tanh(c * (v + 0.044715 * v ** 3))
    dv = ((0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v)) * dout).astype(dout.dtype)
    return dv, None if bias is None else _sum_leading(dv, 1)


def silu_backward(dout, cache):
    """y = x s(x), s the sigmoid  ->  dx = dout * s (1 + x (1 - s))."""
    (x,) = cache
    s = 1.0 / (1.0 + np.exp(-x))
    return dout * s * (1 + x * (1 - s))


def softmax_backward(dout, cache, axis=-1):
    """p = softmax(x)  ->  dx = p * (dout - sum(dout * p))."""
    (p,) = cache
    return p * (dout - (dout * p).sum(axis=axis, keepdims=True))


def rope_backward(dout, cache):
    """y = x cos + rotate_half(x) sin  ->  dx = dout cos + rotate_half^T(dout sin), where
    rotate_half^T([g1, g2]) = [g2, -g1]."""
    cos, sin = cache
    g = dout * sin
    half = dout.shape[-1] // 2
    return dout * cos + np.concatenate([g[..., half:], -g[..., :half]], axis=-1)


def attention_backward(dout, cache):
    """out = P v, P = softmax(hidden(q k^T / sqrt D))  ->  (dq, dk, dv).

    dP = dout v^T; dS = P (dP - sum(dP P)) at visible keys, 0 at hidden ones (their scores were
    replaced by a constant, so nothing flows back, also in fully hidden rows whose P is uniform);
    dq = dS k / sqrt D; dk = dS^T q / sqrt D and dv = P^T dout, summed over the query heads that
    share a key/value head (grouped-query attention)."""
    q, k, v, p, key_mask, causal = cache
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    dp = dout @ vv.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    ds = np.where(visible_keys(B, T, S, key_mask, causal), ds, 0).astype(dout.dtype)
    scale = 1.0 / np.sqrt(D)
    dq = (ds @ kk) * scale
    dk = ((ds.transpose(0, 1, 3, 2) @ q) * scale).reshape(B, Hkv, group, S, D).sum(axis=2)
    dv = (p.transpose(0, 1, 3, 2) @ dout).reshape(B, Hkv, group, S, D).sum(axis=2)
    return dq.astype(dout.dtype), dk.astype(dout.dtype), dv.astype(dout.dtype)
