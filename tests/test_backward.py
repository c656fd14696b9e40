"""Every hand-written backward against central finite differences in float64 (hypothesis over
shapes and values): relative error ||analytic - numeric|| / ||numeric|| <= 1e-6 (plus the
differences' rounding noise, 1e-8 per element, for gradients that are nearly zero).

The loss is sum(out * R) for a fixed random R, so dL/dout = R is what each backward gets."""
import numpy as np
from hypothesis import given, settings, strategies as st

from refquant import nn
from refquant.nn import backward as bw

F64 = np.float64
H = 1e-6
TOL = 1e-6
EXAMPLES = dict(max_examples=25, deadline=None)


def numeric_grad(f, x):
    """Central differences of f (a scalar function of the array x) at every element of x."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        up = f()
        flat[i] = old - H
        down = f()
        flat[i] = old
        gf[i] = (up - down) / (2 * H)
    return g


NOISE = 1e-8  # per element: central differences at h = 1e-6 carry ~1e-10 of rounding noise


def assert_close(analytic, numeric, what):
    """relative error <= TOL, or (for gradients near zero) within the differences' own noise."""
    num = np.linalg.norm(numeric)
    err = np.linalg.norm(np.asarray(analytic, F64) - numeric)
    assert err <= TOL * num + NOISE * np.sqrt(numeric.size), f"{what}: relative error {err / max(num, 1e-300):.2e}"


def check(forward, backward, arrays: dict, names, rng, **kw):
    """forward(**arrays, **kw) -> (out, cache); backward(R, cache) -> grads in ``names`` order
    (None entries skipped)."""
    out, cache = forward(**arrays, **kw)
    R = rng.standard_normal(out.shape)
    grads = backward(R, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for name, g in zip(names, grads):
        if name is None or g is None:
            continue

        def loss():
            return float(np.sum(forward(**arrays, **kw)[0] * R))
        assert_close(g, numeric_grad(loss, arrays[name]), name)


seeds = st.integers(0, 2 ** 31)
dims = st.integers(1, 5)


@settings(**EXAMPLES)
@given(seed=seeds, m=dims, k=dims, n=dims, bias=st.booleans())
def test_linear(seed, m, k, n, bias):
    rng = np.random.default_rng(seed)
    a = {"x": rng.standard_normal((2, m, k)), "w": rng.standard_normal((n, k))}
    if bias:
        a["b"] = rng.standard_normal(n)
    check(nn.linear_forward, bw.linear_backward, a, ["x", "w", "b" if bias else None], rng)


@settings(**EXAMPLES)
@given(seed=seeds, v=st.integers(1, 6), c=dims)
def test_embedding_with_repeated_ids(seed, v, c):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, v, (2, 4))  # repeats: gradients add
    a = {"table": rng.standard_normal((v, c))}
    check(lambda table: nn.embedding_forward(ids, table), bw.embedding_backward, a, ["table"], rng)


@settings(**EXAMPLES)
@given(seed=seeds, c=st.integers(2, 7), scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_layer_norm_and_residual_layer_norm(seed, c, scale):
    rng = np.random.default_rng(seed)
    a = {"x": rng.standard_normal((3, c)) * scale, "gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}
    check(nn.layer_norm_forward, bw.layer_norm_backward, a, ["x", "gamma", "beta"], rng, eps=1e-5)
    y, b = rng.standard_normal((3, c)) * scale, rng.standard_normal(c)
    r = {"x": a["x"], "y": y, "bias": b, "gamma": a["gamma"], "beta": a["beta"]}
    out, cache = nn.residual_layer_norm_forward(**r, eps=1e-5)
    R = rng.standard_normal(out.shape)
    dh, dgamma, _ = bw.layer_norm_backward(R, cache)  # dh: the gradient of x, of y, and of b summed
    for name, g in (("x", dh), ("y", dh), ("bias", dh.sum(axis=0)), ("gamma", dgamma)):
        assert_close(g, numeric_grad(lambda: float(np.sum(nn.residual_layer_norm_forward(**r, eps=1e-5)[0] * R)),
                                     r[name]), name)


@settings(**EXAMPLES)
@given(seed=seeds, c=st.integers(1, 7))
def test_rms_norm(seed, c):
    rng = np.random.default_rng(seed)
    a = {"x": rng.standard_normal((3, c)), "gamma": rng.standard_normal(c)}
    check(nn.rms_norm_forward, bw.rms_norm_backward, a, ["x", "gamma"], rng, eps=1e-6)


@settings(**EXAMPLES)
@given(seed=seeds, c=dims, bias=st.booleans(), scale=st.sampled_from([0.3, 3.0]))
def test_activations(seed, c, bias, scale):
    rng = np.random.default_rng(seed)
    for fwd, back in ((nn.gelu_erf_forward, bw.gelu_erf_backward), (nn.gelu_tanh_forward, bw.gelu_tanh_backward)):
        a = {"x": rng.standard_normal((3, c)) * scale}
        if bias:
            a["bias"] = rng.standard_normal(c)
        check(fwd, back, a, ["x", "bias" if bias else None], rng)
    check(nn.silu_forward, bw.silu_backward, {"x": rng.standard_normal((3, c)) * scale}, ["x"], rng)
    check(nn.softmax_forward, bw.softmax_backward, {"x": rng.standard_normal((3, c)) * scale}, ["x"], rng)


@settings(**EXAMPLES)
@given(seed=seeds, c=dims, bias=st.booleans(), scale=st.sampled_from([0.3, 3.0]))
def test_every_config_activation_pair(seed, c, bias, scale):
    """Each (forward, backward) of the table the models and the training blocks share."""
    from refquant.nn.activations import ACTIVATIONS
    rng = np.random.default_rng(seed)
    for act in ACTIVATIONS.values():
        a = {"x": rng.standard_normal((3, c)) * scale}
        if bias:
            a["bias"] = rng.standard_normal(c)
        check(act.forward, act.backward, a, ["x", "bias" if bias else None], rng)


@settings(**EXAMPLES)
@given(seed=seeds, t=st.integers(1, 5), half=st.integers(1, 3))
def test_rope(seed, t, half):
    rng = np.random.default_rng(seed)
    cos, sin = (a.astype(F64) for a in nn.rope_tables(np.arange(t), 2 * half, 10000.0))
    check(lambda x: nn.rope_forward(x, cos, sin), bw.rope_backward,
          {"x": rng.standard_normal((1, 2, t, 2 * half))}, ["x"], rng)


@settings(**EXAMPLES)
@given(seed=seeds, b=st.integers(1, 2), hkv=st.integers(1, 2), group=st.sampled_from([1, 2, 3]),
       t=st.integers(1, 4), d=st.integers(1, 3), causal=st.booleans(), masked=st.sampled_from(["none", "some", "all"]))
def test_attention_with_masks_and_grouped_heads(seed, b, hkv, group, t, d, causal, masked):
    rng = np.random.default_rng(seed)
    a = {"q": rng.standard_normal((b, hkv * group, t, d)), "k": rng.standard_normal((b, hkv, t, d)),
         "v": rng.standard_normal((b, hkv, t, d))}
    mask = np.ones((b, t), np.int64)
    if masked == "some" and t > 1:
        mask[-1, t // 2:] = 0
    elif masked == "all":
        mask[0] = 0  # a fully hidden row attends uniformly; no gradient flows to its scores
    check(lambda q, k, v: nn.attention_forward(q, k, v, key_mask=mask, causal=causal), bw.attention_backward,
          a, ["q", "k", "v"], rng)


def test_float32_attention_cache_feeds_the_same_backward():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 4, 5, 3)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 1, 0, 0]])
    out32, c32 = nn.attention_forward(q, k, v, key_mask=mask, causal=True)
    out64, c64 = nn.attention_forward(*(a.astype(F64) for a in (q, k, v)), key_mask=mask, causal=True)
    assert np.allclose(out32, out64, atol=1e-5)
    R = rng.standard_normal(out32.shape).astype(np.float32)
    for g32, g64 in zip(bw.attention_backward(R, c32), bw.attention_backward(R.astype(F64), c64)):
        assert g32.dtype == np.float32 and np.allclose(g32, g64, atol=1e-4)
