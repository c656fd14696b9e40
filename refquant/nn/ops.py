"""The float32 ops, forward halves. Shapes in trailing comments; B batch, T tokens, C channels,
H heads, Hkv key/value heads, D head size, V vocabulary."""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from ..floats import canonical_nan
from ..kernels.gemm_f32 import attention_context, attention_scores, matmul_f32
from .fast_erf import gelu_erf_float32
from .fused import layer_norm_rows, masked_softmax_, residual_layer_norm_rows, rms_norm_rows

F32 = np.float32


def linear_forward(x, w, b=None, packed=None):
    """y = x @ w.T + b. w is [out, in] (every family; GPT-2's Conv1D is transposed at load).

    float32: contract rule 13, each element the fma chain over the inputs in order, then
    ``+ b`` (refquant.kernels.gemm_f32.matmul_f32; ``packed``: w prepacked by
    ``prepack_f32``, which a model builds once per weight). float64 (gradient checks): NumPy."""
    bias = None if b is None else np.asarray(b, F32)
    if x.dtype == F32 and packed is not None:
        return matmul_f32(x, packed, bias), (x, w)
    wa = np.asarray(w)  # (a DequantizedRows table: dequantized once)
    if x.dtype == F32 and wa.dtype == F32:
        return matmul_f32(x, wa, bias), (x, w)
    y = x @ wa.T  # [..., in] -> [..., out]
    if b is not None:
        y += b
    return y, (x, w)


def embedding_forward(ids, table):
    """Rows of ``table`` picked by integer ``ids``."""
    return table[ids], (ids, table.shape)  # [B, T] -> [B, T, C]


def layer_norm_forward(x, gamma, beta, eps):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis; var is the biased one.
    One fused pass per row, statistics summed in float64 (refquant.nn.fused.layer_norm_rows).
    float64 input (gradient checks) takes the NumPy expression in float64."""
    if x.dtype == np.float64:
        return _layer_norm64(x, gamma, beta, eps)
    y, xhat, rstd = layer_norm_rows(x, gamma, beta, eps)
    return y, (xhat, rstd, gamma)  # [..., C] -> [..., C]


def _layer_norm64(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    return xhat * gamma + beta, (xhat, rstd, gamma)


def residual_layer_norm_forward(x, y, bias, gamma, beta, eps):
    """layer_norm(x + (y + bias)): a post-LN block's residual add, with the bias of the GEMM
    that made y fused in (bias None: x + y). Same bits as the unfused ops, one fused pass per
    row (refquant.nn.fused.residual_layer_norm_rows); the cache is layer_norm_forward's."""
    if x.dtype == np.float64:
        return _layer_norm64(x + (y if bias is None else y + bias), gamma, beta, eps)
    out, xhat, rstd = residual_layer_norm_rows(x, y, bias, gamma, beta, eps)
    return out, (xhat, rstd, gamma)  # [..., C] -> [..., C]


def rms_norm_forward(x, gamma, eps):
    """x / sqrt(mean(x^2) + eps) * gamma over the last axis (Llama's RMSNorm), in contract
    rule 14's order (refquant.nn.fused.rms_norm_rows). float64 input (gradient checks) takes
    the NumPy expression in float64."""
    if x.dtype == np.float64:
        rstd = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)
        return gamma * (x * rstd), (x, rstd, gamma)
    y, rstd = rms_norm_rows(x, gamma, eps)
    return y, (x, rstd, gamma)  # [..., C] -> [..., C]


def gelu_erf_forward(x, bias=None):
    """0.5 * v * (1 + erf(v * float32(1/sqrt(2)))), v = x (+ bias, added first): BERT's exact
    GELU, in float32 as written; the bias add of the GEMM before it is fused in (same bits).

    erf is scipy.special.erf's float32 result; it is computed by refquant.nn.fast_erf, which
    gives the same bits about 10x faster (gelu_erf_reference is the scipy expression itself).
    The cache (x, bias) gives v again exactly.
    """
    if x.dtype == np.float64:  # gradient checks: the expression itself
        v = x if bias is None else x + bias
        return 0.5 * v * (1.0 + erf(v / np.sqrt(2.0))), (x, bias)
    return gelu_erf_float32(x, bias), (x, bias)


def gelu_erf_reference(x):
    """The scipy expression gelu_erf_forward reproduces bit for bit (its NaNs canonical, rule 12)."""
    return canonical_nan(F32(0.5) * x * (F32(1) + erf(x * F32(1 / np.sqrt(2)))))


def gelu_tanh_forward(x, bias=None):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))): GPT-2's "gelu_new" (of x + bias)."""
    v = x if bias is None else x + bias
    c = np.sqrt(2 / np.pi).astype(x.dtype)
    inner = c * (v + x.dtype.type(0.044715) * v * v * v)
    return x.dtype.type(0.5) * v * (x.dtype.type(1) + np.tanh(inner)), (x, bias)


def silu_forward(x):
    """x * sigmoid(x) (Llama's SwiGLU gate)."""
    return x / (F32(1) + np.exp(-x)), (x,)


def softmax_forward(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (max-subtracted: no overflow)."""
    p = x - x.max(axis=axis, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=axis, keepdims=True)
    return p, (p,)


def add_forward(a, b):
    """The residual add."""
    return a + b, None


def visible_keys(B, T, S, key_mask=None, causal=False):
    """bool [B, 1, T, S]: which keys each query attends to (key_mask[b, s] != 0, and s <= t + S - T
    when causal)."""
    vis = np.ones((B, 1, T, S), bool)
    if key_mask is not None:
        vis &= (np.asarray(key_mask) != 0)[:, None, None, :]
    if causal:
        vis &= (np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T))[None, None]
    return vis


def _attention64(q, k, v, key_mask, causal):
    """attention_forward in float64 with NumPy's softmax (gradient checks)."""
    B, H, T, D = q.shape
    group = H // k.shape[1]
    kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = (q / np.sqrt(D)) @ kk.transpose(0, 1, 3, 2)
    scores = np.where(visible_keys(B, T, k.shape[2], key_mask, causal), scores, np.finfo(np.float64).min)
    p = softmax_forward(scores)[0]
    return p @ vv, (q, k, v, p, key_mask, causal)


def rope_tables(positions, head_dim, theta):
    """cos, sin [T, D] of HF Llama's rotary embedding: inv_freq = theta^(-2i/D) for
    i < D/2, angles = position * inv_freq, repeated twice along D (the half-split layout)."""
    inv_freq = (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(F32) / F32(head_dim)))).astype(F32)
    angles = np.asarray(positions, F32)[..., None] * inv_freq  # [T] -> [T, D/2]
    emb = np.concatenate([angles, angles], axis=-1)
    return np.cos(emb).astype(F32), np.sin(emb).astype(F32)


def rope_forward(x, cos, sin):
    """x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1] (halves of D)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin, (cos, sin)  # [B, H, T, D] -> [B, H, T, D]


def attention_forward(q, k, v, key_mask=None, causal=False):
    """softmax((q / sqrt(D)) k^T + mask) v, per head; grouped-query when H > Hkv.

    q [B, H, T, D], k and v [B, Hkv, S, D] with H a multiple of Hkv (query head h uses
    key/value head h // (H / Hkv)). key_mask [B, S] (1 = attend) hides padding keys;
    causal hides keys after the query. Hidden scores become float32's most negative value
    (a fully hidden row then attends uniformly, as transformers' eager attention does).
    """
    D = q.shape[3]
    if q.dtype == np.float64:
        return _attention64(q, k, v, key_mask, causal)
    # 1/sqrt(D) scales q (D columns) rather than the scores (S columns); both products are
    # contract rule 13's fma chains (refquant.kernels.gemm_f32), a group of query heads sharing
    # its k and v; the context comes back as a [B, H, T, D] view of [B, T, H, D] memory
    scores = attention_scores(q * F32(1 / np.sqrt(D)), k)
    p = masked_softmax_(scores, key_mask, causal)  # in place, one pass per row
    return attention_context(p, v), (q, k, v, p, key_mask, causal)
