"""The float ops against straightforward float64 definitions (hypothesis over shapes/values).

Float32 results may differ from the float64 definition by rounding only: the tolerances
below are a few float32 ulps of the magnitudes involved, stated per op.
"""
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import erf

from refquant import nn

F32 = np.float32
EPS32 = float(np.finfo(F32).eps)


def arrays(shape, lo=-8.0, hi=8.0):
    return hnp.arrays(F32, shape, elements=st.floats(lo, hi, width=32, allow_subnormal=False))


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9)


def close(got, want, scale, ulps=16):
    want = np.asarray(want, np.float64)
    return np.all(np.abs(got.astype(np.float64) - want) <= ulps * EPS32 * (np.abs(want) + scale))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), m=st.integers(1, 6), k=st.integers(1, 17), n=st.integers(1, 9), bias=st.booleans())
def test_linear(data, m, k, n, bias):
    x = data.draw(arrays((m, k)))
    w = data.draw(arrays((n, k)))
    b = data.draw(arrays((n,))) if bias else None
    y, cache = nn.linear_forward(x, w, b)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + (0 if b is None else np.abs(b))
    assert y.dtype == F32 and y.shape == (m, n)
    assert np.all(np.abs(y - want) <= 4 * k * EPS32 * (scale + 1e-30))
    assert cache[0] is x and cache[1] is w


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=shapes)
def test_layer_norm_and_rms_norm(data, shape):
    x = data.draw(arrays(shape))
    c = shape[-1]
    g = data.draw(arrays((c,), 0.125, 2))
    b = data.draw(arrays((c,)))
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(-1, keepdims=True)
    want = (x64 - mu) / np.sqrt(var + 1e-5) * g + b
    y, (xhat, rstd, gamma) = nn.layer_norm_forward(x, g, b, 1e-5)
    assert y.dtype == F32 and close(y, want, np.abs(g).max() * 8 + np.abs(b).max(), ulps=64 * c)
    assert xhat.shape == x.shape and rstd.shape == shape[:-1] + (1,) and gamma is g
    rms = np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6)
    y, cache = nn.rms_norm_forward(x, g, 1e-6)
    assert close(y, x64 / rms * g, np.abs(g).max(), ulps=64 * c)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(F32, shapes, elements=st.floats(-20, 20, width=32, allow_subnormal=False)))
def test_activations(x):
    x64 = x.astype(np.float64)
    # 1 + erf(.) cancels for negative x in float32, as in PyTorch's own kernel: the error is
    # a few ulps of |x|, not of the (tiny) result
    y, _ = nn.gelu_erf_forward(x)
    assert close(y, 0.5 * x64 * (1 + erf(x64 / np.sqrt(2))), np.abs(x64))
    y, _ = nn.gelu_tanh_forward(x)
    want = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert close(y, want, np.abs(x64), ulps=64)
    y, _ = nn.silu_forward(x)
    assert close(y, x64 / (1 + np.exp(-x64)), 1e-6)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(F32, shapes, elements=st.floats(-80, 80, width=32)))
def test_softmax_is_max_subtracted_and_sums_to_one(x):
    p, _ = nn.softmax_forward(x)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    assert close(p, e / e.sum(-1, keepdims=True), 1e-7, ulps=8 * x.shape[-1])
    big, _ = nn.softmax_forward(x + F32(1e4))  # no overflow: the max is subtracted first
    assert np.all(np.isfinite(big))


def reference_attention(q, k, v, key_mask, causal):
    q, k, v = (t.astype(np.float64) for t in (q, k, v))
    B, H, T, D = q.shape
    rep = H // k.shape[1]
    k = np.repeat(k, rep, axis=1)  # transformers' repeat_kv: head h uses kv head h // rep
    v = np.repeat(v, rep, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
    S = k.shape[2]
    ok = np.ones((B, 1, T, S), bool)
    if key_mask is not None:
        ok &= key_mask[:, None, None, :] != 0
    if causal:
        ok &= np.tril(np.ones((T, S), bool), k=S - T)
    s = np.where(ok, s, np.finfo(np.float32).min)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 3), hkv=st.integers(1, 3), group=st.sampled_from([1, 2, 3, 4]),
       t=st.integers(1, 7), d=st.sampled_from([1, 2, 4, 6]), causal=st.booleans(), masked=st.booleans())
def test_attention_bidirectional_causal_and_grouped(data, b, hkv, group, t, d, causal, masked):
    h = hkv * group
    q = data.draw(arrays((b, h, t, d), -3, 3))
    k = data.draw(arrays((b, hkv, t, d), -3, 3))
    v = data.draw(arrays((b, hkv, t, d), -3, 3))
    mask = None
    if masked:  # right padding, at least one real token per row
        lengths = data.draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
        mask = (np.arange(t)[None] < np.array(lengths)[:, None]).astype(np.int64)
    out, cache = nn.attention_forward(q, k, v, key_mask=mask, causal=causal)
    want = reference_attention(q, k, v, mask, causal)
    assert out.dtype == F32 and out.shape == q.shape
    assert np.all(np.abs(out - want) <= 1e-5 * (np.abs(v).max() + 1e-6))
    p = cache[3]
    assert np.allclose(p.sum(-1), 1, atol=1e-5)


def test_fully_masked_rows_attend_uniformly_like_transformers_eager():
    q = np.ones((1, 1, 2, 2), F32)
    k = np.arange(8, dtype=F32).reshape(1, 1, 4, 2)
    v = np.arange(8, dtype=F32).reshape(1, 1, 4, 2)
    out, _ = nn.attention_forward(q, k, v, key_mask=np.zeros((1, 4)))
    assert np.allclose(out, v.mean(axis=2, keepdims=True))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), t=st.integers(1, 12), half=st.integers(1, 8),
       theta=st.sampled_from([10000.0, 100000.0, 500000.0]))
def test_rope_is_hf_half_split_rotation(data, t, half, theta):
    d = 2 * half
    x = data.draw(arrays((1, 2, t, d), -4, 4))
    cos, sin = nn.rope_tables(np.arange(t), d, theta)
    y, _ = nn.rope_forward(x, cos, sin)
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None]
    x64 = x.astype(np.float64)
    x1, x2 = x64[..., :half], x64[..., half:]
    c, s = np.cos(ang), np.sin(ang)
    want = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    # float32 angles (as transformers computes them) put the error at ~ position * ulp
    assert np.all(np.abs(y - want) <= (t + 1) * 8 * EPS32 * (np.abs(x64).max() + 1))
    # a rotation: norms of each (x1_i, x2_i) pair are kept
    assert np.allclose(np.hypot(y[..., :half], y[..., half:]), np.hypot(x1, x2), rtol=1e-5, atol=1e-6)


def test_embedding_and_add_caches():
    table = np.arange(12, dtype=F32).reshape(4, 3)
    ids = np.array([[3, 0, 3]])
    out, (cached_ids, shape) = nn.embedding_forward(ids, table)
    assert out.tolist() == [[[9, 10, 11], [0, 1, 2], [9, 10, 11]]] and shape == (4, 3)
    s, cache = nn.add_forward(out, out)
    assert np.array_equal(s, 2 * out) and cache is None


def test_fast_gelu_erf_is_bit_identical_to_the_scipy_expression():
    from refquant.nn.fast_erf import erf_float32
    grid = (np.arange(-7 * 4096, 7 * 4096 + 1) / 4096).astype(F32)
    rng = np.random.default_rng(0)
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 5.9999995, 6.0, 3e38, -3e38,
                      np.inf, -np.inf], F32)
    x = np.concatenate([grid, (rng.standard_normal(300_000) * 3).astype(F32), edges])
    with np.errstate(over="ignore", invalid="ignore"):
        for got, want in ((nn.gelu_erf_forward(x)[0], nn.gelu_erf_reference(x)),
                          (erf_float32(x), erf(x).astype(F32))):
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # NaN in, or GELU(-inf) = -inf * 0: the canonical NaN out, whatever the input NaN's sign and
    # payload (contract rule 12; x86 would keep the payload and write 0xFFC00000 for -inf * 0)
    odd = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFC01234, 0x7FFFFFFF, 0xFF800000], np.uint32).view(F32)
    for y in (nn.gelu_erf_forward(odd)[0], nn.gelu_erf_forward(odd.reshape(2, 3), np.zeros(3, F32))[0],
              erf_float32(odd[:-1]), nn.gelu_erf_reference(odd)):
        assert np.all(y.view(np.uint32) == 0x7FC00000), [hex(v) for v in y.view(np.uint32).ravel()]


def test_fast_erf_series_error_is_far_below_its_stated_tolerance():
    # exactness rests on |series - scipy| <= TOLERANCE; check a 100x margin on dense points
    import numba
    from refquant.nn import fast_erf
    kernel = numba.njit(lambda z, m: np.array([fast_erf._erf_abs64(v, m) for v in z]))
    rng = np.random.default_rng(3)
    z = np.concatenate([np.linspace(0, 4, 400_001)[1:-1], rng.uniform(0, 4, 200_000),
                        10.0 ** rng.uniform(-40, 0.6, 50_000)])
    rel = np.abs(kernel(z, fast_erf.COEFFS) - erf(z)) / erf(z)
    assert rel.max() < fast_erf.TOLERANCE / 100


def test_fast_erf_hands_near_ties_to_scipy():
    # the flagged elements (a float32 rounding boundary within TOLERANCE) exist and come out right
    from refquant.nn import fast_erf
    x = (np.random.default_rng(4).standard_normal(2_000_000) * 2).astype(F32)
    out, unsure = np.empty_like(x), np.empty(x.size, np.uint8)
    fast_erf._erf_kernel(x, out, unsure, fast_erf.COEFFS)
    flagged = np.flatnonzero(unsure)
    assert 0 < flagged.size < 1000
    want = erf(x).astype(F32)
    assert np.array_equal(fast_erf.erf_float32(x).view(np.uint32), want.view(np.uint32))
    assert np.array_equal(nn.gelu_erf_forward(x[flagged])[0].view(np.uint32),
                          nn.gelu_erf_reference(x[flagged]).view(np.uint32))


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


edge_floats = st.one_of(st.floats(-8, 8, width=32), st.sampled_from([0.0, -0.0, 0.5, -0.5, 3e38, -3e38]))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
       with_bias=st.booleans())
def test_fused_bias_ops_give_the_unfused_bits(data, shape, with_bias):
    # the GEMM's bias add fused into GELU, into residual + LayerNorm, into the head split: same bytes
    y = data.draw(hnp.arrays(F32, shape, elements=edge_floats))
    x = data.draw(hnp.arrays(F32, shape, elements=edge_floats))
    c = shape[-1]
    b = data.draw(hnp.arrays(F32, (c,), elements=edge_floats)) if with_bias else None
    g, beta = data.draw(arrays((c,), 0.125, 2)), data.draw(arrays((c,)))
    with np.errstate(over="ignore", invalid="ignore"):
        yb = y if b is None else y + b
        assert np.array_equal(bits(nn.gelu_erf_forward(y, b)[0]), bits(nn.gelu_erf_forward(yb)[0]))
        assert np.array_equal(bits(nn.gelu_tanh_forward(y, b)[0]), bits(nn.gelu_tanh_forward(yb)[0]))
        fused = nn.residual_layer_norm_forward(x, y, b, g, beta, 1e-5)
        plain = nn.layer_norm_forward(x + yb, g, beta, 1e-5)
    for got, want in zip((fused[0],) + fused[1][:2], (plain[0],) + plain[1][:2]):
        assert got.shape == want.shape and np.array_equal(bits(got), bits(want))
    if len(shape) == 3:
        heads = data.draw(st.sampled_from([h for h in range(1, c + 1) if c % h == 0]))
        want = yb.reshape(*shape[:2], heads, c // heads).transpose(0, 2, 1, 3)
        got = nn.split_heads(y, b, heads)
        assert got.flags.c_contiguous and np.array_equal(bits(got), bits(want))


def test_in_halves_runs_every_index_once_and_raises_helper_errors():
    from refquant.nn._split import in_halves
    seen = np.zeros(7, int)

    def mark(lo, hi):
        seen[lo:hi] += 1
    in_halves(mark, 7, 1 << 20)
    assert np.array_equal(seen, np.ones(7, int))

    def fail(lo, hi):
        if lo == 0:
            raise ValueError("helper half")
    import pytest
    with pytest.raises(ValueError, match="helper half"):
        in_halves(fail, 4, 1 << 20)


def test_malloc_thresholds_set_once_and_can_be_turned_off():
    import subprocess
    import sys
    code = "import refquant._malloc as m; print(m.keep_freed_memory(), m.keep_freed_memory())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    import os
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "REFQUANT_MALLOPT": "0"}).stdout.split()
    assert off == ["False", "False"]
    import platform
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert on == ["True", "True"]
