"""ONNX's integer matrix products, as reference ops of the ``onnx`` dialect (pure NumPy).

``matmul_integer`` is MatMulInteger (opset 10) and ``qlinear_matmul`` is QLinearMatMul (opset
10 / 21), each one small function with its rule in its docstring. Sources: the operator
schemas (onnx/defs/math/defs.cc, onnx/defs/quantization/defs.cc) and ONNX's reference
evaluator (onnx/reference/ops/op_matmul_integer.py, op_qlinear_matmul.py); checked bit for bit
against that evaluator and against ONNX Runtime by tests/test_onnx_ops.py and
validation/conformance/check_onnx.py.

Shapes follow numpy.matmul (batch dimensions broadcast). Zero points and scales are per
tensor (a scalar or one element), per row of ``a`` ([M], or [..., M, 1] for an N-D a) or per
column of ``b`` ([N], or [..., 1, N] for an N-D b), as the schemas allow (a 1-D [M] / [N] applies
to every batch). Integer products are exact: operands minus zero points go through an int64
matmul, and K is bounded so that the int32 accumulator ONNX specifies cannot overflow (contract
rule 8: refquant raises, never wraps). Operands and zero points must have the operator's types
(int8 / uint8, a zero point of its operand's dtype); a float or float8 one is refused (rule 5).

Where ONNX's reference evaluator and ONNX Runtime disagree (QLinearMatMul's rounding order and
precision), refquant follows the reference evaluator by default and reproduces ONNX Runtime with
``arithmetic="onnxruntime"`` (see ``qlinear_matmul``).
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError, DTypeError, OutOfRangeError, ShapeError
from weights_io.int4 import integer_values

INT32_MAX = 2 ** 31 - 1
QUANT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))
SCALE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

__all__ = ["matmul_integer", "qlinear_matmul", "QLINEAR_ARITHMETIC", "QUANT_DTYPES", "SCALE_DTYPES"]


def _typed(x, dtypes, name: str, expected: str) -> np.ndarray:
    """``x`` as an array of one of ``dtypes``; a float or float8 array gets rule 5's message."""
    x = np.asarray(x)
    if x.dtype not in dtypes:
        integer_values(x, name)
        raise DTypeError(f"{name}: expected {expected}, got dtype {x.dtype}")
    return x


def _operand(x, name: str) -> np.ndarray:
    x = _typed(x, QUANT_DTYPES, name, "int8 or uint8")
    if x.ndim == 0:
        raise ShapeError(f"{name}: a matrix product needs at least 1 dimension, got a scalar")
    return x


def _per_slice(param, x: np.ndarray, side: str, name: str) -> np.ndarray:
    """``param`` (a zero point or scale) shaped to broadcast against ``x``: one element (per
    tensor), per row of a ([M] or [..., M, 1]) or per column of b ([N] or [..., 1, N])."""
    p = np.asarray(param)
    if p.size == 1:
        return p.reshape(())
    if x.ndim >= 2:
        slice_shape = (x.shape[-2], 1) if side == "a" else (1, x.shape[-1])
        if p.ndim == 1 and p.size == max(slice_shape):  # [M] / [N]: the same for every batch
            p = p.reshape((1,) * (x.ndim - 2) + slice_shape)
        if p.ndim == x.ndim and p.shape[-2:] == slice_shape and _broadcasts(p.shape[:-2], x.shape[:-2]):
            return p
    what = "per row of a: [M] or [..., M, 1]" if side == "a" else "per column of b: [N] or [..., 1, N]"
    raise ShapeError(f"{name}: shape {p.shape} does not fit {side} of shape {x.shape}; expected one "
                     f"element (per tensor) or {what}")


def _broadcasts(*shapes) -> bool:
    try:
        np.broadcast_shapes(*shapes)
        return True
    except ValueError:
        return False


def _zero_point(zp, x: np.ndarray, side: str, name: str) -> np.ndarray:
    if zp is None:
        return np.zeros((), np.int64)
    zp = _typed(zp, (x.dtype,), name, f"dtype {x.dtype} (the dtype of {side})")
    return _per_slice(zp, x, side, name).astype(np.int64)


def _widest_difference(x: np.ndarray, zp: np.ndarray) -> int:
    """max |q - zp| over the dtype's range and the given zero points (rule 8's bound)."""
    info = np.iinfo(x.dtype)
    return int(max(np.max(zp) - info.min, info.max - np.min(zp)))


def _exact_product(a, b, a_zp, b_zp, what: str) -> np.ndarray:
    """(a - a_zp) @ (b - b_zp) exactly (int64 matmul), refused when K could overflow int32."""
    k = a.shape[-1]
    k_b = b.shape[-2] if b.ndim >= 2 else b.shape[0]
    if k != k_b:
        raise ShapeError(f"{what}: a has shape {a.shape} and b {b.shape}: the inner dimensions "
                         f"{k} and {k_b} differ")
    if not _broadcasts(a.shape[:-2], b.shape[:-2]):
        raise ShapeError(f"{what}: the batch dimensions of a {a.shape} and b {b.shape} do not broadcast")
    bound = _widest_difference(a, a_zp) * _widest_difference(b, b_zp)
    if bound * k > INT32_MAX:
        raise OutOfRangeError(f"{what}: K = {k} products of magnitude up to {bound} may overflow the "
                              f"int32 accumulator (contract rule 8); K must be <= {INT32_MAX // bound}")
    return np.matmul(a.astype(np.int64) - a_zp, b.astype(np.int64) - b_zp)


def matmul_integer(a, b, a_zero_point=None, b_zero_point=None) -> np.ndarray:
    """ONNX MatMulInteger: ``Y = (A - a_zero_point) @ (B - b_zero_point)`` in int32, exactly.

    a, b            int8 or uint8 (each its own), numpy.matmul shapes (MatMulInteger has no
                    4-bit types: ml_dtypes int4 arrays are refused like any other dtype).
    a_zero_point    None (0), one element, or per row of A [..., M, K]: [M] or [..., M, 1];
                    the dtype of A.
    b_zero_point    None (0), one element, or per column of B [..., K, N]: [N] or [..., 1, N];
                    the dtype of B.
    Returns int32. Raises OutOfRangeError when K * max|A - a_zp| * max|B - b_zp| could exceed
    2^31 - 1 (the schema lets the int32 accumulation wrap; refquant does not, rule 8).

    ONNX's reference evaluator subtracts a 1-D a_zero_point along the LAST axis of A (plain
    broadcasting), i.e. per column of A, not per row as the schema says; refquant follows the
    schema. ONNX Runtime's CPU kernel refuses a per-row a_zero_point.
    """
    a = _operand(a, "MatMulInteger A")
    b = _operand(b, "MatMulInteger B")
    a_zp = _zero_point(a_zero_point, a, "a", "MatMulInteger a_zero_point")
    b_zp = _zero_point(b_zero_point, b, "b", "MatMulInteger b_zero_point")
    return _exact_product(a, b, a_zp, b_zp, "MatMulInteger").astype(np.int32)


def _scale(s, x: np.ndarray | None, side: str, name: str) -> np.ndarray:
    s = np.asarray(s)
    if s.dtype not in SCALE_DTYPES:
        raise DTypeError(f"{name}: expected float32 or float16, got dtype {s.dtype}")
    if s.size and not np.all(np.isfinite(s) & (s > 0)):
        bad = int(np.flatnonzero(~(np.isfinite(s) & (s > 0)))[0])
        raise ConfigError(f"{name}: every scale must be finite and > 0; element {bad} is "
                          f"{s.reshape(-1)[bad]!r}")
    if x is None:
        if s.size != 1:
            raise ShapeError(f"{name}: expected one element (the output is quantized per tensor), "
                             f"got shape {s.shape}")
        return s.reshape(())
    return _per_slice(s, x, side, name)


QLINEAR_ARITHMETIC = ("reference", "onnxruntime")


def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point,
                   arithmetic: str = "reference") -> np.ndarray:
    """ONNX QLinearMatMul, as ONNX's reference evaluator computes it (or as ONNX Runtime does).

    acc = (a - a_zero_point) @ (b - b_zero_point)            exact integer (int32, rule 8)
    arithmetic="reference" (default; onnx/reference/ops/op_qlinear_matmul.py):
      m = a_scale * b_scale / y_scale                        in the scales' dtype, left to right
                                                             (float16 scales: float16 arithmetic)
      y = saturate(rint(float64(acc) * float64(m) + y_zero_point))
          the product and the zero point's addition each rounded to float64 (NumPy promotes
          int32 x float to float64): the zero point is added BEFORE rounding; ties to even.
    arithmetic="onnxruntime" (ORT's CPU kernel, MLAS requantization; measured on ORT 1.32):
      m = float32(a_scale) * float32(b_scale) / float32(y_scale)   in float32
      y = saturate(rint(float32(float32(acc) * m)) + y_zero_point)
          float32 arithmetic, the zero point added AFTER rounding.
    saturate clips to the range of y_zero_point's dtype.

    The two differ where float32(acc) * m is an exact tie and y_zero_point is odd (reference:
    rint(2.5 + 1) = 4; ORT: rint(2.5) + 1 = 3), and where float16 or float32 rounding of m or of
    the product moves a value across a rounding boundary. The default follows the reference
    evaluator: it is ONNX's executable definition of the operator (``y = saturate(x / y_scale +
    y_zero_point)`` with round-half-even, the schema's words) and the source of the outputs stored
    in ONNX's node tests; ORT's order is an implementation choice of its kernel.

    a, b and their zero points: int8 or uint8 (zero point of the operand's dtype); a's scale and
    zero point per tensor or per row ([M] / [..., M, 1]), b's per tensor or per column
    ([N] / [..., 1, N]); y_scale and y_zero_point one element each. The three scales share one
    dtype, float32 or float16, finite and > 0 (the schema's bfloat16 and float8 types are not
    supported). Returns y with y_zero_point's dtype.
    """
    if arithmetic not in QLINEAR_ARITHMETIC:
        raise ConfigError(f"qlinear_matmul: arithmetic must be one of {', '.join(QLINEAR_ARITHMETIC)}; "
                          f"got {arithmetic!r}")
    a = _operand(a, "QLinearMatMul a")
    b = _operand(b, "QLinearMatMul b")
    a_zp = _zero_point(a_zero_point, a, "a", "QLinearMatMul a_zero_point")
    b_zp = _zero_point(b_zero_point, b, "b", "QLinearMatMul b_zero_point")
    y_zp = _typed(y_zero_point, QUANT_DTYPES, "QLinearMatMul y_zero_point", "int8 or uint8")
    if y_zp.size != 1:
        raise ShapeError(f"QLinearMatMul y_zero_point: expected one element (the output is quantized "
                         f"per tensor), got shape {y_zp.shape}")
    s_a = _scale(a_scale, a, "a", "QLinearMatMul a_scale")
    s_b = _scale(b_scale, b, "b", "QLinearMatMul b_scale")
    s_y = _scale(y_scale, None, "y", "QLinearMatMul y_scale")
    if not s_a.dtype == s_b.dtype == s_y.dtype:
        raise DTypeError(f"QLinearMatMul: a_scale, b_scale and y_scale must share one dtype, got "
                         f"{s_a.dtype}, {s_b.dtype}, {s_y.dtype}")
    acc = _exact_product(a, b, a_zp, b_zp, "QLinearMatMul")
    if arithmetic == "onnxruntime":
        s_a, s_b, s_y = (s.astype(np.float32) for s in (s_a, s_b, s_y))
    with np.errstate(over="ignore"):
        m = s_a * s_b / s_y
    if not np.all(np.isfinite(m)):
        raise OutOfRangeError(f"QLinearMatMul: the multiplier a_scale * b_scale / y_scale overflows "
                              f"{m.dtype} (a_scale {s_a.max()!r}, b_scale {s_b.max()!r}, y_scale {s_y!r})")
    zp = int(y_zp.reshape(()))
    info = np.iinfo(y_zp.dtype)
    if arithmetic == "onnxruntime":
        y = np.rint(acc.astype(np.float32) * m) + np.float32(zp)
    else:
        y = np.rint(acc.astype(np.float64) * m.astype(np.float64) + np.float64(zp))
    return np.clip(y, info.min, info.max).astype(y_zp.dtype)
