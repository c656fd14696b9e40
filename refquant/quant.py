"""The numeric core: choose_qparams, quantize, dequantize, fake_quant.

Every rule of the numeric contract (docs/DESIGN.md) is computed here and only
here; a ``QuantSpec`` (refquant.spec) says which variant of each rule applies.
All arithmetic is float32 (inputs in float16 / float64 are converted to
float32 first), exactly as the float32 paths of the stacks we reproduce.

Shapes of the parameters ("natural shapes", also those written to checkpoints):

====================  ==========================================================
granularity           scale / zero_point shape
====================  ==========================================================
tensor                ()
channel(axis)         (x.shape[axis],)
group, kind "input"   x.shape with x.shape[axis] replaced by ceil(D / group_size)
group, kind "rows"    (num_groups,)   x.reshape(num_groups, -1) row by row (DeepSpeed's cut of
                                      any tensor; a GEMM weight only in blocks of whole
                                      output rows: row_block_rows)
token                 x.shape[:-1]    one per row of the last dimension
====================  ==========================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weights_io.errors import ConfigError, DTypeError, NonFiniteError, OutOfRangeError, ShapeError
from weights_io.int4 import integer_values
from .spec import QuantSpec
from .floats import canonical_nan

F32 = np.float32


# ---------------------------------------------------------------------------------------
# QParams
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters of one tensor: ``x ~= scale * (q - zero_point)``.

    scale       float32 array, the step size (natural shape, see the module docstring).
    zero_point  int32 array of the same shape, given as integers (NumPy, or ml_dtypes int4 /
                uint4 / int2 / uint2 as onnx.numpy_helper returns them); a float or float8 zero
                point raises DTypeError (contract rule 5).
    spec        the QuantSpec they were made for.
    multiplier  float32 array, only for ``mapping="multiplier"``: the d/amax factor that
                NVIDIA and Q8BERT multiply by (and divide by to dequantize). When QParams are
                given by hand with a scale only, it is derived as d / float32(scale * d).
    offset      float32 array, only for ``zero_point_add="float_offset"``: DeepSpeed's float
                zero point round(min / scale) * scale (it keeps the sign of -0.0, which the
                integer zero_point = -round(min / scale) cannot). Derived from zero_point when
                not given.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    spec: QuantSpec
    multiplier: np.ndarray | None = None
    offset: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.spec, QuantSpec):
            raise ConfigError(f"QParams.spec: expected a QuantSpec, got {type(self.spec).__name__}")
        scale = np.asarray(self.scale)
        if scale.dtype.kind != "f":
            raise DTypeError(f"QParams.scale: expected a float array, got dtype {scale.dtype}")
        scale = scale.astype(F32)
        if scale.size and not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            bad = int(np.flatnonzero(~(np.isfinite(scale) & (scale > 0)))[0])
            raise ConfigError(f"QParams.scale: every scale must be finite and > 0; element {bad} "
                              f"is {scale.reshape(-1)[bad]!r}")
        zp = integer_values(self.zero_point, "QParams.zero_point")  # rule 5: never a float
        zp = np.broadcast_to(zp, scale.shape).astype(np.int32)
        spec = self.spec
        if spec.symmetric and zp.size and np.any(zp != _symmetric_zero_point(spec)):
            raise ConfigError(f"QParams.zero_point: a symmetric spec fixes the zero point at "
                              f"{_symmetric_zero_point(spec)}; got {int(zp.reshape(-1)[np.argmax(zp.reshape(-1) != _symmetric_zero_point(spec))])}. "
                              "For a given nonzero zero point use symmetric=False")
        if spec.zero_point_add != "float_offset" and zp.size and (zp.min() < spec.qmin or zp.max() > spec.qmax):
            raise ConfigError(f"QParams.zero_point: expected values in [{spec.qmin}, {spec.qmax}], "
                              f"got range [{zp.min()}, {zp.max()}]")
        mult = self.multiplier
        with np.errstate(divide="ignore", over="ignore"):
            if spec.mapping == "reciprocal" and scale.size and not np.all(np.isfinite(F32(1) / scale)):
                raise ConfigError("QParams.scale: with mapping 'reciprocal' 1/scale must be finite in "
                                  f"float32; the smallest scale {float(scale.min())!r} overflows it")
        if spec.mapping == "multiplier":
            if mult is None:
                d = F32(_denominator(spec))
                mult = d / (scale * d)
            mult = np.asarray(mult, dtype=F32)
            if mult.size and not (np.all(np.isfinite(mult)) and np.all(mult >= 0)):
                raise ConfigError("QParams.multiplier: every multiplier must be finite and >= 0 "
                                  "(0: the slice quantizes to zero, as ModelOpt does for amax ~ 0)")
            if mult.shape != scale.shape:
                raise ShapeError(f"QParams.multiplier: shape {mult.shape} differs from scale {scale.shape}")
        elif mult is not None:
            raise ConfigError("QParams.multiplier is only meaningful with mapping='multiplier'")
        offset = self.offset
        if spec.zero_point_add == "float_offset":
            offset = ((-zp).astype(F32) * scale).astype(F32) if offset is None else np.asarray(offset, F32)
            if offset.shape != scale.shape:
                raise ShapeError(f"QParams.offset: shape {offset.shape} differs from scale {scale.shape}")
        elif offset is not None:
            raise ConfigError("QParams.offset is only meaningful with zero_point_add='float_offset'")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        object.__setattr__(self, "multiplier", mult)
        object.__setattr__(self, "offset", offset)

    def __repr__(self):
        def short(a):
            return repr(a.item()) if a.ndim == 0 else f"array{list(a.shape)}"
        extra = f", multiplier={short(self.multiplier)}" if self.multiplier is not None else ""
        return (f"QParams(scale={short(self.scale)}, zero_point={short(self.zero_point)}{extra}, "
                f"spec={self.spec.dialect or 'custom'})")


# ---------------------------------------------------------------------------------------
# helpers: input checks, reductions by granularity, broadcasting back
# ---------------------------------------------------------------------------------------
def _as_float32(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise DTypeError(f"{name}: expected a float array (float16/32/64), got dtype {x.dtype}")
    return x.astype(F32, copy=False)


def check_finite(x: np.ndarray, name: str = "x") -> None:
    """Raise NonFiniteError naming ``name`` and the first index holding NaN or Inf (rule 6)."""
    if x.size and not np.isfinite(x).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise NonFiniteError(f"{name}: element {idx} is {x[idx]!r}; refquant does not quantize NaN "
                             "or Inf (numeric contract rule 6). A dialect reproduces its stack's "
                             "behaviour on them only with stack_artifacts=True")


def _norm_axis(axis: int, ndim: int, name: str) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{name}: axis {axis} is out of range for a {ndim}-D tensor")
    return axis % ndim


def _axis_of(spec: QuantSpec, ndim: int, name: str) -> int:
    default = 0 if spec.granularity == "channel" else -1
    return _norm_axis(default if spec.axis is None else spec.axis, ndim, name)


def _group_count(spec: QuantSpec, length: int, name: str) -> int:
    g = spec.group_size
    if length % g:
        allowed = spec.partial_group == "allow" or (spec.partial_group == "if_smaller" and length < g)
        if not allowed:
            raise ShapeError(f"{name}: axis length {length} is not a multiple of group_size {g} and "
                             f"this spec refuses a partial last group (partial_group={spec.partial_group!r})")
    return -(-length // g)


def param_shape(x_shape: tuple, spec: QuantSpec, name: str = "x") -> tuple:
    """The natural shape of scale / zero_point for a tensor of ``x_shape`` (module docstring)."""
    ndim = len(x_shape)
    if spec.granularity == "tensor":
        return ()
    if spec.granularity == "token":
        if ndim < 1:
            raise ShapeError(f"{name}: per-token quantization needs at least 1 dimension, got a scalar")
        return tuple(x_shape[:-1])
    if spec.granularity == "channel":
        if ndim < 1:
            raise ShapeError(f"{name}: per-channel quantization needs at least 1 dimension")
        return (x_shape[_axis_of(spec, ndim, name)],)
    if spec.group_kind == "rows":
        size = int(np.prod(x_shape, dtype=np.int64))
        if size % spec.num_groups:
            raise ShapeError(f"{name}: {size} elements (shape {tuple(x_shape)}) cannot be cut into "
                             f"num_groups={spec.num_groups} equal contiguous groups")
        return (spec.num_groups,)
    if ndim < 1:
        raise ShapeError(f"{name}: group quantization needs at least 1 dimension")
    axis = _axis_of(spec, ndim, name)
    shape = list(x_shape)
    shape[axis] = _group_count(spec, x_shape[axis], name)
    return tuple(shape)


def _reduce(x: np.ndarray, spec: QuantSpec, fn, name: str) -> np.ndarray:
    """Apply the reduction ``fn`` (np.min / np.max) over each quantization slice of ``x``."""
    pshape = param_shape(x.shape, spec, name)
    if x.size == 0:
        return np.zeros(pshape, F32)
    g = spec.granularity
    if g == "tensor" or (g == "token" and spec.token_2d_per_tensor and x.ndim == 2):
        return np.broadcast_to(F32(fn(x)), pshape).copy()
    if g == "token":
        return fn(x, axis=-1).astype(F32)
    if g == "channel":
        axis = _axis_of(spec, x.ndim, name)
        other = tuple(i for i in range(x.ndim) if i != axis)
        return fn(x, axis=other).astype(F32) if other else x.astype(F32)
    if spec.group_kind == "rows":
        return fn(x.reshape(spec.num_groups, -1), axis=1).astype(F32)
    axis = _axis_of(spec, x.ndim, name)
    xm = np.moveaxis(x, axis, -1)
    length, groups = xm.shape[-1], pshape[axis]
    pad = groups * spec.group_size - length
    if pad:  # repeat the last element: min/max of a group are unchanged by it
        xm = np.concatenate([xm, np.repeat(xm[..., -1:], pad, axis=-1)], axis=-1)
    red = fn(xm.reshape(*xm.shape[:-1], groups, spec.group_size), axis=-1)
    return np.moveaxis(red, -1, axis).astype(F32)


def expand(param: np.ndarray, x_shape: tuple, spec: QuantSpec, name: str = "x") -> np.ndarray:
    """Broadcast a natural-shape parameter to the full shape of the tensor it quantizes."""
    pshape = param_shape(x_shape, spec, name)
    param = np.asarray(param)
    if param.shape != pshape:
        if spec.granularity == "tensor" and param.size == 1:
            param = param.reshape(())
        else:
            raise ShapeError(f"{name}: quantization parameters of shape {param.shape} do not fit a "
                             f"tensor of shape {tuple(x_shape)} at granularity {spec.granularity!r} "
                             f"(expected {pshape})")
    g = spec.granularity
    if g == "tensor":
        return np.broadcast_to(param, x_shape)
    if g == "token":
        return np.broadcast_to(param[..., None], x_shape)
    if g == "channel":
        axis = _axis_of(spec, len(x_shape), name)
        shape = [1] * len(x_shape)
        shape[axis] = x_shape[axis]
        return np.broadcast_to(param.reshape(shape), x_shape)
    if spec.group_kind == "rows":
        size = int(np.prod(x_shape, dtype=np.int64))
        return np.repeat(param, size // spec.num_groups).reshape(x_shape)
    axis = _axis_of(spec, len(x_shape), name)
    full = np.repeat(param, spec.group_size, axis=axis)
    return np.take(full, np.arange(x_shape[axis]), axis=axis)


def row_block_rows(shape: tuple, spec: QuantSpec, name: str = "weight") -> int:
    """Output rows per group when a GEMM weight of ``shape`` [out, in] is quantized in ZeroQuant's
    ``num_groups`` row-block groups (contract rule 7): out // num_groups.

    DeepSpeed cuts the row-major weight as ``weight.reshape(num_groups, -1)``: blocks of whole
    output rows exactly when num_groups divides out. Otherwise its groups cut output rows apart
    (8 rows of 40 in 64 groups: 5-element pieces of rows), or torch refuses the reshape (out * in
    not a multiple of num_groups). A GEMM's integer epilogue has one weight step per output row
    (rule 9), so refquant quantizes a GEMM weight in row groups only where they are whole rows,
    and refuses the rest here (ShapeError naming the weight, its rows and num_groups)."""
    if len(shape) != 2:
        raise ShapeError(f"{name}: row-block groups are defined for a 2-D [out, in] weight, got shape {list(shape)}")
    rows, size, n = int(shape[0]), int(shape[0]) * int(shape[1]), spec.num_groups
    if rows % n:
        deepspeed = (f"would cut rows into {size // n}-element pieces" if size % n == 0
                     else f"fails on its {size} elements")
        raise ShapeError(f"{name}: {rows} output rows cannot be cut into num_groups={n} blocks of whole "
                         f"rows (weight [{shape[0]}, {shape[1]}]; DeepSpeed's reshape({n}, -1) {deepspeed})")
    return rows // n


def per_output_row(param, shape: tuple, spec: QuantSpec, name: str = "weight") -> np.ndarray:
    """A GEMM weight's parameter (scale, step, multiplier: natural shape) as one value per output
    row [out], for per-tensor, per-output-channel and row-block-group specs."""
    param = np.asarray(param)
    rows = int(shape[0])
    if spec.granularity == "tensor":
        return np.full(rows, param.reshape(()), param.dtype)
    if spec.granularity == "channel" and _axis_of(spec, len(shape), name) == 0:
        return param
    if spec.granularity == "group" and spec.group_kind == "rows":
        return np.repeat(param, row_block_rows(shape, spec, name))
    raise ShapeError(f"{name}: {spec.describe()} has no single parameter per output row")


# ---------------------------------------------------------------------------------------
# choosing parameters (rules 1, 4, 5, 6)
# ---------------------------------------------------------------------------------------
def _denominator(spec: QuantSpec) -> float:
    """d in scale = amax / d (symmetric) or range / d (affine), rule 4."""
    if spec.symmetric:
        if spec.denominator == "pow2":
            return float(2 ** (spec.bits - 1))
        if spec.denominator == "half_range":
            return (spec.qmax - spec.qmin) / 2
        if not spec.signed and spec.unsigned_symmetric == "offset":
            return (spec.qmax - spec.qmin) / 2  # a centred grid has only half the codes per side
        return float(spec.qmax)
    if spec.denominator == "pow2":
        return float(2 ** spec.bits)
    return float(spec.qmax - spec.qmin)


def _symmetric_zero_point(spec: QuantSpec) -> int:
    if spec.signed or spec.unsigned_symmetric == "nonnegative":
        return 0
    return 2 ** (spec.bits - 1)


def _multiplier(d, amax, spec: QuantSpec) -> np.ndarray:
    """d / amax in float32, in the order the stack computes it (spec.multiplier_form)."""
    with np.errstate(divide="ignore", over="ignore"):
        if spec.multiplier_form == "reciprocal_times_d":
            return ((F32(1) / amax).astype(F32) * F32(d)).astype(F32)
        return (F32(d) / amax).astype(F32)


def _unmappable(scale, amax, d, spec: QuantSpec) -> np.ndarray:
    """Slices whose mapping factor overflows float32 (1/scale or d/amax = inf for a subnormal
    scale): x * inf would turn 0 into NaN, so they are treated as degenerate (rule 6)."""
    if spec.mapping == "reciprocal":
        return ~np.isfinite(F32(1) / scale)
    if spec.mapping == "multiplier":
        return ~np.isfinite(_multiplier(d, amax, spec)) & (amax > 0)
    return np.zeros(np.shape(scale), bool)


def _has_zero_point(spec: QuantSpec) -> bool:
    """False for specs whose zero point is 0 by construction (signed symmetric, NVIDIA unsigned)."""
    return not spec.symmetric or _symmetric_zero_point(spec) != 0


def qparams_from_minmax(min_val, max_val, spec: QuantSpec) -> QParams:
    """QParams from per-slice minima and maxima (natural shape), as each stack computes them.

    Symmetric: amax = max(|min|, |max|), floored at amax_floor; scale = amax / d (float32
    division; d from ``denominator``), floored at scale_floor; a slice with amax <=
    degenerate_amax or a scale that rounds to 0 gets ``zero_scale``. With mapping
    "multiplier", multiplier = d / amax (float32) and scale = amax / d is kept for reports.

    Affine: [min, max] extended to contain 0 (if include_zero); scale = (max - min) / d;
    zero_point per ``zero_point_rule``, clipped to [qmin, qmax] (not for "float_offset", where
    zero_point = -rint(min / scale) as DeepSpeed keeps it).
    """
    mn = np.asarray(min_val, dtype=F32)
    mx = np.asarray(max_val, dtype=F32)
    if mn.shape != mx.shape:
        raise ShapeError(f"qparams_from_minmax: min shape {mn.shape} != max shape {mx.shape}")
    for label, arr in (("min", mn), ("max", mx)):
        check_finite(arr, f"qparams_from_minmax({label})")
    if mn.size and np.any(mn > mx):
        raise ConfigError("qparams_from_minmax: min > max in some slice")
    d = F32(_denominator(spec))
    zero_scale = F32(spec.zero_scale)
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        if spec.symmetric:
            if not spec.signed and spec.unsigned_symmetric == "nonnegative" and mn.size and np.any(mn < 0):
                raise ConfigError("unsigned 'nonnegative' symmetric quantization (NVIDIA unsigned) "
                                  f"needs inputs >= 0; the minimum is {float(mn.min())!r}")
            amax = np.maximum(np.abs(mn), np.abs(mx))
            amax = np.maximum(amax, F32(spec.amax_floor))
            scale = amax / d
            scale = np.maximum(scale, F32(spec.scale_floor))
            degenerate = (amax <= F32(spec.degenerate_amax)) | (scale == 0) | _unmappable(scale, amax, d, spec)
            scale = np.where(degenerate, zero_scale, scale).astype(F32)
            zp = np.full(scale.shape, _symmetric_zero_point(spec), np.int32)
            mult = None
            if spec.mapping == "multiplier":
                fallback = F32(0) if spec.degenerate_output == "zero" else F32(1) / zero_scale
                mult = np.where(degenerate, fallback, _multiplier(d, amax, spec)).astype(F32)
            return QParams(scale, zp, spec, mult)
        if spec.include_zero:
            mn = np.minimum(mn, F32(0))
            mx = np.maximum(mx, F32(0))
        rng = (mx - mn).astype(F32)
        scale = np.maximum(rng / d, F32(spec.scale_floor))
        degenerate = ((rng <= F32(spec.degenerate_amax)) | (scale == 0) | ~np.isfinite(scale)
                      | _unmappable(scale, rng, d, spec))
        scale = np.where(degenerate, zero_scale, scale).astype(F32)
        qmin, qmax = F32(spec.qmin), F32(spec.qmax)
        if spec.zero_point_add == "float_offset":
            steps = np.rint(mn / scale)  # may be -0.0, and DeepSpeed's offset keeps that sign
            if steps.size and not np.all(np.abs(steps) < 2.0 ** 31):
                raise ConfigError("qparams_from_minmax: DeepSpeed-style float zero point "
                                  "-rint(min / scale) does not fit int32 (range too narrow for its "
                                  f"distance from 0: min {float(mn.min())!r}, scale {float(scale.min())!r})")
            return QParams(scale, (-steps).astype(np.int32), spec, offset=(steps * scale).astype(F32))
        elif spec.zero_point_rule == "offset_then_round":
            zp = np.rint(np.clip(qmin - mn / scale, qmin, qmax))
        else:
            zp = np.clip(qmin - np.rint(mn / scale), qmin, qmax)
        if spec.degenerate_zero_point == "zero":
            zp = np.where(degenerate, F32(0), zp)
    return QParams(scale, zp.astype(np.int32), spec)


def qparams_from_amax(amax, spec: QuantSpec) -> QParams:
    """Symmetric QParams from calibrated amax values (what calibrators return)."""
    if not spec.symmetric:
        raise ConfigError("qparams_from_amax: an affine spec needs min and max; use qparams_from_minmax")
    amax = np.asarray(amax, dtype=F32)
    if amax.size and np.any(amax < 0):
        raise ConfigError("qparams_from_amax: amax must be >= 0")
    lo = np.zeros_like(amax) if (not spec.signed and spec.unsigned_symmetric == "nonnegative") else -amax
    return qparams_from_minmax(lo, amax, spec)


def choose_qparams(x, spec: QuantSpec, name: str = "x") -> QParams:
    """Scale and zero point for ``x`` from its own min/max per slice of ``spec.granularity``.

    Empty tensors give degenerate parameters. NaN/Inf raise NonFiniteError (a range cannot be
    taken from them, in any dialect).
    """
    x = _as_float32(x, name)
    check_finite(x, name)
    return qparams_from_minmax(_reduce(x, spec, np.min, name), _reduce(x, spec, np.max, name), spec)


# ---------------------------------------------------------------------------------------
# rounding and mapping (rules 2, 3, 5)
# ---------------------------------------------------------------------------------------
def round_values(y: np.ndarray, rounding: str) -> np.ndarray:
    """Round float32 values to integers (still float32): half to even, or half away from zero.

    half_away is computed from the exact fractional part (y - trunc(y) is exact in floating
    point), not as floor(|y| + 0.5), which rounds 0.49999997 up to 1 in float32.
    """
    if rounding == "half_even":
        return np.rint(y)
    whole = np.trunc(y)
    return np.where(np.abs(y - whole) >= F32(0.5), whole + np.sign(y), whole).astype(y.dtype)


def _map(x: np.ndarray, qp: QParams, name: str):
    """x -> real-valued grid position, and the full-shape params used."""
    spec = qp.spec
    scale = expand(qp.scale, x.shape, spec, name)
    zp = expand(qp.zero_point, x.shape, spec, name)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
        if spec.zero_point_add == "float_offset":
            return (x - expand(qp.offset, x.shape, spec, name)) / scale, scale, zp
        if spec.mapping == "divide":
            y = x / scale
        elif spec.mapping == "reciprocal":
            y = x * (F32(1) / scale)
        else:
            y = x * expand(qp.multiplier, x.shape, spec, name)
    return y, scale, zp


_INT_INDEFINITE = {32: -(2 ** 31), 64: -(2 ** 63)}


def _cast_like_x86(v: np.ndarray, bits: int) -> np.ndarray:
    """float -> int{bits} as x86's cvtt* does it: NaN or out of range gives INT_MIN."""
    lo = -(2.0 ** (bits - 1))
    ok = np.isfinite(v) & (v >= lo) & (v < -lo)
    out = np.full(v.shape, _INT_INDEFINITE[bits], np.int64)
    out[ok] = v[ok].astype(np.int64)
    return out


def rounded_grid(x: np.ndarray, qp: QParams, name: str = "x") -> np.ndarray:
    """The grid positions of x rounded, zero point applied, NOT yet clipped to [qmin, qmax]
    (rules 2-5): what PyTorch's fake-quant gradient mask tests. float32, or the integer the
    stack casts to (onnx: int32, wrapping; torch: int64, NaN / out of range -> INT64_MIN)."""
    spec = qp.spec
    y, _, zp = _map(x, qp, name)
    with np.errstate(invalid="ignore", over="ignore"):
        if spec.nonfinite == "onnx_int32_cast":  # onnx: rint(x/s).astype(int32); += zp; clip
            r = _cast_like_x86(round_values(y, spec.rounding), 32).astype(np.int32)
            return (r + zp.astype(np.int32)).astype(np.int32)  # int32 arithmetic wraps, as in onnx
        if spec.nonfinite == "torch_int64_cast":  # aten: (int64)(zp + nearbyint(x*inv)); clamp
            v = (round_values(y, spec.rounding) + zp.astype(F32)).astype(F32)
            return _cast_like_x86(v, 64)
        if spec.zero_point_add == "before_round":
            return round_values((y + zp.astype(F32)).astype(F32), spec.rounding)
        if spec.zero_point_add == "fma_before_round":
            factor = (F32(1) / expand(qp.scale, x.shape, spec, name) if spec.mapping == "reciprocal"
                      else expand(qp.multiplier, x.shape, spec, name))
            return round_values(fma_float32(x, factor, zp.astype(F32)), spec.rounding)
        r = round_values(y, spec.rounding)
        if spec.zero_point_add == "after_round" and _has_zero_point(spec):
            r = r + zp.astype(F32)  # decided per spec, not per value: -0.0 + 0 would be +0.0
        return r


def _grid(x: np.ndarray, qp: QParams, name: str) -> np.ndarray:
    """The quantized values as float32 (rounded, zero point applied, clipped): rules 2-5."""
    spec = qp.spec
    r = rounded_grid(x, qp, name)
    if r.dtype.kind == "i":
        return np.clip(r, spec.qmin, spec.qmax).astype(F32)
    with np.errstate(invalid="ignore"):
        out = np.clip(r, F32(spec.qmin), F32(spec.qmax)).astype(F32)
    if spec.nonfinite in ("nan_to_qmin", "nan_to_qmax"):
        out[np.isnan(out)] = F32(spec.qmin) if spec.nonfinite == "nan_to_qmin" else F32(spec.qmax)
    return out


def fma_float32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add: a * b + c rounded ONCE to float32 (ties to even), exactly.

    a * b of two float32 is exact in float64; TwoSum gives the float64 sum s and its exact
    error e. Rounding s to float32 is then correct except when s sits exactly halfway between
    two float32 values while e != 0 (double rounding): then the sign of e picks the side.
    """
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c64
        bb = s - p
        e = (p - (s - bb)) + (c64 - bb)
        r = s.astype(F32)
        r64 = r.astype(np.float64)
        toward = np.nextafter(r, np.where(s > r64, F32(np.inf), F32(-np.inf)).astype(F32))
        midpoint = np.isfinite(s) & (r64 != s) & (s == (r64 + toward.astype(np.float64)) / 2) & (e != 0)
        if np.any(midpoint):
            lo, hi = np.minimum(r, toward), np.maximum(r, toward)
            r = np.where(midpoint, np.where(e > 0, hi, lo), r).astype(F32)
    return r


def _checked_input(x, qp: QParams, name: str) -> np.ndarray:
    if not isinstance(qp, QParams):
        raise ConfigError(f"{name}: expected QParams (from choose_qparams or QParams(...)), got {type(qp).__name__}")
    x = _as_float32(x, name)
    if qp.spec.nonfinite in ("raise", "propagate"):  # integers cannot hold NaN
        check_finite(x, name)
    return x


def quantize(x, qp: QParams, name: str = "x") -> np.ndarray:
    """Integer values of ``x`` (int8, or uint8 for unsigned specs; int4 values held in int8).

    q = clip(round(map(x)) + zero_point, qmin, qmax), with map, round and the place of the
    zero point given by the spec (rules 2, 3, 5). Empty tensors pass through.
    """
    x = _checked_input(x, qp, name)
    out_dtype = np.dtype(qp.spec.storage_dtype)
    if x.size == 0:
        expand(qp.scale, x.shape, qp.spec, name)  # still check the shapes fit
        return np.zeros(x.shape, out_dtype)
    return _grid(x, qp, name).astype(out_dtype)


def _dequantize_values(qf: np.ndarray, qp: QParams, shape, name: str) -> np.ndarray:
    """float32 values of the grid positions qf; a NaN (which stack_artifacts specs let through
    fake_quant) leaves as the canonical NaN (rule 12)."""
    spec = qp.spec
    scale = expand(qp.scale, shape, spec, name)
    zp = expand(qp.zero_point, shape, spec, name)
    if spec.zero_point_add == "float_offset":
        return canonical_nan((qf * scale + expand(qp.offset, shape, spec, name)).astype(F32))
    if spec.mapping == "multiplier":
        mult = expand(qp.multiplier, shape, spec, name)
        mult = np.where(mult == 0, F32(1), mult)  # a zero multiplier (ModelOpt, amax ~ 0) divides by 1
        return canonical_nan(((qf - zp.astype(F32)) / mult if _has_zero_point(spec) else qf / mult).astype(F32))
    return canonical_nan(((qf - zp.astype(F32)) * scale).astype(F32))


def dequantize(q, qp: QParams, name: str = "q") -> np.ndarray:
    """float32 values of integer ``q`` (NumPy integers, or ml_dtypes int4 / int2 arrays):
    (q - zero_point) * scale, or q / multiplier (NVIDIA,
    Q8BERT), or q * scale + (-zp) * scale (DeepSpeed's float zero point)."""
    if not isinstance(qp, QParams):
        raise ConfigError(f"{name}: expected QParams, got {type(qp).__name__}")
    q = integer_values(q, name)
    if q.size and (q.min() < qp.spec.qmin or q.max() > qp.spec.qmax):
        raise OutOfRangeError(f"{name}: values must lie in [{qp.spec.qmin}, {qp.spec.qmax}], got "
                          f"[{q.min()}, {q.max()}]")
    return _dequantize_values(q.astype(F32), qp, q.shape, name)


def fake_quant(x, qp: QParams, name: str = "x") -> np.ndarray:
    """Quantize then dequantize, in float32.

    With fake_quant_domain "integer" this is ``dequantize(quantize(x))`` bit for bit. With
    "float" it is computed without leaving float (as ModelOpt, compressed-tensors, DeepSpeed and
    Q8BERT do): identical values, except that a value rounding to -0.0 stays -0.0 and, with
    nonfinite "propagate", NaN propagates and Inf saturates.
    """
    if isinstance(qp, QParams) and qp.spec.fake_quant_domain == "float":
        x = _as_float32(x, name)
        if qp.spec.nonfinite == "raise":
            check_finite(x, name)
        if x.size == 0:
            return np.zeros(x.shape, F32)
        return _dequantize_values(_grid(x, qp, name), qp, x.shape, name)
    return dequantize(quantize(x, qp, name), qp, name)


__all__ = ["QParams", "choose_qparams", "qparams_from_minmax", "qparams_from_amax", "quantize",
           "dequantize", "fake_quant", "round_values", "param_shape", "expand", "check_finite",
           "row_block_rows", "per_output_row"]
