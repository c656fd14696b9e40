"""Contract rule 13: the float32 dot product is the sequential fma chain over k.

- refquant.nn.dot.fma_float32 (NumPy, exact emulation) against exact rational arithmetic
  (fractions.Fraction, correctly rounded to float32 here): every float32 class, ties, overflow;
- refquant.kernels.gemm_f32 (every path this CPU runs) against the definitions
  (dot_chain / linear_chain / attention_*_chain) byte for byte, and independent of threads,
  of M (a row alone or inside a batch), of packing and of the output layout;
- the forward ops (linear_forward, attention_forward) on the kernels.

Inputs are drawn by hypothesis as (seed, style) pairs and built with NumPy, so that shapes can
reach the tile edges (M = 1, K = 0, N = 17, ...) without slow element-wise generation.
"""
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from refquant._numba import numba
from refquant.errors import ConfigError, DTypeError, ShapeError
from refquant.kernels import gemm_f32 as g
from refquant.nn import attention_forward, linear_forward, split_heads
from refquant.nn.dot import (attention_context_chain, attention_scores_chain, dot_chain, fma_float32,
                             linear_chain)
from refquant.testing import assert_bitexact

F32 = np.float32
PATHS = [p for p, ok in (("avx512", g.HAVE_AVX512), ("avx2", g.HAVE_AVX2)) if ok] + ["portable"]
EXAMPLES = dict(max_examples=int(os.environ.get("REFQUANT_KERNEL_EXAMPLES", 40)), deadline=None)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf * 0 etc.
NAN_BITS = 0x7FC00000


# ---------------------------------------------------------------------------------------------
# fma_float32 against exact arithmetic
# ---------------------------------------------------------------------------------------------
def _round_float32(v: Fraction) -> F32:
    """The nonzero rational v rounded to float32, to nearest, ties to even (overflow: inf)."""
    neg, m = v < 0, abs(v)
    e = m.numerator.bit_length() - m.denominator.bit_length()
    if Fraction(2) ** e > m:
        e -= 1
    ulp = Fraction(2) ** (max(e, -126) - 23)        # subnormals share the smallest normal ulp
    mag = round(m / ulp) * ulp                       # round() of a Fraction: half to even
    r = F32(np.inf) if mag >= Fraction(2) ** 128 else F32(float(mag))
    return -r if neg else r


def exact_fma(a, b, c) -> F32:
    a, b, c = F32(a), F32(b), F32(c)
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(c)):
        with np.errstate(all="ignore"):   # IEEE: NaN in, inf * 0, inf - inf -> NaN; else inf
            r = F32(np.float64(a) * np.float64(b) + np.float64(c))
        return F32(np.nan) if np.isnan(r) else r
    p = Fraction(float(a)) * Fraction(float(b))
    v = p + Fraction(float(c))
    if v == 0:   # exact zero: -0 only when the product and c are both -0
        negative_product = bool(np.signbit(a) ^ np.signbit(b))
        return F32(-0.0) if p == 0 and negative_product and np.signbit(c) else F32(0.0)
    return _round_float32(v)


def bits(x):
    return np.asarray(x, F32).view(np.uint32)


f32_any = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@st.composite
def near_ties(draw):
    """a * b with up to 26 significant bits (often exactly a float32 midpoint) plus a c far
    below it: float64 rounds the sum onto the midpoint, and only the exact sum knows the side."""
    a = (2 ** 12 + draw(st.integers(0, 2 ** 12 - 1))) * 2.0 ** draw(st.integers(-80, 40))
    b = (2 ** 12 + draw(st.integers(0, 2 ** 12 - 1))) * 2.0 ** draw(st.integers(-80, 40))
    sign = draw(st.sampled_from([1.0, -1.0]))
    c = sign * abs(a * b) * 2.0 ** -draw(st.integers(30, 60))
    return F32(a) * F32(draw(st.sampled_from([1, -1]))), F32(b), F32(c)


@settings(max_examples=400, deadline=None)
@given(f32_any, f32_any, f32_any)
@example(F32(1 + 2 ** -12), F32(1 + 2 ** -12), F32(2.0 ** -80))            # double-rounding tie
@example(F32(1 + 2 ** -12), F32(1 + 2 ** -12), F32(-(2.0 ** -80)))
@example(F32(3.4028235e38), F32(1.0), F32(2.0 ** 103))                      # overflow tie -> inf
@example(F32(3.4028235e38), F32(1.0), F32(2.0 ** 103 - 2.0 ** 80))          # just below: max
@example(F32(-0.0), F32(1.0), F32(-0.0))
@example(F32(-1.0), F32(0.0), F32(0.0))
@example(F32(2.0 ** -149), F32(2.0 ** -149), F32(-0.0))                      # underflow, sign kept
@example(F32(-(2.0 ** -149)), F32(0.5), F32(0.0))                            # tie at 2^-150: to -0
@example(F32(np.inf), F32(0.0), F32(1.0))
@example(F32(np.inf), F32(1.0), F32(-np.inf))
def test_fma_float32_is_the_exactly_rounded_fma(a, b, c):
    got = fma_float32(a, b, c)
    want = exact_fma(a, b, c)
    assert bits(got) == bits(want), (a, b, c, got, want)


@settings(max_examples=400, deadline=None)
@given(near_ties())
def test_fma_float32_double_rounding_cases(abc):
    a, b, c = abc
    assert bits(fma_float32(a, b, c)) == bits(exact_fma(a, b, c)), abc


def test_fma_float32_vectorized_and_nan_canonical():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 2 ** 32, (3, 2000), dtype=np.uint64).astype(np.uint32).view(F32)
    raw[0, :50] = np.array(0xFFC00001, np.uint32).view(F32)   # negative NaN with a payload
    got = fma_float32(*raw)
    want = np.array([exact_fma(*t) for t in raw.T], F32)
    assert_bitexact(got, want, "fma_float32")
    assert (bits(got[np.isnan(got)]) == NAN_BITS).all()


# ---------------------------------------------------------------------------------------------
# the definitions
# ---------------------------------------------------------------------------------------------
def test_dot_chain_runs_k_in_order_and_starts_at_plus_zero():
    x = np.array([[1e8, 1, -1e8]], F32)
    w = np.ones((1, 3), F32)
    assert dot_chain(x, w)[0, 0] == 0        # (1e8 + 1) rounds back to 1e8: the order shows
    assert dot_chain(np.array([[1e8, -1e8, 1]], F32), w)[0, 0] == 1
    neg = dot_chain(np.array([[-1.0]], F32), np.zeros((1, 1), F32))   # fma(-1, 0, +0) = +0
    assert bits(neg)[0, 0] == 0
    empty = dot_chain(np.zeros((2, 0), F32), np.zeros((3, 0), F32))
    assert empty.shape == (2, 3) and (bits(empty) == 0).all()


def test_dot_chain_exact_on_small_integers_and_broadcasts():
    rng = np.random.default_rng(1)
    x = rng.integers(-50, 50, (2, 1, 4, 7)).astype(F32)
    w = rng.integers(-50, 50, (3, 5, 7)).astype(F32)
    assert_bitexact(dot_chain(x, w), np.matmul(x, np.swapaxes(w, -1, -2)), "dot_chain")  # exact sums


def test_definitions_refuse_bad_operands():
    with pytest.raises(DTypeError, match="float32"):
        dot_chain(np.zeros((2, 2)), np.zeros((2, 2), F32))
    with pytest.raises(ShapeError, match="K = 3"):
        dot_chain(np.zeros((2, 3), F32), np.zeros((2, 4), F32))
    with pytest.raises(ShapeError, match="bias"):
        linear_chain(np.zeros((2, 3), F32), np.zeros((4, 3), F32), np.zeros(3, F32))


# ---------------------------------------------------------------------------------------------
# the kernels against the definitions
# ---------------------------------------------------------------------------------------------
def values(rng, shape, style):
    """float32 values: ordinary, with specials sprinkled (NaN with payloads, inf, signed zeros,
    subnormals, huge), integers (exact sums), or near-cancelling magnitudes."""
    v = rng.standard_normal(shape).astype(F32)
    if style == "special" and v.size:
        pool = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, -3e-39, 3e38, -3e38, 2.0 ** -126],
                        F32)
        pool = np.concatenate([pool, np.array([0x7FC00000, 0xFFC00000, 0x7F800001], np.uint32)
                               .view(F32)])
        idx = rng.random(shape) < 0.08
        v[idx] = rng.choice(pool, int(idx.sum()))
    elif style == "int":
        v = rng.integers(-8, 8, shape).astype(F32)
    elif style == "wide":
        v = (rng.standard_normal(shape) * 2.0 ** rng.integers(-60, 60, shape)).astype(F32)
    elif style == "subnormal":
        v = (rng.standard_normal(shape) * 2.0 ** -140).astype(F32)
    return v


STYLES = st.sampled_from(["normal", "special", "int", "wide", "subnormal"])
DIMS = st.one_of(st.integers(0, 3), st.integers(0, 20), st.sampled_from([15, 16, 17, 47, 48, 49]))


@settings(**EXAMPLES)
@given(seed=st.integers(0, 2 ** 32 - 1), M=DIMS, K=st.one_of(st.integers(0, 40), st.just(300)),
       N=st.one_of(DIMS, st.integers(50, 100)), style=STYLES, with_bias=st.booleans())
def test_matmul_f32_every_path_is_the_chain(seed, M, K, N, style, with_bias):
    rng = np.random.default_rng(seed)
    x, w = values(rng, (M, K), style), values(rng, (N, K), style)
    bias = values(rng, (N,), style) if with_bias else None
    want = linear_chain(x, w, bias)
    for path in PATHS:
        assert_bitexact(g.matmul_f32(x, w, bias, path=path), want, f"matmul_f32 {path} {M}x{K}x{N}")


@pytest.mark.parametrize("path", PATHS)
def test_matmul_f32_long_k_continues_the_chain_across_k_blocks(path):
    rng = np.random.default_rng(2)
    K = 2 * g.KC + 37
    x, w = values(rng, (9, K), "wide"), values(rng, (50, K), "wide")
    b = values(rng, (50,), "normal")
    assert_bitexact(g.matmul_f32(x, w, b, path=path), linear_chain(x, w, b), "long K")


@pytest.mark.parametrize("path", PATHS)
def test_matmul_f32_independent_of_threads_and_of_m(path):
    rng = np.random.default_rng(3)
    x, w = values(rng, (70, 200), "normal"), values(rng, (130, 200), "normal")
    b = values(rng, (130,), "normal")
    packed = g.prepack_f32(w)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            results.append(g.matmul_f32(x, packed, b, path=path))
    finally:
        numba.set_num_threads(before)
    for r in results[1:]:
        assert_bitexact(r, results[0], "threads")
    full = results[0]
    for m in (0, 5, 69):   # a row alone (M = 1: the decode kernels, column split) == in the batch
        assert_bitexact(g.matmul_f32(x[m:m + 1], w, b, path=path), full[m:m + 1], f"row {m}")
    assert_bitexact(g.matmul_f32(x[3:14], packed, b, path=path), full[3:14], "rows 3..13")


def test_prepack_round_trip_and_leading_dims():
    rng = np.random.default_rng(4)
    w = values(rng, (37, 11), "special")
    packed = g.prepack_f32(w)
    assert_bitexact(packed.unpack(), w, "unpack")
    assert packed.data.ctypes.data % 64 == 0
    x = values(rng, (2, 3, 11), "normal")
    y = g.matmul_f32(x, packed)
    assert y.shape == (2, 3, 37)
    assert_bitexact(y, linear_chain(x, w), "leading dims")
    out = np.empty((2, 3, 37), F32)
    assert g.matmul_f32(x, w, out=out) is out
    assert_bitexact(out, y, "out=")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("B,T,H,D", [(2, 5, 3, 16), (1, 9, 2, 32), (2, 3, 4, 8), (1, 1, 1, 20)])
def test_head_split_output_is_split_heads_of_the_plain_gemm(path, B, T, H, D):
    rng = np.random.default_rng(5)
    x, w, b = values(rng, (B, T, 24), "normal"), values(rng, (H * D, 24), "normal"), values(rng, (H * D,), "normal")
    y = g.matmul_f32(x, g.prepack_f32(w), b, path=path, head_split=H)
    assert y.shape == (B, H, T, D) and y.flags.c_contiguous
    assert_bitexact(y, split_heads(linear_chain(x, w), b, H), "head split")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("B,H,Hkv,T,S,D", [(2, 4, 2, 5, 7, 3), (1, 2, 1, 9, 20, 17), (2, 3, 3, 1, 1, 16),
                                           (1, 1, 1, 3, 0, 4), (1, 6, 2, 17, 33, 32), (3, 2, 2, 4, 4, 0)])
def test_attention_products_are_the_chains(path, B, H, Hkv, T, S, D):
    rng = np.random.default_rng(6)
    q = values(rng, (B, H, T, D), "normal")
    kv = values(rng, (B, S, 2 * Hkv, D), "special").transpose(0, 2, 1, 3)   # strided views
    k, v = kv[:, :Hkv], kv[:, Hkv:]
    p = values(rng, (B, H, T, S), "normal")
    assert_bitexact(g.attention_scores(q, k, path=path), attention_scores_chain(q, k), "scores")
    ctx = g.attention_context(p, v, path=path)
    assert ctx.shape == (B, H, T, D)
    assert ctx.transpose(0, 2, 1, 3).flags.c_contiguous     # [B, T, H, D] memory: no copy later
    assert_bitexact(ctx, attention_context_chain(p, v), "context")


def test_attention_heads_split_across_threads_when_few():
    rng = np.random.default_rng(7)
    q, k = values(rng, (1, 1, 40, 16), "normal"), values(rng, (1, 1, 30, 16), "normal")
    assert_bitexact(g.attention_scores(q, k), attention_scores_chain(q, k), "one head")


def test_nan_out_is_canonical_on_every_path():
    x = np.array([[np.inf, 1.0], [np.array(0xFFC00001, np.uint32).view(F32), 2.0]], F32)
    w = np.array([[0.0, 1.0], [1.0, 1.0]], F32)
    for path in PATHS:
        y = g.matmul_f32(x, w, path=path)
        assert (bits(y[np.isnan(y)]) == NAN_BITS).all() and np.isnan(y).sum() == 3


def test_matmul_f32_refuses_bad_input():
    w = np.zeros((4, 3), F32)
    with pytest.raises(DTypeError, match="matmul_f32: x"):
        g.matmul_f32(np.zeros((2, 3)), w)
    with pytest.raises(ShapeError, match="K = 5"):
        g.matmul_f32(np.zeros((2, 5), F32), w)
    with pytest.raises(ShapeError, match="bias must be \\[4\\]"):
        g.matmul_f32(np.zeros((2, 3), F32), w, np.zeros(3, F32))
    with pytest.raises(ShapeError, match="head_split"):
        g.matmul_f32(np.zeros((2, 3), F32), w, head_split=3)
    with pytest.raises(ConfigError, match="path"):
        g.matmul_f32(np.zeros((2, 3), F32), w, path="sse")
    with pytest.raises(DTypeError, match="prepack_f32"):
        g.prepack_f32(np.zeros((4, 3), np.float16))
    with pytest.raises(ShapeError, match="Hkv"):
        g.attention_scores(np.zeros((1, 3, 2, 4), F32), np.zeros((1, 2, 2, 4), F32))


def test_unavailable_path_is_refused():
    missing = [p for p, ok in (("avx512", g.HAVE_AVX512), ("avx2", g.HAVE_AVX2)) if not ok]
    if not missing:
        pytest.skip("this CPU runs every path")
    with pytest.raises(ConfigError, match=missing[0]):
        g.matmul_f32(np.zeros((1, 1), F32), np.zeros((1, 1), F32), path=missing[0])


# ---------------------------------------------------------------------------------------------
# the forward ops use the kernels
# ---------------------------------------------------------------------------------------------
def test_linear_forward_is_the_chain_and_float64_stays_numpy():
    rng = np.random.default_rng(8)
    x, w, b = values(rng, (2, 5, 40), "normal"), values(rng, (33, 40), "normal"), values(rng, (33,), "normal")
    assert_bitexact(linear_forward(x, w, b)[0], linear_chain(x, w, b), "linear_forward")
    assert_bitexact(linear_forward(x, w, b, packed=g.prepack_f32(w))[0], linear_chain(x, w, b), "packed")
    y64 = linear_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))[0]
    assert y64.dtype == np.float64


def test_attention_forward_is_the_chains_around_the_softmax():
    from refquant.nn.fused import masked_softmax_
    rng = np.random.default_rng(9)
    q, k, v = (values(rng, (2, 4, 6, 8), "normal") for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    got = attention_forward(q, k, v, key_mask=mask, causal=True)[0]
    scores = attention_scores_chain(q * F32(1 / np.sqrt(8)), k)
    want = attention_context_chain(masked_softmax_(scores, mask, True), v)
    assert_bitexact(got, want, "attention_forward")
