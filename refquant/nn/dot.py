"""The defined-order float32 dot product (numeric contract rule 13), in NumPy: the definitions
that refquant.kernels.gemm_f32 reproduces byte for byte. Slow and obviously correct; tests and
the golden comparisons use them, forward passes use the kernels.

Every float32 dot product of a forward pass is, per output element, the sequential
fused-multiply-add chain over k in increasing order, started at +0.0:

    c = +0.0f;  for k in 0 .. K-1:  c = fma(x[m, k], w[n, k], c)     (one rounding per step)
    y[m, n] = c + bias[n]                                              (one float32 add, if any)

``fma`` is IEEE fusedMultiplyAdd in float32. NumPy has none, so ``fma_float32`` emulates it
exactly: the product of two float32 values is exact in float64 (24 + 24 < 53 bits), the sum
``s = p + c`` in float64 is rounded once, and TwoSum gives its exact error. Rounding ``s`` to
float32 then rounds the exact sum correctly except when ``s`` lands exactly on the midpoint of
two float32 neighbours while the exact sum lies beside it (double rounding): there the error's
sign picks the neighbour.
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import DTypeError, ShapeError

from ..floats import canonical_nan

F32 = np.float32
F64 = np.float64
_TWO_128 = F64(2.0) ** 128   # where float32's next binade would start: the "value" of +inf


def fma_float32(a, b, c) -> np.ndarray:
    """float32 fma(a, b, c) = round(a * b + c) with one rounding (IEEE 754 fusedMultiplyAdd,
    round to nearest even), elementwise with broadcasting; every NaN out canonical (rule 12).

    Special values as IEEE: a NaN input, inf * 0 and inf - inf give NaN; an exact zero sum is
    +0 unless both the product and c are -0; a nonzero sum too small for float32 keeps its sign.
    """
    a, b, c = np.broadcast_arrays(np.asarray(a, F32), np.asarray(b, F32), np.asarray(c, F32))
    with np.errstate(all="ignore"):
        p = a.astype(F64) * b.astype(F64)           # exact for finite a, b
        c64 = c.astype(F64)
        s = p + c64                                  # finite a, b, c: never overflows float64
        t = s - p                                    # TwoSum: s + err == p + c exactly
        err = (p - (s - t)) + (c64 - t)
        r = s.astype(F32)                            # correct unless s is a midpoint (below)
        r64 = r.astype(F64)
        # the float32 neighbour of r on s's side (r rounded away from it)
        other = np.nextafter(r, np.where(r64 < s, F32(np.inf), F32(-np.inf)).astype(F32))
        other64 = other.astype(F64)
        r_value = np.where(np.isinf(r), np.copysign(_TWO_128, r64), r64)  # overflow ties at 2^128 - 2^103
        # (|s| < 2^128: the largest midpoint is 2^128 - 2^103, and below it both distances are
        # exact float64 subtractions of nearby values)
        tie = (np.abs(s) < _TWO_128) & (r64 != s) & (np.abs(s - r_value) == np.abs(other64 - s)) \
            & (err != 0)
        # in a tie the exact sum s + err lies on err's side of s: take that neighbour
        out = np.where(tie & ((err > 0) == (other64 > r64)), other, r)
    return canonical_nan(np.asarray(out, F32))


def _check_operands(x, w, what):
    x, w = np.asarray(x), np.asarray(w)
    for name, a in (("x", x), ("w", w)):
        if a.dtype != F32:
            raise DTypeError(f"{what}: {name} must be float32, got {a.dtype}")
        if a.ndim < 2:
            raise ShapeError(f"{what}: {name} must have at least 2 dimensions [..., rows, K], "
                             f"got shape {list(a.shape)}")
    if x.shape[-1] != w.shape[-1]:
        raise ShapeError(f"{what}: x has K = {x.shape[-1]} but w has K = {w.shape[-1]} "
                         f"(x {list(x.shape)}, w {list(w.shape)})")
    try:
        batch = np.broadcast_shapes(x.shape[:-2], w.shape[:-2])
    except ValueError:
        raise ShapeError(f"{what}: batch dimensions of x {list(x.shape)} and w {list(w.shape)} "
                         "do not broadcast") from None
    return x, w, batch


def dot_chain(x, w) -> np.ndarray:
    """[..., M, K] x [..., N, K] -> [..., M, N] float32, each element the fma chain of contract
    rule 13 (c = +0; c = fma(x[m, k], w[n, k], c) for k = 0 .. K-1), batch dimensions
    broadcast. K = 0 gives +0.0 everywhere."""
    x, w, batch = _check_operands(x, w, "dot_chain")
    M, K = x.shape[-2:]
    N = w.shape[-2]
    xb = np.broadcast_to(x, batch + (M, K))
    wb = np.broadcast_to(w, batch + (N, K))
    c = np.zeros(batch + (M, N), F32)
    for k in range(K):  # the one order: k increasing
        c = fma_float32(xb[..., :, None, k], wb[..., None, :, k], c)
    return c


def linear_chain(x, w, bias=None) -> np.ndarray:
    """The float32 linear layer of rule 13: [..., K] x w [N, K] -> [..., N], the chain per
    element, then ``+ bias[n]`` in one float32 add; NaN canonical."""
    x = np.asarray(x)
    if x.ndim < 1:
        raise ShapeError(f"linear_chain: x must have a K axis, got shape {list(x.shape)}")
    y = dot_chain(x.reshape(int(np.prod(x.shape[:-1], dtype=np.int64)), x.shape[-1]), w)
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != F32 or bias.shape != (y.shape[1],):
            raise ShapeError(f"linear_chain: bias must be float32 [{y.shape[1]}], got "
                             f"{bias.dtype} {list(bias.shape)}")
        y = y + bias
    return canonical_nan(y.reshape(*x.shape[:-1], y.shape[1]))


def _group_heads(a, kv, what):
    """a [B, H, T, X] -> [B, Hkv, H/Hkv * T, X] (query head h uses key/value head h // (H/Hkv))."""
    if a.ndim != 4 or kv.ndim != 4 or a.shape[0] != kv.shape[0] or kv.shape[1] == 0 \
            or a.shape[1] % kv.shape[1]:
        raise ShapeError(f"{what}: expected [B, H, T, .] and [B, Hkv, S, D] with H a multiple of Hkv, "
                         f"got {list(a.shape)} and {list(kv.shape)}")
    B, H, T, X = a.shape
    return np.ascontiguousarray(a).reshape(B, kv.shape[1], H // kv.shape[1] * T, X)


def attention_scores_chain(q_scaled, k) -> np.ndarray:
    """scores[b, h, t, s] = chain over d of q_scaled[b, h, t, d] * k[b, h // G, s, d] (q already
    multiplied by float32(1/sqrt(D))), G = H / Hkv: [B, H, T, D], [B, Hkv, S, D] -> [B, H, T, S]."""
    B, H, T, _ = np.shape(q_scaled)
    qg = _group_heads(np.asarray(q_scaled), np.asarray(k), "attention_scores_chain")
    return dot_chain(qg, k).reshape(B, H, T, np.shape(k)[2])


def attention_context_chain(p, v) -> np.ndarray:
    """context[b, h, t, d] = chain over s = 0 .. S-1 (every key, hidden ones too: their p is 0)
    of p[b, h, t, s] * v[b, h // G, s, d]: [B, H, T, S], [B, Hkv, S, D] -> [B, H, T, D]."""
    B, H, T, _ = np.shape(p)
    pg = _group_heads(np.asarray(p), np.asarray(v), "attention_context_chain")
    return dot_chain(pg, np.swapaxes(np.asarray(v), -1, -2)).reshape(B, H, T, np.shape(v)[3])


__all__ = ["fma_float32", "dot_chain", "linear_chain", "attention_scores_chain",
           "attention_context_chain"]
