"""Hypothesis strategies and assertions for testing a quantizer against refquant.

    from hypothesis import given
    import refquant as rq
    from refquant.testing import quant_specs, tensors, assert_bitexact, assert_within_quant_error

    @given(spec=quant_specs(granularity="channel"), x=tensors())
    def test_my_quantizer(spec, x):
        qp = rq.choose_qparams(x, spec)
        assert_bitexact(my_fake_quant(x, qp), rq.fake_quant(x, qp))     # the same bits, or
        assert_within_quant_error(x, my_fake_quant(x, qp), qp)          # at least within a half step

Strategies draw the edges on purpose: ties at .5, the int8 and int4 bounds, signed zeros,
tiny and large magnitudes, all-zero rows, M = 1, K not a multiple of 4 / 16 / 64. Needs the
``hypothesis`` package (refquant's ``test`` extra); refquant itself never imports this module.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .dialects import DIALECTS, dialect
from .kernels.reference import dequant_step
from .quant import QParams, expand
from .spec import QuantSpec

F32 = np.float32
EDGE_VALUES = (0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 127.5, -128.5, 127.0, -128.0, 7.5, -8.5, 1e-30, -1000.0)

__all__ = ["quant_specs", "STACK_CHOICES", "tensors", "gemm_problems", "int8_matrix", "EDGE_VALUES", "assert_bitexact",
           "assert_within_quant_error"]


# What each stack lets its user choose (docs/stacks.md; each preset's docstring in dialects.py),
# so that a spec drawn for a dialect is one that stack itself computes from (x, scale,
# zero_point): the dialect's own rounding, mapping and zero-point rules, never refquant's other
# options. "channel" and "group" axes are 0 or -1 (valid for any ndim >= 1); "group" is drawn
# only where a partial last group is allowed (ONNX), since a strategy cannot see the tensor's
# shape; ZeroQuant's row groups are drawn as one group for the same reason.
STACK_CHOICES = {
    "onnx": dict(bits=(8, 4), signed=(False, True), symmetric=(False, True), narrow=(False,),
                 granularity=("tensor", "channel", "group")),
    "torch": dict(bits=(8,), signed=(True, False), symmetric=(True, False), narrow=(False,),
                  granularity=("tensor", "channel")),
    "modelopt": dict(bits=(8, 4), signed=(True,), symmetric=(True,), narrow=(False, True),
                     granularity=("tensor", "channel")),
    "compressed_tensors": dict(bits=(8, 4), signed=(True,), symmetric=(True, False), narrow=(False,),
                               granularity=("tensor", "channel", "token")),
    "q8bert": dict(bits=(8,), signed=(True,), symmetric=(True,), narrow=(True,), granularity=("tensor",)),
    "deepspeed": dict(bits=(8, 4), signed=(True,), symmetric=(True, False), narrow=(False,),
                      granularity=("tensor", "group", "token")),
}


@st.composite
def quant_specs(draw, granularity: str | None = None, dialects=None):
    """A valid QuantSpec.

    dialects=None: any spec refquant can compute: a dialect or a hand-made spec with random
    overrides of every rule (bits 2..8, signedness, symmetry, range, rounding, mapping,
    zero-point rules, denominator, granularity).
    dialects=[names]: only what those stacks have (STACK_CHOICES): the dialect's own rules, with
    the bits, signedness, symmetry, range and granularity its users can pick. A stack under test
    given (x, scale, zero_point, axis, qmin, qmax) can reproduce every such spec.
    ``granularity`` fixes the granularity (tensor, channel, group, token); with ``dialects`` it
    must be one that at least one of them has."""
    g = granularity
    if dialects:
        unknown = [d for d in dialects if d not in STACK_CHOICES]
        if unknown:
            raise ValueError(f"quant_specs: unknown dialect(s) {unknown}; known: {', '.join(STACK_CHOICES)}")
        able = [d for d in dialects if g is None or g in STACK_CHOICES[d]["granularity"]]
        if not able:
            raise ValueError(f"quant_specs: none of the dialects {list(dialects)} has granularity {g!r}")
        name = draw(st.sampled_from(able))
        return _stack_spec(draw, name, g)
    base = draw(st.sampled_from(list(DIALECTS) + ["custom"]))
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    symmetric = draw(st.booleans())
    fields = dict(bits=bits, signed=signed, symmetric=symmetric,
                  narrow=signed and draw(st.booleans()),
                  rounding=draw(st.sampled_from(["half_even", "half_away"])))
    if symmetric:
        fields["mapping"] = draw(st.sampled_from(["divide", "reciprocal", "multiplier"]))
        fields["zero_point_add"] = draw(st.sampled_from(["after_round", "before_round"]))
        if not signed:
            fields["unsigned_symmetric"] = draw(st.sampled_from(["offset", "nonnegative"]))
    else:
        fields["mapping"] = draw(st.sampled_from(["divide", "reciprocal"]))
        fields["zero_point_add"] = draw(st.sampled_from(["after_round", "before_round", "float_offset"]))
        fields["zero_point_rule"] = draw(st.sampled_from(["offset_then_round", "round_then_offset"]))
        fields["include_zero"] = fields["zero_point_add"] != "float_offset" or draw(st.booleans())
    fields["denominator"] = draw(st.sampled_from(["qmax", "half_range", "pow2"]))
    g = g or draw(st.sampled_from(["tensor", "channel", "group", "token"]))
    fields["granularity"] = g
    if g == "token":
        fields["dynamic"] = True
    if g == "channel":
        fields["axis"] = 0
    if g == "group":
        if draw(st.booleans()):
            fields.update(group_kind="input", group_size=draw(st.integers(1, 5)), partial_group="allow")
        else:
            fields.update(group_kind="rows", num_groups=draw(st.sampled_from([1, 2, 3])))
    if fields["mapping"] != "multiplier":
        fields["degenerate_output"] = "scale"   # ModelOpt's zero multiplier needs its own mapping
    return QuantSpec(**fields) if base == "custom" else dialect(base, **fields)


def _stack_spec(draw, name: str, granularity: str | None) -> QuantSpec:
    """A spec of dialect ``name`` with only the choices its stack offers (STACK_CHOICES)."""
    choices = STACK_CHOICES[name]
    fields = {key: draw(st.sampled_from(choices[key])) for key in ("bits", "signed", "symmetric", "narrow")}
    g = granularity or draw(st.sampled_from(choices["granularity"]))
    fields["granularity"] = g
    if g == "channel":
        fields["axis"] = draw(st.sampled_from([0, -1]))
    elif g == "token":
        fields["dynamic"] = True
    elif g == "group" and name == "deepspeed":
        fields.update(group_kind="rows", num_groups=1)
    elif g == "group":
        fields.update(group_kind="input", group_size=draw(st.integers(1, 5)), axis=draw(st.sampled_from([0, -1])))
    return dialect(name, **fields)


def tensors(min_side: int = 1, max_side: int = 7, ndim: int = 2, elements=None):
    """float32 arrays mixing ordinary values in [-1000, 1000] with EDGE_VALUES."""
    elements = elements or st.one_of(st.floats(-1000, 1000, width=32, allow_subnormal=False),
                                     st.sampled_from(EDGE_VALUES).map(F32))
    return hnp.arrays(F32, hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=min_side,
                                            max_side=max_side), elements=elements)


INT8_STYLES = ("uniform", "extremes", "sparse")


def int8_matrix(rng, shape, style: str = "uniform") -> np.ndarray:
    """int8 values drawn with NumPy ``rng``: uniform, only the extremes -128 / 127, or mostly zero
    ("sparse"); about a fifth of the rows all zero."""
    if style == "extremes":
        m = rng.choice(np.array([-128, 127], np.int8), shape)
    elif style == "sparse":
        m = np.where(rng.random(shape) < 0.1, rng.integers(-128, 128, shape), 0).astype(np.int8)
    else:
        m = rng.integers(-128, 128, shape, dtype=np.int8)
    if shape[0] > 1:
        m[rng.random(shape[0]) < 0.2] = 0
    return m


@st.composite
def gemm_problems(draw, max_m: int = 40, max_k: int = 200, max_n: int = 70, bias: bool | None = None):
    """An integer GEMM with its epilogue, as a dict: a int8 [M, K], w int8 [N, K], s_a float32
    [M] (per token) or 0-d (per tensor), s_w float32 [N], bias float32 [N] or None. M, K, N
    include 1 and values off the 4 / 16 / 64 tile sizes; values: uniform, only -128 / 127, or
    sparse, with some all-zero rows; scales ordinary, tiny (products underflow), huge or powers
    of two. Built with NumPy from a drawn seed, so large shapes stay cheap to generate."""
    M = draw(st.one_of(st.just(1), st.integers(1, max_m)))
    K = draw(st.one_of(st.sampled_from([1, 3, 63, 65]), st.integers(1, max_k)))
    N = draw(st.one_of(st.just(1), st.integers(1, max_n)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    style = draw(st.sampled_from(INT8_STYLES))

    def scales(n):
        kind = draw(st.sampled_from(["plain", "tiny", "huge", "pow2"]))
        exp = {"plain": (-12, 0), "tiny": (-80, -60), "huge": (55, 70), "pow2": (-20, 4)}[kind]
        v = 2.0 ** rng.integers(*exp, n)
        return (v if kind == "pow2" else v * rng.uniform(1, 2, n)).astype(F32)

    with_bias = draw(st.booleans()) if bias is None else bias
    s_a = scales(M) if draw(st.booleans()) else scales(1).reshape(())
    return {"a": int8_matrix(rng, (M, K), style), "w": int8_matrix(rng, (N, K), style), "s_a": s_a, "s_w": scales(N),
            "bias": rng.standard_normal(N).astype(F32) if with_bias else None}


def _first(mask: np.ndarray) -> tuple:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def assert_bitexact(actual, expected, name: str = "tensor") -> None:
    """Same dtype, same shape, same bytes (NaN payloads and signed zeros included). On failure
    the message names the count of differing elements, the first index and both values."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.dtype != e.dtype or a.shape != e.shape:
        raise AssertionError(f"{name}: got {a.dtype} {list(a.shape)}, expected {e.dtype} {list(e.shape)}")
    u = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.kind in "fiub" else None
    differ = (a.view(u) != e.view(u)) if u is not None else (a != e)
    if differ.any():
        i = _first(differ)
        raise AssertionError(f"{name}: {int(differ.sum())} of {a.size} elements differ; first at index "
                             f"{list(i)}: got {a[i]!r}, expected {e[i]!r}")


def assert_within_quant_error(reference, test, qp: QParams, name: str = "tensor", ulps: int = 4) -> None:
    """``test`` is within the quantization error of ``qp`` from ``reference``: for every element,
    |reference - test| <= step / 2 + (distance of reference outside the grid's range) + ``ulps``
    float32 ulps of the magnitudes involved, where step is the grid's spacing (the scale, or
    1 / multiplier) expanded to the element. A correct fake-quant or dequantize(quantize(x))
    of reference passes; a result one step off does not."""
    r = np.asarray(reference, np.float64)
    t = np.asarray(test, np.float64)
    if r.shape != t.shape:
        raise AssertionError(f"{name}: test has shape {list(t.shape)}, reference {list(r.shape)}")
    spec = qp.spec
    step = expand(np.asarray(dequant_step(qp), np.float64), r.shape, spec)
    zp = expand(np.asarray(qp.zero_point, np.float64), r.shape, spec) if qp.zero_point is not None else 0.0
    lo, hi = (spec.qmin - zp) * step, (spec.qmax - zp) * step
    outside = np.maximum(lo - r, 0) + np.maximum(r - hi, 0)
    slack = ulps * float(np.finfo(F32).eps) * np.maximum(np.maximum(np.abs(r), np.abs(hi)), np.abs(lo))
    allowed = 0.5 * step + outside + slack
    err = np.abs(r - t)
    bad = ~(err <= allowed)  # NaN in test fails
    if bad.any():
        i = _first(bad)
        raise AssertionError(f"{name}: {int(bad.sum())} of {r.size} elements beyond the quantization error; "
                             f"first at index {list(i)}: reference {r[i]!r}, test {t[i]!r}, |diff| "
                             f"{err[i]!r} > allowed {allowed[i]!r} (step {step[i]!r})")
