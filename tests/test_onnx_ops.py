"""ONNX conformance of refquant's onnx pieces (issue 14): integer-only zero points and codes,
the onnx dialect's per-axis default, refquant.onnx_ops (MatMulInteger, QLinearMatMul) against
ONNX's reference evaluator and ONNX Runtime, ml_dtypes sub-byte arrays, ONNX int2 packing.

Every comparison is bytewise (dtype, shape and bytes)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import refquant as rq
import weights_io
from refquant import onnx_ops

onnx = pytest.importorskip("onnx")
ml_dtypes = pytest.importorskip("ml_dtypes")
from onnx import TensorProto as TP, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

F32 = np.float32
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TENSOR_TYPES = {np.dtype(np.uint8): TP.UINT8, np.dtype(np.int8): TP.INT8, np.dtype(np.float32): TP.FLOAT,
                np.dtype(np.float16): TP.FLOAT16, np.dtype(np.int32): TP.INT32,
                np.dtype(ml_dtypes.int4): TP.INT4, np.dtype(ml_dtypes.uint4): TP.UINT4,
                np.dtype(ml_dtypes.int2): TP.INT2, np.dtype(ml_dtypes.uint2): TP.UINT2}


def same_bytes(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@functools.lru_cache(maxsize=None)
def _model(op: str, in_types: tuple, out_type, opset: int, attrs: tuple = ()):
    names = [n for n, _ in in_types]
    node = helper.make_node(op, names, ["y"], **dict(attrs))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TENSOR_TYPES[np.dtype(t)], None) for n, t in in_types],
        [helper.make_tensor_value_info("y", TENSOR_TYPES[np.dtype(out_type)], None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)



def _types(feeds):
    return tuple((n, v.dtype) for n, v in feeds.items())


@functools.lru_cache(maxsize=None)
def _reference(op, in_types, out_type, opset, attrs=()):
    return ReferenceEvaluator(_model(op, in_types, out_type, opset, attrs))


@functools.lru_cache(maxsize=None)
def _session(op, in_types, out_type, opset):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(_model(op, in_types, out_type, opset).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run_reference(op, feeds, out_type, opset, **attrs):
    return _reference(op, _types(feeds), np.dtype(out_type), opset, tuple(sorted(attrs.items()))).run(None, feeds)[0]


def run_ort(op, feeds, out_type, opset):
    return _session(op, _types(feeds), np.dtype(out_type), opset).run(None, feeds)[0]


# --------------------------------------------------------------------------------------
# zero points and codes are integers (contract rule 5)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "float32", "float16"])
def test_float_zero_point_is_refused_with_one_line(dtype):
    dt = getattr(ml_dtypes, dtype, None) or np.dtype(dtype)
    zp = np.array([0, 1], dtype=dt)
    with pytest.raises(rq.DTypeError) as e:
        rq.QParams(np.array([1.0, 0.5], F32), zp, rq.dialect("onnx", granularity="channel", axis=0))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("QParams.zero_point: expected integers") and f"got dtype {np.dtype(dt)}" in msg
    assert "rule 5" in msg


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "float32"])
def test_float_code_array_is_refused_with_one_line(dtype):
    dt = getattr(ml_dtypes, dtype, None) or np.dtype(dtype)
    qp = rq.QParams(F32(1.0), np.uint8(0), rq.dialect("onnx"))
    with pytest.raises(rq.DTypeError) as e:
        rq.dequantize(np.array([1, 2], dtype=dt), qp, name="codes")
    assert "\n" not in str(e.value) and str(e.value).startswith("codes: expected integers")


def test_integral_float_zero_point_is_refused_too():
    with pytest.raises(rq.DTypeError, match=r"QParams.zero_point: expected integers .*got dtype float64"):
        rq.QParams(F32(1.0), 3.0, rq.dialect("onnx"))


# --------------------------------------------------------------------------------------
# the onnx dialect's per-axis default is ONNX's axis 1
# --------------------------------------------------------------------------------------
def _grid_values(draw, shape, scale_full, zp_full, qmin, qmax):
    """Ties at k + 0.5 steps, grid points, saturating values and zeros (power-of-two steps
    keep x / scale exact)."""
    k = np.array(draw(st.lists(st.integers(qmin - 4, qmax + 4), min_size=int(np.prod(shape)),
                               max_size=int(np.prod(shape))))).reshape(shape)
    half = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, -0.5, 0.25]), min_size=k.size,
                                  max_size=k.size))).reshape(shape)
    return ((k - zp_full + half) * scale_full).astype(F32)


@SETTINGS
@given(data=st.data(), signed=st.booleans())
def test_onnx_dialect_per_axis_default_is_axis_1(data, signed):
    spec = rq.dialect("onnx", granularity="channel", signed=signed)
    assert spec.axis == 1
    shape = (2, 3, 4)
    qmin, qmax = spec.qmin, spec.qmax
    scale = np.array([2.0 ** data.draw(st.integers(-140, 4)) for _ in range(3)], F32)  # subnormal too
    zp = np.array([data.draw(st.integers(qmin, qmax)) for _ in range(3)], spec.storage_dtype)
    x = _grid_values(data.draw, shape, scale.reshape(1, 3, 1), zp.astype(np.int64).reshape(1, 3, 1), qmin, qmax)
    expected = run_reference("QuantizeLinear", {"x": x, "s": scale, "z": zp}, zp.dtype, 21)  # no axis attribute
    qp = rq.QParams(scale, zp, spec)
    assert same_bytes(rq.quantize(x, qp), expected)
    deq = run_reference("DequantizeLinear", {"q": expected, "s": scale, "z": zp}, F32, 21)
    assert same_bytes(rq.dequantize(expected, qp), deq)


def test_onnx_dialect_axis_override_and_other_dialects_unchanged():
    assert rq.dialect("onnx", granularity="channel", axis=0).axis == 0
    assert rq.dialect("onnx", granularity="channel", axis=-1).axis == -1
    assert rq.dialect("onnx").axis is None
    assert rq.dialect("torch", granularity="channel").axis is None  # refquant's default, 0


# --------------------------------------------------------------------------------------
# MatMulInteger
# --------------------------------------------------------------------------------------
INT_TYPES = [np.uint8, np.int8]


@st.composite
def int_arrays(draw, dtype, shape):
    info = np.iinfo(dtype)
    edge = st.sampled_from([info.min, info.max, 0 if info.min < 0 else 1, info.min + 1])
    values = draw(st.lists(st.one_of(st.integers(info.min, info.max), edge), min_size=int(np.prod(shape)),
                           max_size=int(np.prod(shape))))
    return np.array(values, dtype=np.int64).reshape(shape).astype(dtype)


@st.composite
def matmul_problems(draw):
    dt_a, dt_b = draw(st.sampled_from(INT_TYPES)), draw(st.sampled_from(INT_TYPES))
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 6))
    batch = draw(st.sampled_from([(), (2,), (1, 3)]))
    a = draw(int_arrays(dt_a, batch + (m, k)))
    b = draw(int_arrays(dt_b, batch[-1:] + (k, n) if draw(st.booleans()) else (k, n)))
    if draw(st.booleans()):
        a[...] = 0  # all zero: the result is -a_zp times column sums of b
    return a, b


@SETTINGS
@given(problem=matmul_problems(), data=st.data())
def test_matmul_integer_matches_reference_and_onnxruntime(problem, data):
    a, b = problem
    a_zp = data.draw(int_arrays(a.dtype, ()))
    per_column = (b.shape[-1],) if b.ndim == 2 else b.shape[:-2] + (1, b.shape[-1])  # ORT: [N] only for 2-D b
    b_zp = data.draw(st.one_of(int_arrays(b.dtype, ()), int_arrays(b.dtype, per_column)))
    feeds = {"A": a, "B": b, "a_zero_point": a_zp, "b_zero_point": b_zp}
    ours = onnx_ops.matmul_integer(a, b, a_zp, b_zp)
    assert ours.dtype == np.int32
    assert same_bytes(ours, run_reference("MatMulInteger", feeds, np.int32, 10))
    assert same_bytes(ours, run_ort("MatMulInteger", feeds, np.int32, 10))
    # exact: the int64 product of the differences
    exact = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
    assert np.array_equal(ours, exact)


@SETTINGS
@given(problem=matmul_problems(), data=st.data())
def test_matmul_integer_per_row_a_zero_point(problem, data):
    """[..., M, 1] (what the schema names for N-D A) against ONNX's reference evaluator; the
    2-D form [M] must equal it (the evaluator would broadcast [M] along K; ORT refuses both)."""
    a, b = problem
    a_zp = data.draw(int_arrays(a.dtype, a.shape[:-1] + (1,)))
    ours = onnx_ops.matmul_integer(a, b, a_zp, None)
    expected = run_reference("MatMulInteger", {"A": a, "B": b, "a_zero_point": a_zp}, np.int32, 10)
    assert same_bytes(ours, expected)
    if a.ndim == 2:
        assert same_bytes(onnx_ops.matmul_integer(a, b, a_zp.reshape(-1), None), expected)


def test_matmul_integer_node_test_vector():
    a = np.array([[11, 7, 3], [10, 6, 2], [9, 5, 1], [8, 4, 0]], np.uint8)
    b = np.array([[1, 4], [2, 5], [3, 6]], np.uint8)
    out = onnx_ops.matmul_integer(a, b, np.array([12], np.uint8), np.array([0], np.uint8))
    assert same_bytes(out, np.array([[-38, -83], [-44, -98], [-50, -113], [-56, -128]], np.int32))


def test_matmul_integer_refusals_are_one_line():
    u8 = np.zeros((2, 3), np.uint8)
    cases = [
        (rq.DTypeError, "MatMulInteger A: expected int8 or uint8, got dtype int16",
         lambda: onnx_ops.matmul_integer(u8.astype(np.int16), u8.T)),
        (rq.DTypeError, "MatMulInteger a_zero_point: expected dtype uint8",
         lambda: onnx_ops.matmul_integer(u8, u8.T, np.int8(0))),
        (rq.DTypeError, "MatMulInteger b_zero_point: expected integers",
         lambda: onnx_ops.matmul_integer(u8, u8.T, None, np.array(0, ml_dtypes.float8_e5m2))),
        (rq.DTypeError, "MatMulInteger A: expected int8 or uint8, got dtype int4",
         lambda: onnx_ops.matmul_integer(u8.astype(ml_dtypes.int4), u8.T)),
        (rq.DTypeError, "MatMulInteger B: expected integers .*got dtype float32",
         lambda: onnx_ops.matmul_integer(u8, u8.T.astype(F32))),
        (rq.ShapeError, "inner dimensions 3 and 2 differ", lambda: onnx_ops.matmul_integer(u8, u8)),
        (rq.ShapeError, r"MatMulInteger a_zero_point: shape \(3,\) does not fit a",
         lambda: onnx_ops.matmul_integer(u8, u8.T, np.zeros(3, np.uint8))),
        (rq.OutOfRangeError, "K must be <= 33025",
         lambda: onnx_ops.matmul_integer(np.zeros((1, 33026), np.uint8), np.zeros((33026, 1), np.uint8))),
    ]
    for error, pattern, call in cases:
        with pytest.raises(error, match=pattern) as e:
            call()
        assert "\n" not in str(e.value)
    # the K bound follows the zero points: int8 without them allows 128 * 128 * K < 2^31
    assert onnx_ops.matmul_integer(np.full((1, 33026), -128, np.int8), np.full((33026, 1), -128, np.int8))[0, 0] \
        == 33026 * 128 * 128


# --------------------------------------------------------------------------------------
# QLinearMatMul
# --------------------------------------------------------------------------------------
@st.composite
def qlinear_problems(draw, pow2=True):
    dt = draw(st.sampled_from(INT_TYPES))
    m, k, n = draw(st.integers(1, 5)), draw(st.integers(1, 8)), draw(st.integers(1, 5))
    batch = draw(st.sampled_from([(), (2,)]))
    a = draw(int_arrays(dt, batch + (m, k)))
    b = draw(int_arrays(dt, batch + (k, n)))
    sdt = draw(st.sampled_from([np.float32, np.float16]))
    if pow2:  # acc * m exact in both arithmetics: only the rounding rule decides, at exact ties
        sa, sb = (np.array([2.0 ** draw(st.integers(-8, 0))], sdt) for _ in range(2))
        sy = np.array([2.0 ** draw(st.integers(-14, 0))], sdt)
    else:
        sa, sb = (np.array([draw(st.floats(1e-3, 0.1))], sdt) for _ in range(2))
        sy = np.array([draw(st.floats(1e-3, 1.0))], sdt)
    zps = [draw(int_arrays(dt, (1,))) for _ in range(3)]
    return dict(a=a, a_scale=sa, a_zero_point=zps[0], b=b, b_scale=sb, b_zero_point=zps[1],
                y_scale=sy, y_zero_point=zps[2])


def _ties(feeds) -> int:
    """How many outputs sit exactly half-way (the float64 product is exact here)."""
    acc = onnx_ops.matmul_integer(feeds["a"], feeds["b"], feeds["a_zero_point"], feeds["b_zero_point"])
    m = (feeds["a_scale"] * feeds["b_scale"] / feeds["y_scale"]).astype(np.float64)
    v = acc * m
    return int(np.count_nonzero(np.abs(v - np.trunc(v)) == 0.5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feeds=st.one_of(qlinear_problems(pow2=True), qlinear_problems(pow2=False)))
def test_qlinear_matmul_matches_reference_and_onnxruntime(feeds):
    out_type = feeds["y_zero_point"].dtype
    ours = onnx_ops.qlinear_matmul(**feeds)
    assert same_bytes(ours, run_reference("QLinearMatMul", feeds, out_type, 21))
    ours_ort = onnx_ops.qlinear_matmul(**feeds, arithmetic="onnxruntime")
    assert same_bytes(ours_ort, run_ort("QLinearMatMul", feeds, out_type, 21))
    # the two stacks agree wherever no exact tie meets an odd output zero point (float32 scales,
    # power-of-two: every product exact)
    if feeds["a_scale"].dtype == np.float32 and int(feeds["y_zero_point"][0]) % 2 == 0:
        pow2 = all(np.frexp(feeds[s])[0][0] == 0.5 for s in ("a_scale", "b_scale", "y_scale"))
        if pow2:
            assert same_bytes(ours, ours_ort)


@SETTINGS
@given(feeds=qlinear_problems(pow2=True), data=st.data())
def test_qlinear_matmul_ties_with_odd_zero_point_split_the_stacks(feeds, data):
    """m = 2^-e makes every acc = 2^(e-1) (mod 2^e) an exact tie; with an odd output zero point
    the reference (zero point before rounding) and ORT (after) differ there, each reproduced."""
    feeds["a_scale"] = np.array([2.0 ** -data.draw(st.integers(1, 2))], F32)
    feeds["b_scale"] = feeds["y_scale"] = np.array([1.0], F32)
    info = np.iinfo(feeds["y_zero_point"].dtype)
    zp = data.draw(st.integers(info.min // 2, (info.max - 1) // 2)) * 2 + 1
    feeds["y_zero_point"] = np.array([zp], info.dtype)
    assume(_ties(feeds))
    acc = onnx_ops.matmul_integer(feeds["a"], feeds["b"], feeds["a_zero_point"], feeds["b_zero_point"])
    v = acc * np.float64(feeds["a_scale"][0])
    ref = np.clip(np.rint(v + zp), info.min, info.max).astype(info.dtype)       # zero point before rounding
    ort_rule = np.clip(np.rint(v) + zp, info.min, info.max).astype(info.dtype)  # after
    assert same_bytes(onnx_ops.qlinear_matmul(**feeds), ref)
    assert same_bytes(run_reference("QLinearMatMul", feeds, info.dtype, 21), ref)
    assert same_bytes(onnx_ops.qlinear_matmul(**feeds, arithmetic="onnxruntime"), ort_rule)
    assert same_bytes(run_ort("QLinearMatMul", feeds, info.dtype, 21), ort_rule)


def test_qlinear_matmul_tie_example():
    """acc = 5, m = 1/2: 2.5 + 1 rounds to 4 (ONNX reference), rint(2.5) + 1 = 3 (ORT)."""
    feeds = dict(a=np.array([[5]], np.uint8), a_scale=np.array([0.5], F32), a_zero_point=np.array([0], np.uint8),
                 b=np.array([[1]], np.uint8), b_scale=np.array([1.0], F32), b_zero_point=np.array([0], np.uint8),
                 y_scale=np.array([1.0], F32), y_zero_point=np.array([1], np.uint8))
    assert onnx_ops.qlinear_matmul(**feeds).tolist() == [[4]]
    assert run_reference("QLinearMatMul", feeds, np.uint8, 21).tolist() == [[4]]
    assert onnx_ops.qlinear_matmul(**feeds, arithmetic="onnxruntime").tolist() == [[3]]
    assert run_ort("QLinearMatMul", feeds, np.uint8, 21).tolist() == [[3]]


@SETTINGS
@given(data=st.data())
def test_qlinear_matmul_per_column_b(data):
    feeds = data.draw(qlinear_problems(pow2=data.draw(st.booleans())))
    b = feeds["b"]
    n = b.shape[-1]
    per_column = (n,) if b.ndim == 2 else b.shape[:-2] + (1, n)  # ORT: [N] only for a 2-D b
    sdt = feeds["b_scale"].dtype
    feeds["b_scale"] = np.array([2.0 ** data.draw(st.integers(-8, 0)) for _ in range(int(np.prod(per_column)))],
                                sdt).reshape(per_column)
    feeds["b_zero_point"] = data.draw(int_arrays(b.dtype, per_column))
    out_type = feeds["y_zero_point"].dtype
    assert same_bytes(onnx_ops.qlinear_matmul(**feeds), run_reference("QLinearMatMul", feeds, out_type, 21))
    assert same_bytes(onnx_ops.qlinear_matmul(**feeds, arithmetic="onnxruntime"),
                      run_ort("QLinearMatMul", feeds, out_type, 21))


@SETTINGS
@given(feeds=qlinear_problems(pow2=True), data=st.data())
def test_qlinear_matmul_subnormal_and_huge_scales(feeds, data):
    """float32 scales at both ends: subnormal multipliers (every output becomes the zero point,
    or a few steps from it) and huge operand scales against a huge y_scale."""
    tiny = st.floats(1e-45, 1e-38).map(F32)
    huge = st.floats(1e20, 1e30).map(F32)
    kind = data.draw(st.sampled_from(["subnormal", "huge"]))
    if kind == "subnormal":
        feeds["a_scale"], feeds["b_scale"] = np.array([data.draw(tiny)]), np.array([data.draw(st.floats(0.5, 4).map(F32))])
        feeds["y_scale"] = np.array([data.draw(st.floats(1e-6, 1.0).map(F32))])
    else:
        feeds["a_scale"], feeds["b_scale"] = np.array([data.draw(huge)]), np.array([data.draw(st.floats(0.01, 1).map(F32))])
        feeds["y_scale"] = np.array([data.draw(huge)])
    out_type = feeds["y_zero_point"].dtype
    assert same_bytes(onnx_ops.qlinear_matmul(**feeds), run_reference("QLinearMatMul", feeds, out_type, 21))
    assert same_bytes(onnx_ops.qlinear_matmul(**feeds, arithmetic="onnxruntime"),
                      run_ort("QLinearMatMul", feeds, out_type, 21))


@pytest.mark.parametrize("m,k,n", [(0, 3, 2), (2, 0, 3), (1, 1, 1)])
def test_matmul_ops_on_empty_and_single_element_shapes(m, k, n):
    a, b = np.full((m, k), 200, np.uint8), np.full((k, n), 3, np.uint8)
    zps = {"a_zero_point": np.array(7, np.uint8), "b_zero_point": np.array(1, np.uint8)}
    feeds = {"A": a, "B": b, **zps}
    assert same_bytes(onnx_ops.matmul_integer(a, b, **zps), run_reference("MatMulInteger", feeds, np.int32, 10))
    q = dict(a=a, a_scale=np.array([0.5], F32), a_zero_point=np.array([7], np.uint8), b=b,
             b_scale=np.array([0.25], F32), b_zero_point=np.array([1], np.uint8), y_scale=np.array([1.0], F32),
             y_zero_point=np.array([9], np.uint8))
    assert same_bytes(onnx_ops.qlinear_matmul(**q), run_reference("QLinearMatMul", q, np.uint8, 21))


def test_qlinear_matmul_refusals_are_one_line():
    base = dict(a=np.zeros((2, 3), np.uint8), a_scale=np.array([0.5], F32), a_zero_point=np.array([0], np.uint8),
                b=np.zeros((3, 2), np.uint8), b_scale=np.array([0.5], F32), b_zero_point=np.array([0], np.uint8),
                y_scale=np.array([1.0], F32), y_zero_point=np.array([0], np.uint8))
    cases = [
        (rq.DTypeError, "must share one dtype", dict(b_scale=np.array([0.5], np.float16))),
        (rq.ConfigError, "QLinearMatMul y_scale: every scale must be finite and > 0", dict(y_scale=np.array([0.0], F32))),
        (rq.ShapeError, "QLinearMatMul y_zero_point: expected one element", dict(y_zero_point=np.zeros(2, np.uint8))),
        (rq.DTypeError, "QLinearMatMul a_zero_point: expected integers",
         dict(a_zero_point=np.array([0], ml_dtypes.float8_e4m3fn))),
        (rq.DTypeError, "QLinearMatMul a_scale: expected float32 or float16", dict(a_scale=np.array([1], np.int32))),
        (rq.OutOfRangeError, "overflows float16",
         dict(a_scale=np.array([60000], np.float16), b_scale=np.array([60000], np.float16),
              y_scale=np.array([1], np.float16))),
        (rq.ConfigError, "arithmetic must be one of", dict(arithmetic="fast")),
    ]
    for error, pattern, change in cases:
        with pytest.raises(error, match=pattern) as e:
            onnx_ops.qlinear_matmul(**{**base, **change})
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------
# ml_dtypes int4 / uint4 / int2 / uint2 arrays (what onnx.numpy_helper returns)
# --------------------------------------------------------------------------------------
SUBBYTE = [("int4", 4, True), ("uint4", 4, False), ("int2", 2, True), ("uint2", 2, False)]


@pytest.mark.parametrize("name,bits,signed", SUBBYTE)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_ml_dtypes_subbyte_arrays_are_accepted(name, bits, signed, data):
    dt = getattr(ml_dtypes, name)
    spec = rq.dialect("onnx", bits=bits, signed=signed, granularity="channel", axis=0)
    scale = np.array([2.0 ** data.draw(st.integers(-10, 2)) for _ in range(3)], F32)
    zp = np.array([data.draw(st.integers(spec.qmin, spec.qmax)) for _ in range(3)]).astype(dt)
    x = _grid_values(data.draw, (3, 4), scale.reshape(3, 1), zp.astype(np.int64).reshape(3, 1), spec.qmin, spec.qmax)
    qp = rq.QParams(scale, zp, spec)  # an ml_dtypes zero point
    expected = run_reference("QuantizeLinear", {"x": x, "s": scale, "z": zp}, dt, 21, axis=0)
    q = rq.quantize(x, qp)
    assert same_bytes(q, expected.astype(spec.storage_dtype))
    # ml_dtypes codes dequantize as their int8 / uint8 values, and as ONNX's DequantizeLinear
    deq = run_reference("DequantizeLinear", {"q": expected, "s": scale, "z": zp}, F32, 21, axis=0)
    assert same_bytes(rq.dequantize(expected, qp), deq)
    assert same_bytes(rq.dequantize(expected, qp), rq.dequantize(q, qp))


def test_integer_values_converts_at_the_boundary():
    assert same_bytes(weights_io.integer_values(np.array([-8, 7], ml_dtypes.int4), "v"), np.array([-8, 7], np.int8))
    assert same_bytes(weights_io.integer_values(np.array([0, 3], ml_dtypes.uint2), "v"), np.array([0, 3], np.uint8))
    assert same_bytes(weights_io.integer_values(np.array([-2, 1], ml_dtypes.int2), "v"), np.array([-2, 1], np.int8))
    from refquant.kernels import reference
    w4 = np.array([[1, -1, -8], [7, 0, 3]], np.int8)
    assert same_bytes(reference.pack_w4(w4.astype(ml_dtypes.int4)), reference.pack_w4(w4))
    assert rq.analysis.saturation_rate(w4.astype(ml_dtypes.int4), -8, 7) == rq.analysis.saturation_rate(w4, -8, 7)
    for bad in (np.array([1.0], ml_dtypes.bfloat16), np.array([True]), np.array([1.0], ml_dtypes.float4_e2m1fn)):
        with pytest.raises(rq.DTypeError, match=f"v: expected integers .*got dtype {bad.dtype}"):
            weights_io.integer_values(bad, "v")


# --------------------------------------------------------------------------------------
# ONNX int2 packing
# --------------------------------------------------------------------------------------
shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@SETTINGS
@given(shape=shapes, data=st.data(), signed=st.booleans())
def test_int2_packing_round_trip_and_equals_onnx(shape, data, signed):
    lo, hi = (-2, 1) if signed else (0, 3)
    n = int(np.prod(shape))
    values = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)),
                      np.int8 if signed else np.uint8).reshape(shape)
    packed = weights_io.pack_int2_onnx(values)
    assert packed.dtype == np.uint8 and packed.shape == (-(-n // 4),)
    assert same_bytes(weights_io.unpack_int2_onnx(packed, shape, signed=signed), values)
    as_ml = values.astype(ml_dtypes.int2 if signed else ml_dtypes.uint2)
    proto = numpy_helper.from_array(as_ml, "t")
    assert proto.raw_data == packed.tobytes()
    assert same_bytes(weights_io.pack_int2_onnx(as_ml), packed)  # ml_dtypes input packs the same
    assert same_bytes(numpy_helper.to_array(proto).astype(values.dtype), values)


def test_int2_packing_known_bytes_and_refusals():
    # first element in the lowest two bits: [1, -1, -2, 0] -> 0b00_10_11_01
    assert weights_io.pack_int2_onnx(np.array([1, -1, -2, 0], np.int8)).tolist() == [0b00101101]
    assert weights_io.pack_int2_onnx(np.array([3, 0, 0, 0, 2], np.uint8)).tolist() == [3, 2]
    assert weights_io.unpack_int2_onnx(np.array([0b00101101], np.uint8), 4).tolist() == [1, -1, -2, 0]
    with pytest.raises(rq.OutOfRangeError, match=r"pack_int2_onnx: value 2 at index \(1,\) is outside the int2 range \[-2, 1\]"):
        weights_io.pack_int2_onnx(np.array([0, 2], np.int8))
    with pytest.raises(rq.ShapeError, match="unpack_int2_onnx: 5 int2 values need 2 bytes, got 1"):
        weights_io.unpack_int2_onnx(np.array([0], np.uint8), 5)
    with pytest.raises(rq.DTypeError, match="pack_int2_onnx: expected integers"):
        weights_io.pack_int2_onnx(np.array([0.0]))
