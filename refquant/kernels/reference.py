"""Integer GEMM kernels, defined in NumPy: one op, one pure function, its spec in its docstring.

These functions ARE the definition of refquant's integer inference path (numeric contract
rules 8-10, docs/DESIGN.md); ``refquant.kernels.cpu`` computes the same bytes faster. They
are written for clarity, not speed (the integer products go through int64 NumPy matmuls).

Conventions
-----------
- Activations ``a`` are int8 ``[M, K]``; weights are row-major ``[N, K]`` (``[out, in]``), so a
  linear layer is ``a @ w.T``.
- int8 x int8 products are summed exactly in int32. The largest product magnitude is
  (-128) * (-128) = 2^14, so a K-term sum lies in [-2^14 K, 2^14 K] and fits int32 iff
  ``128 * 128 * K < 2^31``, i.e. K <= 131071 (``I8_MAX_K``). Rule 8's ``127 * 128 * K`` would
  allow K up to 132104, where an all-(-128) row and column overflow, so the provably safe
  bound is used. For int4 weights (|w| <= 8) the bound is ``128 * 8 * K < 2^31``
  (``W4_MAX_K`` = 2^21 - 1). A larger K raises ``OutOfRangeError``: nothing wraps silently.
- The epilogue (rule 9) is float32, each operation rounded as written, no FMA:
  ``y[m, n] = float32(acc[m, n]) * (s_a[m] * s_w[n])``, then ``+ bias[n]``, then the
  activation. ``s_a[m] * s_w[n]`` is ONE float32 multiply, and so is the multiply by the
  converted accumulator; a per-tensor ``s_a`` is a float32 scalar used for every row.
- Scales and biases must already be float32 (``DTypeError`` otherwise: converting a float64
  scale here would silently round it).
- ``activation`` is ``None`` or ``"gelu_erf"``: ``refquant.nn.fast_erf.gelu_erf_float32``
  (0.5 * x * (1 + erf(x / sqrt(2))) in float32, erf with scipy's bits).
- Every NaN of a float32 result is THE NaN, bits ``0x7FC00000`` (rule 12,
  ``refquant.floats.canonical_nan``), whatever made it: ``0 * inf`` when ``s_a * s_w``
  overflows, ``inf - inf`` with a bias, GELU of ``-inf``, a NaN bias with any sign or payload.

Quantizing activations
----------------------
``quantize_rows`` is the mapping alone: ``clip(rint(x / s))`` ("divide") or
``clip(rint(x * m))`` ("multiply") with one float32 parameter per row (or one for all).
``quantize_activation(x, qparams)`` applies ``refquant.quant``'s QParams of a supported spec
(signed, symmetric, per tensor or per token, non-finite inputs raise) and returns the
quantized values with ``s_a``, the step the integer epilogue multiplies by:

- mapping "divide" or "reciprocal": ``s_a = scale`` (dequantize is ``q * scale``);
- mapping "multiplier" (NVIDIA ModelOpt, Q8BERT): ``dequantize`` divides, ``q / m``. A float32
  GEMM epilogue cannot divide by ``m[m]`` and keep ``s_a[m] * s_w[n]`` one product, so the
  integer path DEFINES its step as ``s_a = float32(1 / m)`` (and 1.0 where ``m == 0``, whose
  values are all 0, as ``dequantize`` divides by 1 there). ``q * float32(1/m)`` can differ from
  ``q / m`` by one float32 ulp; this is the integer path's definition, not a bug, just as its
  int32 sum is not the fake-quant path's float sum.

``quantize_dynamic(x, spec)`` is ``choose_qparams`` + ``quantize_activation`` (dynamic per-token
or per-tensor quantization, e.g. ZeroQuant's ``rq.dialect("deepspeed", granularity="token",
dynamic=True)`` or ``rq.dialect("q8bert", dynamic=True)``), and
``layer_norm_quantize_per_token`` is ``refquant.nn.fused.layer_norm_rows`` followed by it.
``quantize_linear_i8(x, spec or qparams, w, s_w, ...)`` is quantize_dynamic (or
quantize_activation) followed by ``linear_i8``.

int4 weights
------------
``pack_w4`` stores int4 values (-8..7) two per byte along K, per row: byte j of row n holds
``w[n, 2j]`` in its low nibble and ``w[n, 2j + 1]`` in its high nibble (two's complement, as
ONNX's INT4, but row by row); an odd K leaves the last high nibble 0. Shape ``[N, ceil(K/2)]``
uint8.
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError, DTypeError, OutOfRangeError, ShapeError
from weights_io.int4 import integer_values
from ..nn.fast_erf import gelu_erf_float32
from ..nn.fused import layer_norm_rows
from ..quant import QParams, check_finite, choose_qparams
from ..spec import QuantSpec
from ..floats import canonical_nan

F32 = np.float32
I8_MAX_K = (2 ** 31 - 1) // (128 * 128)   # 131071: 2^14 * K < 2^31
W4_MAX_K = (2 ** 31 - 1) // (128 * 8)     # 2097151: 2^10 * K < 2^31
ACTIVATIONS = (None, "gelu_erf")
MODES = ("divide", "multiply")
ROUNDINGS = ("half_even", "half_away")

__all__ = ["gemm_i8", "linear_i8", "linear_i8_int32_bias", "pack_w4", "unpack_w4",
           "linear_w4a8_rows", "linear_w4a8_groups", "quantize_rows", "quantize_activation",
           "quantize_dynamic", "quantize_linear_i8", "layer_norm_quantize_per_token", "dequant_step",
           "activation_params",
           "I8_MAX_K", "W4_MAX_K", "ACTIVATIONS"]


# ---------------------------------------------------------------------------------------
# argument checks (shared with refquant.kernels.cpu)
# ---------------------------------------------------------------------------------------
def check_int_matrix(x, dtype, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{name}: expected a numpy {np.dtype(dtype)} array, got {type(x).__name__}")
    if x.dtype != dtype:
        raise DTypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    if x.ndim != 2:
        raise ShapeError(f"{name}: expected a 2-D array, got shape {x.shape}")
    return x


def check_k(M: int, K: int, N: int, max_k: int, what: str) -> None:
    """Raise OutOfRangeError when an exact int32 sum of K products cannot be guaranteed."""
    if K > max_k:
        bound = "128 * 128 * K" if max_k == I8_MAX_K else "128 * 8 * K"
        raise OutOfRangeError(f"{what}: a [{M}, {K}] x [{N}, {K}]^T product may overflow int32 "
                              f"({bound} >= 2^31); K must be <= {max_k}")


def check_gemm(a, w, what: str, w_dtype=np.int8):
    check_int_matrix(a, np.int8, f"{what}: a")
    check_int_matrix(w, w_dtype, f"{what}: w")
    if a.shape[1] != w.shape[1]:
        raise ShapeError(f"{what}: a is [M, K] = {list(a.shape)} and w is [N, K] = {list(w.shape)}: "
                         "K differs")
    return a.shape[0], a.shape[1], w.shape[0]


def _float32_array(x, name: str) -> np.ndarray:
    if isinstance(x, np.floating) or (isinstance(x, np.ndarray)):
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise DTypeError(f"{name}: expected float32, got dtype {x.dtype} (convert explicitly: "
                             "refquant does not round scales behind your back)")
        return x
    raise DTypeError(f"{name}: expected a float32 numpy array or np.float32, got {type(x).__name__}")


def check_epilogue(M: int, N: int, s_a, s_w, bias, activation, what: str, s_w_shape=None):
    """-> (s_a as float32 [M] or 0-d, s_w float32, bias float32 [N] or None)."""
    s_a = _float32_array(s_a, f"{what}: s_a")
    if s_a.ndim not in (0, 1) or (s_a.ndim == 1 and s_a.shape != (M,)):
        raise ShapeError(f"{what}: s_a must be a float32 scalar (per tensor) or have shape [{M}] "
                         f"(per token), got shape {s_a.shape}")
    s_w = _float32_array(s_w, f"{what}: s_w")
    want = (N,) if s_w_shape is None else s_w_shape
    if s_w.shape != want:
        raise ShapeError(f"{what}: s_w must have shape {list(want)}, got {list(s_w.shape)}")
    if bias is not None:
        bias = _float32_array(bias, f"{what}: bias")
        if bias.shape != (N,):
            raise ShapeError(f"{what}: bias must have shape [{N}], got {list(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{what}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    return s_a, s_w, bias


def _col(s_a):
    return s_a[:, None] if s_a.ndim == 1 else s_a


def _finish(y, bias, activation):
    if bias is not None:
        y = y + bias[None, :]
    if activation == "gelu_erf":
        y = gelu_erf_float32(y)
    return canonical_nan(y)


def _exact_matmul(a, w) -> np.ndarray:
    return (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)


# ---------------------------------------------------------------------------------------
# int8 x int8
# ---------------------------------------------------------------------------------------
def gemm_i8(a, w) -> np.ndarray:
    """int32 [M, N] = a @ w.T, exact. a int8 [M, K], w int8 [N, K].

    Raises OutOfRangeError when K > I8_MAX_K (128 * 128 * K >= 2^31 could overflow int32),
    DTypeError / ShapeError for other dtypes or mismatched shapes.
    """
    M, K, N = check_gemm(a, w, "gemm_i8")
    check_k(M, K, N, I8_MAX_K, "gemm_i8")
    return _exact_matmul(a, w)


def linear_i8(a, s_a, w, s_w, bias=None, activation=None) -> np.ndarray:
    """float32 [M, N]: acc = gemm_i8(a, w); y = float32(acc) * (s_a[m] * s_w[n]); y += bias[n]
    (if given); y = activation(y).

    s_a float32 [M] (per token) or a float32 scalar (per tensor); s_w float32 [N] (one step per
    output row: per-tensor weights pass a broadcast array); bias float32 [N] or None;
    activation None or "gelu_erf".
    """
    M, K, N = check_gemm(a, w, "linear_i8")
    check_k(M, K, N, I8_MAX_K, "linear_i8")
    s_a, s_w, bias = check_epilogue(M, N, s_a, s_w, bias, activation, "linear_i8")
    y = _exact_matmul(a, w).astype(F32) * (_col(s_a) * s_w[None, :])
    return _finish(y, bias, activation)


def linear_i8_int32_bias(a, s_a, w, s_w, q_bias) -> np.ndarray:
    """Q8BERT's inference path: float32 [M, N] = float32(acc + q_bias) * (s_a[m] * s_w[n]).

    acc = gemm_i8(a, w); q_bias int32 [N] (one per output) or [M, N], added in int32. When a
    sum leaves the int32 range, OutOfRangeError is raised (it never saturates or wraps).
    """
    M, K, N = check_gemm(a, w, "linear_i8_int32_bias")
    check_k(M, K, N, I8_MAX_K, "linear_i8_int32_bias")
    s_a, s_w, _ = check_epilogue(M, N, s_a, s_w, None, None, "linear_i8_int32_bias")
    q_bias = check_q_bias(q_bias, M, N, "linear_i8_int32_bias")
    total = _exact_matmul(a, w).astype(np.int64) + q_bias.astype(np.int64)
    if total.size and (total.min() < -2 ** 31 or total.max() >= 2 ** 31):
        raise OutOfRangeError(_bias_overflow_message(total, "linear_i8_int32_bias"))
    return canonical_nan(total.astype(np.int32).astype(F32) * (_col(s_a) * s_w[None, :]))


def check_q_bias(q_bias, M, N, what):
    if not isinstance(q_bias, np.ndarray) or q_bias.dtype != np.int32:
        raise DTypeError(f"{what}: q_bias must be an int32 array, got "
                         f"{getattr(q_bias, 'dtype', type(q_bias).__name__)}")
    if q_bias.shape not in ((N,), (M, N)):
        raise ShapeError(f"{what}: q_bias must have shape [{N}] or [{M}, {N}], got {list(q_bias.shape)}")
    return q_bias


def _bias_overflow_message(total, what):
    bad = np.argwhere((total < -2 ** 31) | (total >= 2 ** 31))[0]
    m, n = int(bad[0]), int(bad[1])
    return (f"{what}: acc + q_bias = {int(total[m, n])} at [{m}, {n}] does not fit int32; "
            "refquant neither saturates nor wraps")


# ---------------------------------------------------------------------------------------
# int4 weights
# ---------------------------------------------------------------------------------------
def pack_w4(w) -> np.ndarray:
    """int4 values (int8 array [N, K] in -8..7) -> uint8 [N, ceil(K/2)]: byte j of row n is
    ``(w[n, 2j] & 0xF) | (w[n, 2j+1] & 0xF) << 4`` (low nibble = even k; odd K pads 0)."""
    if not isinstance(w, np.ndarray):
        raise DTypeError(f"pack_w4: expected an integer array of int4 values, got {type(w).__name__}")
    w = integer_values(w, "pack_w4")  # ml_dtypes int4 arrays as their int8 values
    if w.ndim != 2:
        raise ShapeError(f"pack_w4: expected [N, K], got shape {w.shape}")
    wide = w.astype(np.int64)
    bad = (wide < -8) | (wide > 7)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise OutOfRangeError(f"pack_w4: value {int(wide[idx])} at index {idx} is outside the int4 "
                              "range [-8, 7]")
    N, K = w.shape
    nib = np.zeros((N, K + (K & 1)), np.uint8)
    nib[:, :K] = (wide & 0xF).astype(np.uint8)
    return (nib[:, 0::2] | (nib[:, 1::2] << np.uint8(4))).astype(np.uint8)


def unpack_w4(packed, K: int) -> np.ndarray:
    """Inverse of pack_w4: uint8 [N, ceil(K/2)] -> int8 [N, K] in -8..7."""
    K = check_packed_w4(packed, K, "unpack_w4")
    nib = np.empty((packed.shape[0], 2 * packed.shape[1]), np.int16)
    nib[:, 0::2] = packed & 0xF
    nib[:, 1::2] = packed >> 4
    nib = nib[:, :K]
    return np.where(nib >= 8, nib - 16, nib).astype(np.int8)


def check_packed_w4(packed, K, what: str) -> int:
    check_int_matrix(packed, np.uint8, f"{what}: packed int4 weights")
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 0:
        raise ConfigError(f"{what}: K must be a non-negative int, got {K!r}")
    K = int(K)
    if packed.shape[1] != (K + 1) // 2:
        raise ShapeError(f"{what}: K = {K} int4 values per row need {(K + 1) // 2} bytes, got "
                         f"packed shape {list(packed.shape)}")
    return K


def linear_w4a8_rows(a, s_a, w_packed, K, s_w_rows, bias=None, activation=None) -> np.ndarray:
    """W4A8 with output-row groups (ZeroQuant): the epilogue of linear_i8 on unpack_w4(w_packed).

    s_w_rows float32 [N]: each output row's step (its row group's scale, already expanded).
    Exact int32 sums need 128 * 8 * K < 2^31 (K <= W4_MAX_K).
    """
    K = check_packed_w4(w_packed, K, "linear_w4a8_rows")
    w = unpack_w4(w_packed, K)
    M, K, N = check_gemm(a, w, "linear_w4a8_rows")
    check_k(M, K, N, W4_MAX_K, "linear_w4a8_rows")
    s_a, s_w, bias = check_epilogue(M, N, s_a, s_w_rows, bias, activation, "linear_w4a8_rows")
    y = _exact_matmul(a, w).astype(F32) * (_col(s_a) * s_w[None, :])
    return _finish(y, bias, activation)


def group_count(K: int, group_size, what: str) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ConfigError(f"{what}: group_size must be a positive int, got {group_size!r}")
    return -(-K // int(group_size))


def check_w4a8_call(what, a, s_a, w, K, s_w, group_size, bias, activation):
    """The argument checks of a W4A8 call, shared by the cpu and cuda kernels: ``w`` is pack_w4's
    uint8 array or a backend's prepacked weights (with .K, .N and .group_size). Returns
    (M, K, N, G, s_a, s_w, bias); G is 1 for output-row scales (group_size None)."""
    if hasattr(w, "group_size"):
        kind = type(w).__name__
        if K != w.K:
            raise ConfigError(f"{what}: K = {K!r}, but the {kind} was built for K = {w.K}")
        if w.group_size != group_size:
            raise ConfigError(f"{what}: the {kind} was built with group_size={w.group_size!r}; "
                              f"this call needs prepack_w4(w_packed, K, group_size={group_size!r})")
        N = w.N
    else:
        K = check_packed_w4(w, K, what)
        N = w.shape[0]
    check_int_matrix(a, np.int8, f"{what}: a")
    if a.shape[1] != K:
        raise ShapeError(f"{what}: a is [M, K] = {list(a.shape)} but the weights have K = {K}")
    M = a.shape[0]
    check_k(M, K, N, W4_MAX_K, what)
    if group_size is None:
        s_a, s_w, bias = check_epilogue(M, N, s_a, s_w, bias, activation, what)
        return M, K, N, 1, s_a, s_w, bias
    G = group_count(K, group_size, what)
    s_a, s_w, bias = check_epilogue(M, N, s_a, s_w, bias, activation, what, s_w_shape=(N, G))
    return M, K, N, G, s_a, s_w, bias


def linear_w4a8_groups(a, s_a, w_packed, K, s_w_groups, group_size, bias=None,
                       activation=None) -> np.ndarray:
    """W4A8 with input-dimension groups (GPTQ / compressed-tensors style).

    s_w_groups float32 [N, G], G = ceil(K / group_size) (the last group may be shorter).
    For each group g (k in [g * group_size, min(K, (g + 1) * group_size))):
    acc_g = exact int32 a[:, group] @ w[:, group].T; p_g = float32(acc_g) * (s_a[m] * s_w[n, g]);
    y = ((p_0 + p_1) + p_2) + ... in group order (float32), then + bias[n], then activation.
    K = 0 has no group and gives y = 0 (+ bias, activation).
    """
    K = check_packed_w4(w_packed, K, "linear_w4a8_groups")
    w = unpack_w4(w_packed, K)
    M, K, N = check_gemm(a, w, "linear_w4a8_groups")
    check_k(M, K, N, W4_MAX_K, "linear_w4a8_groups")
    G = group_count(K, group_size, "linear_w4a8_groups")
    s_a, s_w, bias = check_epilogue(M, N, s_a, s_w_groups, bias, activation, "linear_w4a8_groups",
                                    s_w_shape=(N, G))
    y = np.zeros((M, N), F32)
    for g in range(G):
        ks = slice(g * group_size, min(K, (g + 1) * group_size))
        p = _exact_matmul(a[:, ks], w[:, ks]).astype(F32) * (_col(s_a) * s_w[None, :, g])
        y = p if g == 0 else y + p
    return _finish(y, bias, activation)


# ---------------------------------------------------------------------------------------
# quantizing activations
# ---------------------------------------------------------------------------------------
def check_rows(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise DTypeError(f"{name}: expected a float32 array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2:
        raise ShapeError(f"{name}: expected [M, K], got shape {x.shape}")
    return x


def check_row_param(param, M: int, mode, qmin, qmax, rounding, what: str) -> np.ndarray:
    param = _float32_array(param, f"{what}: param")
    if param.ndim not in (0, 1) or (param.ndim == 1 and param.shape != (M,)):
        raise ShapeError(f"{what}: param must be a float32 scalar or have shape [{M}], got {param.shape}")
    if mode not in MODES:
        raise ConfigError(f"{what}: mode must be one of {MODES}, got {mode!r}")
    if rounding not in ROUNDINGS:
        raise ConfigError(f"{what}: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not (-128 <= int(qmin) <= int(qmax) <= 127):
        raise ConfigError(f"{what}: need -128 <= qmin <= qmax <= 127, got [{qmin}, {qmax}]")
    if param.size and not np.all(np.isfinite(param)):
        raise ConfigError(f"{what}: every param must be finite")
    if mode == "divide" and param.size and not np.all(param > 0):
        raise ConfigError(f"{what}: mode 'divide' needs scales > 0")
    if mode == "multiply" and param.size and not np.all(param >= 0):
        raise ConfigError(f"{what}: mode 'multiply' needs multipliers >= 0")
    return param


def quantize_rows(x, param, mode, qmin, qmax, rounding="half_even") -> np.ndarray:
    """int8 [M, K] = clip(round(x / param[m]), qmin, qmax) (mode "divide") or
    clip(round(x * param[m]), qmin, qmax) (mode "multiply"), float32 arithmetic.

    x float32 [M, K] (finite: NaN / Inf raise NonFiniteError); param float32 [M] or a float32
    scalar (finite; > 0 for "divide", >= 0 for "multiply"); rounding "half_even" (np.rint) or
    "half_away" (refquant.quant.round_values); -128 <= qmin <= qmax <= 127.
    """
    x = check_rows(x, "quantize_rows: x")
    param = check_row_param(param, x.shape[0], mode, qmin, qmax, rounding, "quantize_rows")
    check_finite(x, "quantize_rows: x")
    p = _col(param)
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        y = x / p if mode == "divide" else x * p
    if rounding == "half_even":
        r = np.rint(y)
    else:
        whole = np.trunc(y)
        with np.errstate(invalid="ignore"):
            r = np.where(np.abs(y - whole) >= F32(0.5), whole + np.sign(y), whole).astype(F32)
    return np.clip(r, F32(qmin), F32(qmax)).astype(np.int8)


def check_activation_spec(spec: QuantSpec, what: str) -> None:
    """The specs the integer activation path supports (ConfigError for the others)."""
    if not isinstance(spec, QuantSpec):
        raise ConfigError(f"{what}: expected a QuantSpec, got {type(spec).__name__}")
    problems = []
    if not spec.signed:
        problems.append("unsigned (the GEMM takes int8)")
    if not spec.symmetric:
        problems.append("affine (a zero point would need a correction term)")
    if spec.granularity not in ("tensor", "token"):
        problems.append(f"granularity {spec.granularity!r} (per tensor or per token only)")
    if spec.token_2d_per_tensor:
        problems.append("token_2d_per_tensor (a stack artifact)")
    if spec.nonfinite not in ("raise", "propagate"):
        problems.append(f"nonfinite {spec.nonfinite!r} (only specs that refuse NaN/Inf)")
    if problems:
        raise ConfigError(f"{what}: spec {spec.describe()} is not supported by the integer "
                          "activation path: " + "; ".join(problems))


def dequant_step(qp: QParams) -> np.ndarray:
    """The integer path's dequantization step (float32, the QParams' natural shape): the scale
    for mappings "divide" and "reciprocal"; for "multiplier", float32(1 / m) (1.0 where m == 0),
    the integer path's definition (see the module docstring)."""
    if qp.spec.mapping != "multiplier":
        return qp.scale.copy()
    m = qp.multiplier
    with np.errstate(divide="ignore"):
        return np.where(m == 0, F32(1), F32(1) / np.where(m == 0, F32(1), m)).astype(F32)


def activation_params(qp: QParams, what: str = "quantize_activation"):
    """(mode, param, rounding) that make quantize_rows equal refquant.quant.quantize for ``qp``."""
    if not isinstance(qp, QParams):
        raise ConfigError(f"{what}: expected QParams, got {type(qp).__name__}")
    spec = qp.spec
    check_activation_spec(spec, what)
    if qp.zero_point.size and np.any(qp.zero_point != 0):
        raise ConfigError(f"{what}: zero points must be 0")
    with np.errstate(divide="ignore", over="ignore"):
        if spec.mapping == "divide":
            return "divide", qp.scale, spec.rounding
        if spec.mapping == "reciprocal":
            return "multiply", (F32(1) / qp.scale).astype(F32), spec.rounding
    return "multiply", qp.multiplier, spec.rounding


def rows_of(shape) -> int:
    """Rows of a [..., K] tensor viewed as [rows, K] (0 rows for an empty leading shape)."""
    return int(np.prod(shape[:-1], dtype=np.int64))


def as_rows(x, qp: QParams, what: str):
    """x as float32 [rows, K] and the per-row (or scalar) shape checks of ``qp``."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise DTypeError(f"{what}: expected a float array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 1:
        raise ShapeError(f"{what}: expected at least 1 dimension")
    x = x.astype(F32, copy=False)
    if qp.spec.granularity == "token":
        if qp.scale.shape != x.shape[:-1]:
            raise ShapeError(f"{what}: per-token QParams of shape {qp.scale.shape} do not fit x of "
                             f"shape {x.shape}")
    elif qp.scale.size != 1:
        raise ShapeError(f"{what}: per-tensor QParams must hold one scale, got shape {qp.scale.shape}")
    return np.ascontiguousarray(x.reshape(rows_of(x.shape), x.shape[-1]))


def quantize_activation(x, qp: QParams):
    """(q, s_a): q = refquant.quant.quantize(x, qp) bit for bit (int8, x's shape), computed as
    quantize_rows; s_a = dequant_step(qp) (x.shape[:-1] per token, 0-d per tensor).

    Supported: signed symmetric specs (zero point 0), granularity "tensor" or "token", any
    mapping and rounding, nonfinite "raise" / "propagate" (NaN / Inf raise NonFiniteError).
    Others raise ConfigError.
    """
    mode, param, rounding = activation_params(qp)
    rows = as_rows(x, qp, "quantize_activation")
    spec = qp.spec
    p = param.reshape(-1) if spec.granularity == "token" else param.reshape(())
    q = quantize_rows(rows, p, mode, spec.qmin, spec.qmax, rounding)
    return q.reshape(x.shape), dequant_step(qp)


def quantize_dynamic(x, spec: QuantSpec):
    """(q, s_a) for dynamic quantization: quantize_activation(x, choose_qparams(x, spec)).

    Per token (one scale per row of the last dimension) or per tensor, as ``spec`` says; the
    same specs as quantize_activation. Examples: rq.dialect("deepspeed", granularity="token",
    dynamic=True) (ZeroQuant), rq.dialect("q8bert", dynamic=True) (per tensor).
    """
    check_activation_spec(spec, "quantize_dynamic")
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise DTypeError("quantize_dynamic: expected a float array, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    return quantize_activation(x, choose_qparams(x, spec, "quantize_dynamic: x"))


def quantize_linear_i8(x, quant, w, s_w, bias=None, activation=None) -> np.ndarray:
    """Dynamic (or static) quantization followed by the int8 linear layer:
    (q, s_a) = quantize_dynamic(x, quant) when ``quant`` is a QuantSpec, quantize_activation(x,
    quant) when it is QParams; then linear_i8(q, s_a, w, s_w, bias, activation).
    x float32 [M, K]."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise DTypeError(f"quantize_linear_i8: x must be a float32 array [M, K], got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    q, s_a = quantize_dynamic(x, quant) if isinstance(quant, QuantSpec) else quantize_activation(x, quant)
    return linear_i8(q, s_a, w, s_w, bias, activation)


def layer_norm_quantize_per_token(x, gamma, beta, eps, spec: QuantSpec):
    """(y, q, s_a): y = refquant.nn.fused.layer_norm_rows(x, gamma, beta, eps)[0] (float32, same
    bits), then (q, s_a) = quantize_dynamic(y, spec). y is returned because transformer blocks
    need it (BERT's residual is the LayerNorm output). ``spec`` is a supported dynamic spec,
    normally per token; x float32 [..., C], gamma and beta float32 [C], eps a float.
    """
    check_activation_spec(spec, "layer_norm_quantize_per_token")
    check_layer_norm_args(x, gamma, beta, "layer_norm_quantize_per_token")
    y = layer_norm_rows(x, gamma, beta, eps)[0]
    q, s_a = quantize_dynamic(y, spec)
    return y, q, s_a


def check_layer_norm_args(x, gamma, beta, what):
    for name, arr in (("x", x), ("gamma", gamma), ("beta", beta)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            raise DTypeError(f"{what}: {name} must be a float32 array, got "
                             f"{getattr(arr, 'dtype', type(arr).__name__)}")
    if x.ndim < 1 or gamma.shape != (x.shape[-1],) or beta.shape != (x.shape[-1],):
        raise ShapeError(f"{what}: x {x.shape}, gamma {gamma.shape}, beta {beta.shape}: gamma and "
                         "beta must have x's last dimension")
    if x.shape[-1] == 0:
        raise ShapeError(f"{what}: a LayerNorm over 0 values is undefined (x shape {x.shape})")
