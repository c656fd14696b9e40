"""Running-statistic observers: max, EMA of max (Q8BERT), min/max and moving-average min/max
(PyTorch), and per-channel max and min/max for weights.

All state is float32, updated with float32 arithmetic in the order of the cited source, so the
results are the stacks' own float32 values (returned as float64, see ``_base``).
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError, ShapeError

from ..quant import _norm_axis
from ._base import F32, Observer, result


def _abs_max(x: np.ndarray) -> np.float32:
    return np.abs(x).max()  # |-0.0| = +0.0, so a zero max is never -0.0


def _fraction(value, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must lie in [0, 1], got {value!r}")
    return value


class MaxObserver(Observer):
    """Running maximum of |x| over every batch: the symmetric range ``amax``.

    Follows NVIDIA ModelOpt ``modelopt/torch/quantization/calib/max.py`` MaxCalibrator.collect
    with axis=None (and pytorch-quantization's): per batch ``reduce_amax`` =
    max(|max x|, |min x|), combined with the previous amax by ``torch.max``. No EMA.

    Batch split: the result does NOT depend on how the data is split into batches or on their
    order (a max of maxes is the max).
    """

    def _reset_state(self):
        self._amax = None

    def _observe(self, x):
        m = _abs_max(x)
        self._amax = m if self._amax is None else np.maximum(self._amax, m)

    def amax(self) -> np.float64:
        self._require_data()
        return result(self._amax)


class EmaMaxObserver(Observer):
    """Exponential moving average of each batch's max|x| (Q8BERT's activation thresholds).

    Follows IntelLabs nlp-architect ``nlp_architect/nn/torch/quantization.py``
    QuantizedLinear._update_ema with ``reduce_fn = x.abs().max()``:
      first batch (``_step == start_step``):  ema.fill_(max|x|)
      later batches:                          ema.sub_((1 - ema_decay) * (ema - max|x|))
    The buffer (``input_thresh``) is a float32 tensor, so every step is float32: the Python
    double ``1 - decay`` is rounded to float32 by torch's scalar promotion, then
    ``ema - max`` and the product and the subtraction are each rounded to float32. This is
    kept here bit for bit (decay 0.9999 gives the float32 rate 9.99999974738e-05).
    ``amax()`` is the EMA after the last update: nlp-architect updates the EMA with the batch
    before it takes the scale from it.

    Batch split: the result DEPENDS on the split and the order, by design. The first batch's
    max keeps weight decay^(N-1) after N batches (0.9999^N: with few batches the threshold is
    essentially the first batch's max); one batch gives exactly that batch's max|x|.
    """

    def __init__(self, decay: float = 0.9999, name: str = "x"):
        self.decay = _fraction(decay, "EmaMaxObserver: decay")
        self._rate = F32(1.0 - self.decay)  # torch casts the Python scalar to the buffer dtype
        super().__init__(name)

    def _reset_state(self):
        self._ema = None

    def _observe(self, x):
        m = _abs_max(x)
        if self._ema is None:
            self._ema = m
        else:
            self._ema = F32(self._ema - F32(self._rate * F32(self._ema - m)))

    def amax(self) -> np.float64:
        self._require_data()
        return result(self._ema)

    def _options(self):
        return f"decay={self.decay!r}"


class _MinMaxResult:
    """minmax() and amax() of observers that keep a min and a max."""

    def minmax(self):
        """(min, max) of the observed data, as float64 values of the float32 state."""
        self._require_data()
        return result(self._min), result(self._max)

    def amax(self):
        """max(|min|, |max|): the symmetric range of the observed min/max."""
        self._require_data()
        return result(np.maximum(np.abs(self._min), np.abs(self._max)))


class MinMaxObserver(_MinMaxResult, Observer):
    """Running minimum and maximum of x.

    Follows PyTorch ``torch/ao/quantization/observer.py`` MinMaxObserver.forward: per batch
    ``torch.aminmax(x)``, combined with the running values by ``torch.min`` / ``torch.max``
    (state starts at +inf / -inf; an empty x returns without updating).
    A zero min or max is reported as +0.0: torch's sign of a zero extremum depends on its
    vectorised reduction order (aminmax of [-0.0, 0.0] is -0.0 or +0.0 with the length).

    Batch split: the result does NOT depend on the split or the order.
    """

    def _reset_state(self):
        self._min = self._max = None

    def _observe(self, x):
        lo, hi = x.min(), x.max()
        if self._min is None:
            self._min, self._max = lo, hi
        else:
            self._min, self._max = np.minimum(self._min, lo), np.maximum(self._max, hi)


class MovingAverageMinMaxObserver(_MinMaxResult, Observer):
    """Moving averages of each batch's min and max.

    Follows PyTorch ``torch/ao/quantization/observer.py`` MovingAverageMinMaxObserver.forward:
      first batch (state still +inf / -inf):  min, max = torch.aminmax(x)
      later:  min = min + c * (min_cur - min);  max = max + c * (max_cur - max)
    with c = averaging_constant (default 0.01). The buffers are float32 and torch rounds the
    Python scalar c to float32, so each of the three operations rounds to float32 (kept here).

    Batch split: the result DEPENDS on the split and the order, by design (the first batch
    counts with weight (1-c)^(N-1)); one batch gives exactly its min and max.
    """

    def __init__(self, averaging_constant: float = 0.01, name: str = "x"):
        self.averaging_constant = _fraction(averaging_constant,
                                            "MovingAverageMinMaxObserver: averaging_constant")
        self._c = F32(self.averaging_constant)
        super().__init__(name)

    def _reset_state(self):
        self._min = self._max = None

    def _observe(self, x):
        lo, hi = x.min(), x.max()
        if self._min is None:
            self._min, self._max = lo, hi
        else:
            self._min = F32(self._min + F32(self._c * F32(lo - self._min)))
            self._max = F32(self._max + F32(self._c * F32(hi - self._max)))

    def _options(self):
        return f"averaging_constant={self.averaging_constant!r}"


class _PerChannel(Observer):
    """Per-channel state: one value per index of ``axis`` (the output channel of a weight)."""

    def __init__(self, axis: int = 0, name: str = "x"):
        self.axis = int(axis)
        super().__init__(name)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """x as [channels, everything else]; checks the channel count against earlier batches."""
        if x.ndim == 0:
            raise ShapeError(f"{self.name}: a per-channel observer needs at least 1 dimension, "
                             "got a scalar")
        axis = _norm_axis(self.axis, x.ndim, self.name)
        rows = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        if self._channels is not None and rows.shape[0] != self._channels:
            raise ShapeError(f"{self.name}: {type(self).__name__} (axis {self.axis}) saw "
                             f"{self._channels} channels before, now {rows.shape[0]} (shape "
                             f"{tuple(x.shape)}); the channel count must not change between batches")
        self._channels = rows.shape[0]
        return rows

    def _reset_state(self):
        self._channels = None

    def _options(self):
        return f"axis={self.axis}"


class PerChannelMaxObserver(_PerChannel):
    """Running maximum of |x| per channel (weights: one amax per output row).

    Follows NVIDIA ModelOpt ``calib/max.py`` MaxCalibrator with ``axis`` set: ``reduce_amax``
    over every other axis (max(|amax|, |amin|)), running ``torch.max``; a change of shape
    between batches is an error there (RuntimeError "amax shape changed!") and a ShapeError here.
    A 1-D x has one channel per element (ModelOpt reduces a 1-D tensor to a single amax, since
    it then has no axis left to reduce over; that case is not reproduced).

    Batch split: the result does NOT depend on the split (along any axis but ``axis``) or order.
    """

    def _reset_state(self):
        super()._reset_state()
        self._amax = None

    def _observe(self, x):
        m = np.abs(self._rows(x)).max(axis=1)
        self._amax = m if self._amax is None else np.maximum(self._amax, m)

    def amax(self) -> np.ndarray:
        self._require_data()
        return result(self._amax)


class PerChannelMinMaxObserver(_MinMaxResult, _PerChannel):
    """Running minimum and maximum per channel.

    Follows PyTorch ``torch/ao/quantization/observer.py`` PerChannelMinMaxObserver._forward:
    the channel axis (``ch_axis``, default 0) is moved first, the rest flattened, and
    ``torch.aminmax(y, dim=1)`` is combined with the running values by torch.min / torch.max.
    A changing channel count fails in torch with a broadcasting RuntimeError; here it is a
    ShapeError naming the site. A 1-D x has one channel per element (torch refuses 1-D input).

    Batch split: the result does NOT depend on the split (along any axis but ``axis``) or order.
    """

    def _reset_state(self):
        super()._reset_state()
        self._min = self._max = None

    def _observe(self, x):
        rows = self._rows(x)
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if self._min is None:
            self._min, self._max = lo, hi
        else:
            self._min, self._max = np.minimum(self._min, lo), np.maximum(self._max, hi)
