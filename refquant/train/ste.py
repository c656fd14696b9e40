"""Gradients of fake quantization, as the stacks define them (docs/stacks.md, papers.md).

Rounding has zero gradient almost everywhere, so every stack substitutes a straight-through
estimator (STE); they differ in where they let the gradient through:

``"identity"``        dx = dout everywhere, also where the input was clipped: Q8BERT
                      (FakeLinearQuantizationWithSTE) and DeepSpeed / ZeroQuant.
``"rounded_range"``   dx = dout where the ROUNDED integer (zero point added, before clamping)
                      lies in [qmin, qmax]: PyTorch's fake_quantize_*_cachemask. An input a little
                      past the range that rounds back into it still passes.
``"amax"``            dx = dout where |x| <= amax (inclusive, the float amax = scale * qmax):
                      NVIDIA pytorch-quantization / ModelOpt; no gradient to amax.

Learned ranges: ``lsq_*`` is PyTorch's _LearnableFakeQuantize (LSQ/TQT) per tensor, with its
grad_factor and its backward's round-half-up zero point; ``pact_*`` is NVIDIA's PACT-style
ClipFunction (learned clip bounds, strict inside test).
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError

from ..quant import QParams, expand, rounded_grid

STE_RULES = ("identity", "rounded_range", "amax")


def ste_mask(x: np.ndarray, qp: QParams, rule: str, amax=None) -> np.ndarray:
    """bool mask of where the straight-through gradient passes (module docstring). For "amax",
    ``amax`` (the calibrated range, as NVIDIA keeps it) or else qmax / multiplier (multiplier
    specs: d / amax inverted) or scale * qmax, in float64."""
    if rule == "identity":
        return np.ones(np.shape(x), bool)
    if rule == "rounded_range":
        r = rounded_grid(np.asarray(x, np.float32), qp)
        with np.errstate(invalid="ignore"):
            return (r >= qp.spec.qmin) & (r <= qp.spec.qmax)
    if rule == "amax":
        spec = qp.spec
        if amax is None:
            amax = (spec.qmax / np.asarray(qp.multiplier, np.float64) if qp.multiplier is not None
                    else np.asarray(qp.scale, np.float64) * spec.qmax)
        return np.abs(x) <= expand(np.asarray(amax, np.float64), np.shape(x), spec)
    raise ConfigError(f"STE rule {rule!r}: expected one of {', '.join(STE_RULES)}")


def fake_quant_backward(dout: np.ndarray, x: np.ndarray, qp: QParams, rule: str, amax=None) -> np.ndarray:
    """dx of y = fake_quant(x, qp) under the straight-through ``rule``."""
    return np.where(ste_mask(x, qp, rule, amax), dout, np.zeros((), dout.dtype)).astype(dout.dtype)


# ---- LSQ / TQT: PyTorch's _LearnableFakeQuantize, per tensor ---------------------------------------
def lsq_forward(x, scale: float, zero_point: float, qmin: int, qmax: int, grad_scaling: bool = True):
    """y = (clamp(nearbyint(x / scale + zp), qmin, qmax) - zp) * scale with zp = clamp(
    nearbyint(zero_point), qmin, qmax) (the forward's rounding, half to even), computed with
    inv_scale = 1 / scale as PyTorch does. Returns y and the cache for lsq_backward."""
    x = np.asarray(x, np.float32)
    s = np.float32(max(float(scale), float(np.finfo(np.float32).eps)))  # scale.clamp_(min=eps)
    zp = np.float32(np.clip(np.rint(np.float32(zero_point)), qmin, qmax))
    inv = np.float32(1) / s
    xq = np.rint(x * inv + zp)  # (float zero point: added before rounding)
    y = ((np.clip(xq, qmin, qmax) - zp) * s).astype(np.float32)
    gf = 1.0 / np.sqrt(x.size * qmax) if grad_scaling and x.size else 1.0
    return y, (x, s, np.float32(zero_point), qmin, qmax, gf, y)


def lsq_backward(dout, cache):
    """(dx, dscale, dzero_point) of lsq_forward, as fake_quantize_learnable_tensor_grad_kernel_cpu:
    the backward rounds zp as (zero_point + 0.5) truncated (round half up, unlike the forward);
    xq = zp + nearbyint(x * inv_scale); dx = dout inside [qmin, qmax]; dscale = dout * (qmin - zp)
    below, dout * (qmax - zp) above, dout * (x_fq - x) * inv_scale inside with x_fq = (xq - zp) *
    scale (the backward's zp); dzero_point = -dout * scale
    outside, 0 inside; dscale and dzero_point summed and multiplied by grad_factor."""
    x, s, zp_float, qmin, qmax, gf, _ = cache
    zp = np.float32(np.trunc(np.clip(zp_float, qmin, qmax) + np.float32(0.5)))
    inv = np.float32(1) / s
    xq = zp + np.rint(x * inv)
    below, above = xq < qmin, xq > qmax
    inside = ~(below | above)
    d = np.asarray(dout, np.float64)
    dx = np.where(inside, dout, 0).astype(np.float32)
    # the backward fake-quantizes again with ITS zero point: where the two roundings of a
    # zero point k + 0.5 differ (k even), this is not the forward's y
    x_fq = ((xq - zp) * s).astype(np.float32)
    ds = np.where(below, d * (qmin - zp), np.where(above, d * (qmax - zp), d * (x_fq - x) * inv))
    dz = np.where(inside, 0.0, -d * s)
    return dx, float(ds.sum() * gf), float(dz.sum() * gf)


# ---- PACT-style learned clipping (NVIDIA pytorch-quantization ClipFunction) -----------------------
def pact_forward(x, clip_min: float, clip_max: float):
    """y = min(max(x, clip_min), clip_max) with scalar learned bounds."""
    if not clip_min < clip_max:
        raise ConfigError(f"pact_forward: clip_min {clip_min} must be below clip_max {clip_max}")
    return np.clip(x, clip_min, clip_max), (np.asarray(x), clip_min, clip_max)


def pact_backward(dout, cache):
    """(dx, dclip_min, dclip_max): dx = dout where clip_min < x < clip_max (strict);
    dclip_max = sum(dout where x >= clip_max); dclip_min = sum(dout where x <= clip_min)."""
    x, lo, hi = cache
    inside = (x > lo) & (x < hi)
    return (np.where(inside, dout, 0).astype(np.asarray(dout).dtype),
            float(np.sum(np.where(x <= lo, dout, 0), dtype=np.float64)),
            float(np.sum(np.where(x >= hi, dout, 0), dtype=np.float64)))
