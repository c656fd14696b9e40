"""refquant.testing: the strategies draw what they promise, and the assertions catch what
they should (and pass what they should)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import refquant as rq
from refquant.kernels import cpu, reference as ref
from refquant.quant import expand
from refquant.testing import (STACK_CHOICES, assert_bitexact, assert_within_quant_error, gemm_problems,
                              quant_specs, tensors)

F32 = np.float32


@settings(max_examples=150, deadline=None)
@given(spec=quant_specs(), x=tensors())
def test_fake_quant_is_within_the_quantization_error_and_one_step_off_is_not(spec, x):
    if spec.symmetric and not spec.signed and spec.unsigned_symmetric == "nonnegative":
        x = np.abs(x)
    try:
        qp = rq.choose_qparams(x, spec)
    except (rq.ConfigError, rq.ShapeError):
        assume(False)
    y = rq.fake_quant(x, qp)
    assert_within_quant_error(x, y, qp)
    assert_within_quant_error(x, rq.dequantize(rq.quantize(x, qp), qp), qp)
    # one step further from x, at one element: caught
    step = expand(np.asarray(ref.dequant_step(qp), np.float64), x.shape, spec)
    i = np.unravel_index(0, x.shape)
    assume(np.isfinite(step[i]) and 0 < step[i] < 1e30)
    away = -1.0 if float(x[i]) >= float(y[i]) else 1.0
    bad = y.copy()
    bad[i] = F32(float(y[i]) + away * 1.01 * float(step[i]))
    assume(abs(float(bad[i]) - float(x[i])) > abs(float(y[i]) - float(x[i])) + 0.6 * float(step[i]))
    with pytest.raises(AssertionError, match="beyond the quantization error; first at index"):
        assert_within_quant_error(x, bad, qp)


def test_assert_bitexact_sees_signed_zeros_nan_payloads_dtype_and_shape():
    a = np.array([0.0, 1.0, np.nan], F32)
    assert_bitexact(a, a.copy())
    with pytest.raises(AssertionError, match=r"1 of 3 elements differ; first at index \[0\]"):
        assert_bitexact(np.array([-0.0, 1.0, np.nan], F32), a)
    other_nan = a.copy()
    other_nan.view(np.uint32)[2] ^= 1
    with pytest.raises(AssertionError, match=r"index \[2\]"):
        assert_bitexact(other_nan, a)
    with pytest.raises(AssertionError, match="float64"):
        assert_bitexact(a.astype(np.float64), a)
    with pytest.raises(AssertionError, match=r"\[1, 3\]"):
        assert_bitexact(a[None], a)


@settings(max_examples=40, deadline=None)
@given(problem=gemm_problems())
def test_gemm_problems_feed_the_kernels(problem):
    a, w, s_a, s_w, b = (problem[k] for k in ("a", "w", "s_a", "s_w", "bias"))
    assert a.dtype == w.dtype == np.int8 and a.shape[1] == w.shape[1] and s_w.shape == (w.shape[0],)
    with np.errstate(all="ignore"):
        want = ref.linear_i8(a, s_a, w, s_w, b)
        assert_bitexact(cpu.linear_i8(a, s_a, w, s_w, b), want, "linear_i8")
    assert_bitexact(ref.gemm_i8(a, w), (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32))


@settings(max_examples=60, deadline=None)
@given(spec=quant_specs(granularity="channel", dialects=["onnx", "torch"]))
def test_quant_specs_respects_granularity_and_dialects(spec):
    assert spec.granularity == "channel" and spec.axis in (0, -1) and spec.dialect in ("onnx", "torch")


@settings(max_examples=200, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(STACK_CHOICES)))
def test_a_dialects_specs_keep_its_own_rules_and_are_computable(data, name):
    """Drawn for a dialect: only the fields its users can choose differ from the preset, and
    choose_qparams accepts the spec on any drawn tensor."""
    spec = data.draw(quant_specs(dialects=[name]))
    choices = STACK_CHOICES[name]
    preset = rq.dialect(name, bits=spec.bits, signed=spec.signed, symmetric=spec.symmetric, narrow=spec.narrow,
                        granularity=spec.granularity, axis=spec.axis, dynamic=spec.dynamic,
                        group_kind=spec.group_kind, group_size=spec.group_size, num_groups=spec.num_groups)
    assert spec == preset
    assert spec.bits in choices["bits"] and spec.signed in choices["signed"]
    assert spec.symmetric in choices["symmetric"] and spec.narrow in choices["narrow"]
    assert spec.granularity in choices["granularity"]
    x = data.draw(tensors())
    rq.fake_quant(x, rq.choose_qparams(x, spec))


@settings(max_examples=1)
@given(data=st.data())
def test_quant_specs_refuses_a_granularity_no_dialect_has(data):
    with pytest.raises(ValueError, match="q8bert"):
        data.draw(quant_specs(granularity="channel", dialects=["q8bert"]))
