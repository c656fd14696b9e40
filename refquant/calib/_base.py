"""What every observer shares: the input contract, the "no data yet" rule, the result types.

Input contract (the same for every observer, so that recipes can swap them):
- ``x`` is any float array (float16 / float32 / float64); it is converted to float32 first, as
  torch observers (``x.to(self.min_val.dtype)``) and ModelOpt calibrators (``x.float()``) do.
  Integer arrays raise DTypeError (refquant.quant's rule).
- NaN or Inf anywhere raises NonFiniteError naming the site and the first bad index. Torch
  propagates NaN into its running min/max and ModelOpt asserts; a reference refuses instead.
- An empty ``x`` leaves the state unchanged (torch's ``if x_orig.numel() == 0: return``).
- A result asked for before any non-empty data raises CalibrationError.

Results are float64 numpy scalars (per-tensor) or float64 arrays (per-channel) holding the
exact float32 values the stacks hold: the state itself is float32 throughout.
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import CalibrationError, NonFiniteError

from ..quant import _as_float32

F32 = np.float32


def as_calibration_batch(x, name: str) -> np.ndarray:
    """``x`` as float32, refusing integer dtypes and NaN / Inf (naming the first bad index)."""
    x = _as_float32(x, name)
    if x.size and not np.isfinite(x).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise NonFiniteError(f"{name}: calibration data element {idx} is {x[idx]!r}; an observer "
                             "cannot take a range from NaN or Inf (numeric contract rule 6)")
    return x


def positive_zero(v):
    """-0.0 -> +0.0 (other values unchanged). The sign of a zero extremum is an accident of the
    reduction order (torch.aminmax and np.min disagree on it); a range has no signed zero."""
    return v + F32(0)


def result(v) -> np.ndarray | np.float64:
    """A float32 state value as the float64 result type (scalar or array), -0.0 made +0.0."""
    v = positive_zero(np.asarray(v, dtype=F32)).astype(np.float64)
    return v[()] if v.ndim == 0 else v


class Observer:
    """Base class: ``update(x)`` any number of times, then ``amax()``.

    name  the site / tensor name used in every error message.
    """

    def __init__(self, name: str = "x"):
        self.name = str(name)
        self.batches = 0  # non-empty updates seen (reported in errors and reprs)
        self._reset_state()

    def update(self, x) -> None:
        x = as_calibration_batch(x, self.name)
        if x.size == 0:
            return
        self._observe(x)
        self.batches += 1

    def _observe(self, x: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _require_data(self) -> None:
        if self.batches == 0:
            raise CalibrationError(f"{self.name}: {type(self).__name__} has seen no calibration data "
                                   "(update() was never called with a non-empty array); there is "
                                   "no range to report")

    def amax(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything observed (the constructor's options are kept)."""
        self.batches = 0
        self._reset_state()

    def _reset_state(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _options(self) -> str:
        return ""

    def __repr__(self):
        opts = self._options()
        return f"{type(self).__name__}(name={self.name!r}{', ' + opts if opts else ''}; {self.batches} batches)"
