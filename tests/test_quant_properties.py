"""Property tests of the numeric core over every kind of QuantSpec (hypothesis).

Bit-exact claims compare bytes (views as unsigned integers), never with a tolerance.
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import refquant as rq
from refquant.quant import param_shape
from refquant.testing import quant_specs, tensors

F32 = np.float32


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))


specs = quant_specs  # the strategies users import from refquant.testing, tested here


def fits(x, spec):
    try:
        param_shape(x.shape, spec)
        return True
    except rq.ShapeError:
        return False


def choose(x, spec):
    """choose_qparams, skipping the one refused case: a DeepSpeed float zero point beyond int32."""
    try:
        return rq.choose_qparams(x, spec)
    except rq.ConfigError as e:
        assume("does not fit int32" not in str(e))
        raise


def nonneg_if_needed(x, spec):
    if spec.symmetric and not spec.signed and spec.unsigned_symmetric == "nonnegative":
        return np.abs(x)
    return x


@settings(max_examples=150, deadline=None)
@given(spec=specs(), data=st.data())
def test_dequantize_then_quantize_is_identity_on_every_code(spec, data):
    x = data.draw(tensors())
    assume(fits(x, spec))
    x = nonneg_if_needed(x, spec)
    qp = choose(x, spec)
    assume(np.all(qp.scale >= 2.0 ** -100) and np.all(qp.scale <= 2.0 ** 100))
    assume(qp.multiplier is None or np.all(qp.multiplier > 0))  # ModelOpt's amax ~ 0 slice has one code
    if spec.zero_point_add == "float_offset":  # q*s + o - o is exact only while o is not huge
        assume(np.all(np.abs(qp.zero_point) <= 2 ** 12))
    lo = spec.qmin if not (spec.symmetric and not spec.signed and spec.unsigned_symmetric == "nonnegative") else 0
    codes = data.draw(hnp.arrays(np.int64, x.shape, elements=st.integers(lo, spec.qmax)))
    q = codes.astype(spec.storage_dtype)
    assert same_bits(rq.quantize(rq.dequantize(q, qp), qp), q)


@settings(max_examples=150, deadline=None)
@given(spec=specs(), data=st.data())
def test_fake_quant_equals_dequantize_of_quantize(spec, data):
    x = data.draw(tensors())
    assume(fits(x, spec))
    x = nonneg_if_needed(x, spec)
    qp = choose(x, spec)
    fq = rq.fake_quant(x, qp)
    dq = rq.dequantize(rq.quantize(x, qp), qp)
    if spec.fake_quant_domain == "integer":
        assert same_bits(fq, dq)
    else:  # float-domain stacks keep -0.0 where the integer path gives +0.0: nothing else differs
        assert same_bits(fq + F32(0), dq + F32(0))
        assert not np.any(np.signbit(dq) & (dq == 0) & ~np.signbit(fq))


@settings(max_examples=150, deadline=None)
@given(spec=specs(), data=st.data())
def test_error_at_most_half_a_step_inside_the_range_and_monotonic(spec, data):
    x = data.draw(tensors(ndim=2))
    assume(fits(x, spec))
    x = nonneg_if_needed(x, spec)
    qp = choose(x, spec)
    assume(np.all(qp.scale >= 2.0 ** -60) and np.all(qp.scale <= 2.0 ** 60))
    scale = rq.quant.expand(qp.scale, x.shape, spec)
    zp = rq.quant.expand(qp.zero_point, x.shape, spec).astype(np.float64)
    # "inside the range": the real grid position lies within [qmin, qmax] (no clipping)
    pos = x.astype(np.float64) / scale.astype(np.float64) + (zp if spec.zero_point_add != "float_offset" else zp)
    inside = (pos >= spec.qmin) & (pos <= spec.qmax)
    fq = rq.fake_quant(x, qp).astype(np.float64)
    err = np.abs(fq - x.astype(np.float64))
    # half a step, plus float32 rounding of the two products involved (a few ulp of |x| and s)
    bound = scale.astype(np.float64) * (0.5 + 2.0 ** -20) + 4 * np.spacing(np.abs(x)).astype(np.float64)
    assert np.all(err[inside] <= bound[inside])
    # monotonic: along any row of a per-tensor spec, sorting x sorts fake_quant(x)
    if spec.granularity == "tensor":
        flat = np.sort(x.reshape(-1))
        out = rq.fake_quant(flat, rq.QParams(qp.scale, qp.zero_point, spec, qp.multiplier))
        assert np.all(np.diff(out.astype(np.float64)) >= 0)


@settings(max_examples=100, deadline=None)
@given(spec=specs(), data=st.data())
def test_zero_maps_to_the_zero_point_and_back_to_zero(spec, data):
    assume(spec.zero_point_add != "float_offset" or spec.include_zero)
    x = data.draw(tensors())
    assume(fits(x, spec))
    x = nonneg_if_needed(x, spec)
    x.reshape(-1)[0] = 0.0
    qp = choose(x, spec)
    if spec.zero_point_add == "float_offset":
        return  # DeepSpeed's asym grid contains 0 only if min <= 0 <= max, not guaranteed
    zeros = np.zeros_like(x)
    q = rq.quantize(zeros, qp)
    assert np.array_equal(q.astype(np.int64), rq.quant.expand(qp.zero_point, x.shape, spec).astype(np.int64))
    assert np.all(rq.fake_quant(zeros, qp) == 0)


@settings(max_examples=100, deadline=None)
@given(spec=specs(granularity="tensor"), data=st.data())
def test_group_equals_tensor_quantization_of_each_group(spec, data):
    """Input-dim groups of size g (partial tail allowed) and output-row groups."""
    x = nonneg_if_needed(data.draw(tensors(min_side=1, max_side=9)), spec)
    rows, cols = x.shape
    if data.draw(st.booleans()):
        g = data.draw(st.integers(1, cols))
        gspec = spec.replace(granularity="group", group_kind="input", group_size=g, axis=-1,
                             partial_group="allow")
        pieces = [(np.s_[:, i * g:(i + 1) * g]) for i in range(-(-cols // g))]
        per_row_pieces = True
    else:
        ng = data.draw(st.sampled_from([d for d in range(1, rows + 1) if rows % d == 0]))
        gspec = spec.replace(granularity="group", group_kind="rows", num_groups=ng)
        step = rows // ng
        pieces = [np.s_[i * step:(i + 1) * step, :] for i in range(ng)]
        per_row_pieces = False
    q = rq.quantize(x, choose(x, gspec))
    fq = rq.fake_quant(x, choose(x, gspec))
    for sl in pieces:
        if per_row_pieces:
            for r in range(rows):
                piece = x[r][sl[1]]
                qp = choose(piece, spec)
                assert same_bits(q[r][sl[1]], rq.quantize(piece, qp))
                assert same_bits(fq[r][sl[1]], rq.fake_quant(piece, qp))
        else:
            piece = x[sl]
            qp = choose(piece, spec)
            assert same_bits(q[sl], rq.quantize(piece, qp))
            assert same_bits(fq[sl], rq.fake_quant(piece, qp))


@settings(max_examples=100, deadline=None)
@given(spec=specs(granularity="tensor"), data=st.data())
def test_token_and_channel_equal_tensor_quantization_per_row(spec, data):
    x = nonneg_if_needed(data.draw(tensors(ndim=2)), spec)
    tspec = spec.replace(granularity="token", dynamic=True, token_2d_per_tensor=False)
    cspec = spec.replace(granularity="channel", axis=0)
    for other in (tspec, cspec):
        q = rq.quantize(x, choose(x, other))
        for r in range(x.shape[0]):
            assert same_bits(q[r], rq.quantize(x[r], choose(x[r], spec)))


@settings(max_examples=100, deadline=None)
@given(spec=specs(granularity="tensor"), k=st.integers(-300, 300), e=st.integers(-20, 20))
def test_ties_follow_the_rounding_rule(spec, k, e):
    """x exactly halfway between two codes (power-of-two scale makes x / s exact)."""
    assume(spec.mapping != "multiplier" and spec.zero_point_add != "float_offset")
    s = F32(2.0 ** e)
    lo = spec.qmin
    zp = 0 if spec.symmetric and spec.signed else lo + (spec.qmax - lo) // 2
    if spec.symmetric and not spec.signed:
        zp = 0 if spec.unsigned_symmetric == "nonnegative" else 2 ** (spec.bits - 1)
    x = F32((k + 0.5) * float(s))
    if spec.symmetric and not spec.signed and spec.unsigned_symmetric == "nonnegative":
        x = abs(x)
    qp = rq.QParams(s, zp, spec)
    q = int(rq.quantize(np.array([x]), qp)[0])
    t = float(x) / float(s)
    if spec.zero_point_add == "before_round":
        t += zp
    r = np.rint(t) if spec.rounding == "half_even" else np.sign(t) * np.floor(abs(t) + 0.5)
    if spec.zero_point_add == "after_round":
        r += zp
    assert q == int(np.clip(r, spec.qmin, spec.qmax))


@settings(max_examples=60, deadline=None)
@given(spec=specs(), data=st.data())
def test_nan_and_inf_raise_naming_the_first_index(spec, data):
    x = data.draw(tensors(min_side=2))
    assume(fits(x, spec))
    x = nonneg_if_needed(x, spec)
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    i = data.draw(st.integers(0, x.shape[0] - 1))
    j = data.draw(st.integers(0, x.shape[1] - 1))
    x[i, j] = bad
    qp = choose(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), spec)
    with pytest.raises(rq.NonFiniteError, match=rf"act: element \({i}, {j}\)"):
        rq.quantize(x, qp, name="act")
    with pytest.raises(rq.NonFiniteError):
        rq.choose_qparams(x, spec)
    if spec.nonfinite == "raise":
        with pytest.raises(rq.NonFiniteError):
            rq.fake_quant(x, qp)


# NaNs with every sign, payload and quietness: x86's default NaN, a signaling one, payloads
ODD_NANS = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFC01234, 0x7FFFFFFF], np.uint32).view(F32)


@settings(max_examples=100, deadline=None)
@given(dialect=st.sampled_from(["modelopt", "compressed_tensors", "q8bert", "deepspeed"]),
       granularity=st.sampled_from(["tensor", "token"]), data=st.data())
def test_fake_quant_lets_nan_through_as_the_canonical_nan(dialect, granularity, data):
    """Float-domain stacks with stack_artifacts=True propagate NaN through fake_quant (nonfinite
    "propagate"); what comes out is the one NaN of contract rule 12, whatever went in, and every
    other element is what the NaN-free tensor gives."""
    spec = rq.dialect(dialect, granularity=granularity, dynamic=granularity == "token", stack_artifacts=True)
    assert spec.nonfinite == "propagate"
    x = data.draw(tensors(min_side=2))
    where = data.draw(hnp.arrays(np.bool_, x.shape))
    assume(where.any())
    qp = choose(x, spec)
    clean = rq.fake_quant(x, qp)
    x[where] = data.draw(st.sampled_from(list(ODD_NANS)))
    y = rq.fake_quant(x, qp)
    assert np.all(y.view(np.uint32)[where] == 0x7FC00000)
    assert same_bits(y[~where], clean[~where])


@settings(max_examples=60, deadline=None)
@given(spec=specs(), shape=st.sampled_from([(0,), (0, 4), (3, 0)]))
def test_empty_tensors_pass_through(spec, shape):
    x = np.zeros(shape, F32)
    assume(fits(x, spec))
    qp = choose(x, spec)
    assert rq.quantize(x, qp).shape == shape
    assert rq.fake_quant(x, qp).shape == shape


@settings(max_examples=80, deadline=None)
@given(spec=specs(granularity="tensor"), data=st.data())
def test_saturation_at_both_ends(spec, data):
    x = nonneg_if_needed(data.draw(tensors()), spec)
    qp = choose(x, spec)
    assume(qp.multiplier is None or np.all(qp.multiplier > 0))  # ModelOpt's amax ~ 0: all zero
    big = np.array([3e38, -3e38, 1e30, -1e30], F32)
    big = nonneg_if_needed(big, spec)
    q = rq.quantize(big, qp).astype(np.int64)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax
    assert q[0] == spec.qmax
    if not (spec.symmetric and not spec.signed and spec.unsigned_symmetric == "nonnegative"):
        assert q[1] == spec.qmin


def test_all_zero_slices_get_the_documented_scale():
    for name in rq.DIALECTS:
        spec = rq.dialect(name)
        qp = rq.choose_qparams(np.zeros((3, 4), F32), spec)
        assert qp.scale == F32(spec.zero_scale), name
        assert np.all(rq.fake_quant(np.zeros((3, 4), F32), qp) == 0)
    custom = rq.QuantSpec(granularity="channel", axis=0)
    x = np.array([[0, 0], [1, -2]], F32)
    qp = rq.choose_qparams(x, custom)
    assert qp.scale[0] == 1.0 and qp.scale[1] == F32(2) / F32(127)
