"""Each dialect against facts about its stack (docs/stacks.md), as known vectors.

Expected values were computed by the stacks' own code where noted (validation/conformance
re-checks them against the live libraries); the rest follow from the cited formulas.
"""
from fractions import Fraction

import numpy as np
import pytest

import refquant as rq

F32 = np.float32


def bits_equal(a, b):
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


# --- ONNX ---------------------------------------------------------------------------------
def test_onnx_dynamic_quantize_linear_doc_vector():
    x = np.array([0, 2, -3, -2.5, 1.34, 0.5], F32)
    qp = rq.choose_qparams(x, rq.dialect("onnx"))
    assert bits_equal(qp.scale, F32(0.019607844))
    assert int(qp.zero_point) == 153
    q = rq.quantize(x, qp)
    assert q.dtype == np.uint8
    assert q.tolist() == [153, 255, 0, 26, 221, 179]


def test_onnx_all_zero_scale_is_one_over_255():
    qp = rq.choose_qparams(np.zeros(5, F32), rq.dialect("onnx"))
    assert bits_equal(qp.scale, F32(1) / F32(255)) and int(qp.zero_point) == 0


def test_onnx_cast_before_clip_artifact_only_on_request():
    x = np.array([1e10, -1e10, np.inf, np.nan, 300], F32)
    spec = rq.dialect("onnx", signed=True, stack_artifacts=True)
    assert rq.quantize(x, rq.QParams(F32(1), np.int8(0), spec)).tolist() == [-128, -128, -128, -128, 127]
    plain = rq.dialect("onnx", signed=True)
    assert rq.quantize(x[[0, 1, 4]], rq.QParams(F32(1), 0, plain)).tolist() == [127, -128, 127]
    with pytest.raises(rq.NonFiniteError, match=r"element \(2,\)"):
        rq.quantize(x, rq.QParams(F32(1), 0, plain))


def test_onnx_blocked_allows_a_partial_last_block():
    spec = rq.dialect("onnx", signed=True, granularity="group", group_size=3, axis=1)
    x = np.arange(10, dtype=F32).reshape(2, 5)
    qp = rq.choose_qparams(x, spec)
    assert qp.scale.shape == (2, 2)
    with pytest.raises(rq.ShapeError, match="group_size 3"):
        rq.choose_qparams(x, rq.QuantSpec(granularity="group", group_size=3))


# --- the divide / reciprocal / multiplier mappings (FBGEMM QuantUtils.h comment) -----------
def test_fbgemm_tie_reciprocal_gives_128_divide_gives_127():
    s, x = F32(0.00214854861), np.array([0.273939937], F32)
    assert rq.quantize(x, rq.QParams(s, 0, rq.dialect("torch", signed=False, symmetric=False))).tolist() == [128]
    assert rq.quantize(x, rq.QParams(s, np.uint8(0), rq.dialect("onnx"))).tolist() == [127]


# --- PyTorch ------------------------------------------------------------------------------
def test_torch_qint8_symmetric_scale_is_absmax_over_127_5_floored_at_eps():
    x = np.array([0.5, -2.0, 1.0], F32)
    qp = rq.choose_qparams(x, rq.dialect("torch"))
    assert bits_equal(qp.scale, F32(2.0) / F32(127.5)) and int(qp.zero_point) == 0
    # 1/s rounds to 63.749996 in float32, so -amax lands at -127.49999 -> -127 (not -128)
    assert rq.quantize(x, qp).tolist() == [32, -127, 64]
    tiny = rq.choose_qparams(np.array([1e-9, -1e-9], F32), rq.dialect("torch"))
    assert bits_equal(tiny.scale, F32(np.finfo(F32).eps))
    zero = rq.choose_qparams(np.zeros(3, F32), rq.dialect("torch"))
    assert bits_equal(zero.scale, F32(np.finfo(F32).eps)) and int(zero.zero_point) == 0


def test_torch_quint8_symmetric_zero_point_128_and_affine_rule():
    qp = rq.choose_qparams(np.array([-1.0, 3.0], F32), rq.dialect("torch", signed=False))
    assert int(qp.zero_point) == 128 and bits_equal(qp.scale, F32(3) / F32(127.5))
    aff = rq.choose_qparams(np.array([-1.0, 3.0], F32), rq.dialect("torch", signed=False, symmetric=False))
    s = F32(4) / F32(255)
    assert bits_equal(aff.scale, s)
    assert int(aff.zero_point) == 0 - int(np.rint(F32(-1) / s))


def test_torch_nonfinite_artifacts_per_operation():
    """Measured on torch 2.13 (x86) by validation/conformance/check_torch.py."""
    x = np.array([np.nan, np.inf, -np.inf, 1.0, 1e30], F32)
    per_channel = rq.dialect("torch", op="fake_quantize_per_channel", stack_artifacts=True)
    assert rq.quantize(x, rq.QParams(F32(0.1), 0, per_channel)).tolist() == [-128, -128, -128, 10, -128]
    per_tensor = rq.dialect("torch", stack_artifacts=True)
    assert rq.quantize(x, rq.QParams(F32(0.1), 0, per_tensor)).tolist() == [-128, 127, -128, 10, 127]
    real = rq.dialect("torch", op="quantize_per_tensor", stack_artifacts=True)
    assert rq.quantize(x, rq.QParams(F32(0.1), 0, real)).tolist() == [127, 127, -128, 10, 127]
    with pytest.raises(rq.ConfigError, match="not reproduced"):
        rq.dialect("torch", op="quantize_per_channel", stack_artifacts=True)


def test_torch_quantize_per_tensor_adds_the_zero_point_inside_one_fma():
    """x = 99.5, s = 1, zp = 95: fake_quantize gives rint(99.5) + 95 = 195; quantize_per_tensor
    rounds fma(x, 1, 95) = 194.5 to 194; quantize_per_channel rounds 99.5 + 95 the same way."""
    x = np.array([99.5], F32)
    ops = {"fake_quantize_per_tensor": 195, "quantize_per_tensor": 194, "quantize_per_channel": 194}
    for op, expected in ops.items():
        spec = rq.dialect("torch", op=op, signed=False, symmetric=False)
        assert rq.quantize(x, rq.QParams(F32(1), 95, spec)).tolist() == [expected], op
    # the fused rounding matters: x * (1/s) rounded to float32 first lands elsewhere
    x, s = np.array([0xC3247E15], np.uint32).view(F32), F32(2.0690882)  # -164.49251
    fused = rq.dialect("torch", op="quantize_per_tensor", signed=False, symmetric=False)
    assert rq.quantize(x, rq.QParams(s, 100, fused)).tolist() == [21]


def round_to_float32_exactly(value: Fraction) -> np.float32:
    """The float32 nearest to a rational, ties to even (no double rounding through float64)."""
    r = F32(float(value))
    candidates = [np.nextafter(r, F32(-np.inf)), r, np.nextafter(r, F32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.uint32)) & 1))


def test_fma_float32_rounds_once_exactly():
    u = 2.0 ** -23
    # a*b = 2^-24 - 2^-70: a*b + c sits a hair below the midpoint of c and its successor; float64
    # rounds the sum onto the midpoint, and a naive float32 cast would then go up to the even one.
    a, b, c = np.array([1 + u], F32), np.array([2.0 ** -24 * (1 - u)], F32), np.array([1 + u], F32)
    assert rq.quant.fma_float32(a, b, c)[0] == F32(1 + u)
    assert (a.astype(np.float64) * b + c.astype(np.float64)).astype(F32)[0] == F32(1 + 2 * u)
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(3000).astype(F32) for _ in range(3))
    want = np.array([round_to_float32_exactly(Fraction(float(p)) * Fraction(float(q)) + Fraction(float(r)))
                     for p, q, r in zip(a, b, c)], F32)
    got = rq.quant.fma_float32(a, b, c)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_zero_point_order_differs_at_ties_with_odd_zero_point():
    """rint(x/s) + zp (ONNX, PyTorch) vs rint(x/s + zp) (compressed-tensors)."""
    x, s = np.array([2.5], F32), F32(1)
    after = rq.QuantSpec(symmetric=False, zero_point_add="after_round")
    before = after.replace(zero_point_add="before_round")
    assert rq.quantize(x, rq.QParams(s, 1, after)).tolist() == [3]    # rint(2.5) = 2, + 1
    assert rq.quantize(x, rq.QParams(s, 1, before)).tolist() == [4]   # rint(3.5) = 4


def test_affine_zero_point_rules_differ_when_qmin_is_odd():
    spec = rq.QuantSpec(symmetric=False, narrow=True)  # qmin = -127
    mn, mx = np.array(-2.5, F32), np.array(2.5, F32)
    # force scale 1 via a 254-wide range: (2.5 - -2.5) / 254 is not 1; use qparams by hand:
    s = F32(1)
    a = np.rint(np.clip(F32(-127) - mn / s, -127, 127))      # offset_then_round: rint(-124.5) = -124
    b = np.clip(F32(-127) - np.rint(mn / s), -127, 127)       # round_then_offset: -127 + 2 = -125
    assert a == -124 and b == -125
    got_a = rq.qparams_from_minmax(mn, mx, spec)
    got_b = rq.qparams_from_minmax(mn, mx, spec.replace(zero_point_rule="round_then_offset"))
    s2 = F32(5) / F32(254)
    assert int(got_a.zero_point) == int(np.rint(np.clip(F32(-127) - mn / s2, -127, 127)))
    assert int(got_b.zero_point) == int(np.clip(F32(-127) - np.rint(mn / s2), -127, 127))


# --- NVIDIA ModelOpt / pytorch-quantization -------------------------------------------------
def test_modelopt_amax_maps_to_127_and_dequantizes_by_dividing():
    amax = F32(3.7)
    spec = rq.dialect("modelopt", narrow=True)
    qp = rq.qparams_from_amax(amax, spec)
    m = F32(127) / amax
    assert bits_equal(qp.multiplier, m)
    x = np.array([3.7, -3.7, 1.234567, 100.0], F32)
    q = rq.quantize(x, qp)
    assert q.tolist() == [127, -127, int(np.rint(F32(1.234567) * m)), 127]
    assert bits_equal(rq.fake_quant(x, qp), q.astype(F32) / m)


def test_modelopt_tiny_amax_gives_zero_output_and_float_domain_keeps_negative_zero():
    spec = rq.dialect("modelopt")
    qp = rq.qparams_from_amax(F32(2.0 ** -24), spec)  # <= 2^-24: multiplier 0, every output 0
    assert qp.multiplier == 0 and qp.scale == 1
    y = rq.fake_quant(np.array([2.0 ** -25, -(2.0 ** -26), 10.0, -3.0], F32), qp)
    assert np.all(y == 0) and np.signbit(y).tolist() == [False, True, False, True]
    qp = rq.qparams_from_amax(F32(1.0), spec)
    y = rq.fake_quant(np.array([-0.001], F32), qp)
    assert y[0] == 0 and np.signbit(y[0])  # ModelOpt: round(-0.127) = -0.0, / m stays -0.0
    t = rq.fake_quant(np.array([-0.001], F32), rq.QParams(F32(1) / F32(127), 0, rq.dialect("torch")))
    assert t[0] == 0 and not np.signbit(t[0])  # PyTorch: (int - zp) * s = +0.0


def test_modelopt_unsigned_refuses_negative_inputs():
    with pytest.raises(rq.ConfigError, match="nonnegative"):
        rq.choose_qparams(np.array([-1.0, 2.0], F32), rq.dialect("modelopt", signed=False))
    qp = rq.choose_qparams(np.array([0.0, 2.0], F32), rq.dialect("modelopt", signed=False))
    assert rq.quantize(np.array([2.0], F32), qp).tolist() == [255] and int(qp.zero_point) == 0


# --- compressed-tensors ---------------------------------------------------------------------
def test_compressed_tensors_symmetric_scale_127_5_and_int4_7_5():
    x = np.array([1.0, -3.0], F32)
    assert bits_equal(rq.choose_qparams(x, rq.dialect("compressed_tensors")).scale, F32(3) / F32(127.5))
    qp4 = rq.choose_qparams(x, rq.dialect("compressed_tensors", bits=4))
    assert bits_equal(qp4.scale, F32(3) / F32(7.5))
    assert rq.quantize(x, qp4).tolist() == [int(np.rint(F32(1) / qp4.scale)), -8]


def test_compressed_tensors_zero_scale_becomes_float32_eps_and_groups_must_divide():
    qp = rq.choose_qparams(np.zeros((2, 4), F32), rq.dialect("compressed_tensors"))
    assert bits_equal(qp.scale, F32(np.finfo(F32).eps))
    spec = rq.dialect("compressed_tensors", granularity="group", group_size=4)
    with pytest.raises(rq.ShapeError):
        rq.choose_qparams(np.ones((2, 6), F32), spec)
    with pytest.raises(rq.ShapeError):  # 0.20.0 refuses a row shorter than a group too
        rq.choose_qparams(np.ones((2, 3), F32), spec)
    assert rq.choose_qparams(np.ones((2, 8), F32), spec).scale.shape == (2, 2)


def test_compressed_tensors_token_artifact_2d_is_per_tensor():
    x = np.array([[1.0, -2.0], [10.0, 0.5]], F32)
    art = rq.choose_qparams(x, rq.dialect("compressed_tensors", granularity="token", dynamic=True,
                                          stack_artifacts=True))
    assert np.all(art.scale == F32(10) / F32(127.5))
    plain = rq.choose_qparams(x, rq.dialect("compressed_tensors", granularity="token", dynamic=True))
    assert plain.scale.tolist() == [F32(2) / F32(127.5), F32(10) / F32(127.5)]


# --- Q8BERT -------------------------------------------------------------------------------
def test_q8bert_scale_127_over_max_narrow_range():
    x = np.array([0.8, -0.8, 0.4, 0.0031496], F32)
    qp = rq.choose_qparams(x, rq.dialect("q8bert"))
    m = F32(127) / F32(0.8)
    assert bits_equal(qp.multiplier, m)
    q = rq.quantize(x, qp)
    assert q.tolist()[:3] == [127, -127, int(np.rint(F32(0.4) * m))]
    assert bits_equal(rq.fake_quant(x, qp), q.astype(F32) / m)


def test_q8bert_multiplier_is_reciprocal_times_127_as_torch_computes_int_over_tensor():
    """nlp-architect's 127 / threshold is threshold.reciprocal() * 127 in PyTorch (1 ulp apart)."""
    thr = np.array([0.19482636, 0.7, 3.3, 1e-3, 0.0917], F32)
    rec = (F32(1) / thr) * F32(127)
    div = F32(127) / thr
    assert np.any(rec != div)  # the two forms really differ on some of these
    for t, want in zip(thr, rec):
        qp = rq.qparams_from_amax(t, rq.dialect("q8bert"))
        assert bits_equal(qp.multiplier, want)
        assert bits_equal(rq.qparams_from_amax(t, rq.dialect("modelopt")).multiplier, F32(127) / t)


# --- DeepSpeed (ZeroQuant) ------------------------------------------------------------------
def test_deepspeed_symmetric_clips_the_max_by_one_step():
    x = np.array([1.0, -1.0, 0.5], F32)
    y8 = rq.fake_quant(x, rq.choose_qparams(x, rq.dialect("deepspeed")))
    assert y8.tolist() == [0.9921875, -1.0, 0.5]
    y4 = rq.fake_quant(x, rq.choose_qparams(x, rq.dialect("deepspeed", bits=4)))
    assert y4.tolist() == [0.875, -1.0, 0.5]


def test_deepspeed_row_groups_are_contiguous_output_rows():
    w = np.arange(24, dtype=F32).reshape(6, 4) - 10
    spec = rq.dialect("deepspeed", granularity="group", group_kind="rows", num_groups=3)
    qp = rq.choose_qparams(w, spec)
    assert qp.scale.tolist() == [F32(10) / F32(128), F32(5) / F32(128), F32(13) / F32(128)]
    with pytest.raises(rq.ShapeError, match="num_groups=5"):
        rq.choose_qparams(w, spec.replace(num_groups=5))


def test_deepspeed_asymmetric_float_zero_point():
    x = np.array([1.0, 2.0, 3.0, 1.5], F32)
    qp = rq.choose_qparams(x, rq.dialect("deepspeed", symmetric=False))
    scale = (F32(3) - F32(1)) / F32(256)
    assert bits_equal(qp.scale, scale)
    zp_f = F32(np.rint(F32(1) / scale)) * scale
    q = np.clip(np.rint((x - zp_f) / scale), 0, 255)
    assert rq.quantize(x, qp).tolist() == q.astype(int).tolist()
    assert bits_equal(rq.fake_quant(x, qp), q * scale + zp_f)


def test_deepspeed_asymmetric_offset_keeps_negative_zero():
    """min / scale in (-0.5, 0): round gives -0.0, DeepSpeed's float zero point is -0.0 * scale,
    and an output of 0 comes out as -0.0 (an integer zero point could not say so)."""
    x = np.array([-0.001, 1.0, 0.5, -0.0], F32)
    qp = rq.choose_qparams(x, rq.dialect("deepspeed", symmetric=False))
    assert int(qp.zero_point) == 0 and np.signbit(qp.offset)
    y = rq.fake_quant(np.array([-0.0001], F32), qp)
    assert y[0] == 0 and np.signbit(y[0])


# --- the API --------------------------------------------------------------------------------
def test_dialect_overrides_and_errors():
    spec = rq.dialect("torch", granularity="channel", axis=0)
    assert spec.granularity == "channel" and spec.mapping == "reciprocal" and spec.dialect == "torch"
    with pytest.raises(rq.ConfigError, match="unknown dialect 'tf'"):
        rq.dialect("tf")
    with pytest.raises(rq.ConfigError, match="rounding"):
        rq.dialect("onnx", rounding="stochastic")
    with pytest.raises(rq.ConfigError, match="bits"):
        rq.QuantSpec(bits=9)
    with pytest.raises(TypeError):
        rq.dialect("onnx", no_such_field=1)
    for name in rq.DIALECTS:
        assert "Source" in rq.dialect_doc(name) or "source" in rq.dialect_doc(name) or ".py" in rq.dialect_doc(name)


def test_half_away_rounding_is_exact_near_one_half():
    spec = rq.QuantSpec(rounding="half_away")
    x = np.array([2.5, -2.5, 0.49999997, -0.49999997, 1.5, 126.5], F32)
    assert rq.quantize(x, rq.QParams(F32(1), 0, spec)).tolist() == [3, -3, 0, 0, 2, 127]
    assert rq.quantize(x, rq.QParams(F32(1), 0, rq.QuantSpec())).tolist() == [2, -2, 0, 0, 2, 126]


def test_bad_inputs_give_clear_errors():
    spec = rq.QuantSpec()
    with pytest.raises(rq.DTypeError, match="weight: expected a float array"):
        rq.choose_qparams(np.arange(4), spec, name="weight")
    with pytest.raises(rq.ConfigError, match="finite and > 0"):
        rq.QParams(F32(0), 0, spec)
    with pytest.raises(rq.ConfigError, match=r"\[-128, 127\]"):
        rq.QParams(F32(1), 300, spec.replace(symmetric=False))
    with pytest.raises(rq.ConfigError, match="fixes the zero point at 0; got 6"):
        rq.QParams(F32(0.25), 6, rq.dialect("torch"))  # once accepted, then ignored by quantize
    qp = rq.choose_qparams(np.ones((3, 4), F32), spec.replace(granularity="channel", axis=0))
    with pytest.raises(rq.ShapeError, match="do not fit"):
        rq.quantize(np.ones((5, 4), F32), qp)
    with pytest.raises(rq.OutOfRangeError, match="values must lie"):
        rq.dequantize(np.array([-128], np.int16), rq.QParams(F32(1), 0, spec.replace(narrow=True)))
