"""make_observer: an observer from a recipe's calibrator name and options."""
from __future__ import annotations

from weights_io.errors import ConfigError

from .histogram import HistogramObserver
from .observers import (EmaMaxObserver, MaxObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                        PerChannelMaxObserver, PerChannelMinMaxObserver)

CALIBRATORS = ("max", "ema", "minmax", "moving_minmax", "entropy", "percentile", "mse")

_OPTIONS = {
    "max": {"axis"},
    "ema": {"decay"},
    "minmax": {"axis"},
    "moving_minmax": {"averaging_constant"},
    "entropy": {"num_bins", "torch_threads", "num_bits", "unsigned", "stride", "start_bin"},
    "percentile": {"num_bins", "torch_threads", "percentile"},
    "mse": {"num_bins", "torch_threads", "num_bits", "unsigned", "stride", "start_bin"},
}

DEFAULT_PERCENTILE = 99.999  # NVIDIA's whitepaper recipe (ModelOpt's own default is 99.99)


def make_observer(method: str, name: str = "x", **options):
    """The observer for calibrator ``method`` (CALIBRATORS); ``obs.amax()`` gives its result.

    max            MaxObserver, or PerChannelMaxObserver with axis=...
    ema            EmaMaxObserver(decay=0.9999)
    minmax         MinMaxObserver, or PerChannelMinMaxObserver with axis=...
    moving_minmax  MovingAverageMinMaxObserver(averaging_constant=0.01)
    entropy, percentile, mse
                   HistogramObserver(num_bins=2048, method=...) whose amax() runs that search;
                   percentile defaults to 99.999; entropy / mse take num_bits, unsigned,
                   stride, start_bin; all three take torch_threads (see HistogramObserver).
    An unknown method or option raises ConfigError.
    """
    if method not in _OPTIONS:
        raise ConfigError(f"{name}: unknown calibrator {method!r}; known: {', '.join(CALIBRATORS)}")
    unknown = set(options) - _OPTIONS[method]
    if unknown:
        raise ConfigError(f"{name}: calibrator {method!r} has no option(s) {sorted(unknown)}; "
                          f"allowed: {sorted(_OPTIONS[method])}")
    if method in ("max", "minmax"):
        axis = options.get("axis")
        if axis is None:
            return (MaxObserver if method == "max" else MinMaxObserver)(name=name)
        return (PerChannelMaxObserver if method == "max" else PerChannelMinMaxObserver)(axis=axis, name=name)
    if method == "ema":
        return EmaMaxObserver(name=name, **options)
    if method == "moving_minmax":
        return MovingAverageMinMaxObserver(name=name, **options)
    num_bins = options.pop("num_bins", 2048)
    if method == "percentile":
        options.setdefault("percentile", DEFAULT_PERCENTILE)
    return HistogramObserver(num_bins=num_bins, name=name, method=method, **options)
