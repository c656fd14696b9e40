"""Calibration observers: ``obs.update(x)`` any number of times, then ``obs.amax()``.

Each observer reproduces one stack's calibrator (the source is named in its docstring) and
says whether its result depends on how the data was split into batches.

    from refquant.calib import make_observer
    obs = make_observer("entropy", name="encoder.layer.0.attention.self.query")
    for batch in batches:
        obs.update(batch)
    amax = obs.amax()            # float64 scalar holding the float32 value the stack holds

Observers: MaxObserver, EmaMaxObserver (Q8BERT), MinMaxObserver, MovingAverageMinMaxObserver
(PyTorch), PerChannelMaxObserver, PerChannelMinMaxObserver, HistogramObserver (ModelOpt:
entropy, percentile, mse). Pure functions on a histogram: compute_amax_entropy,
compute_amax_percentile, compute_amax_mse, merge_bins (TensorRT's P -> Q merge).
"""
from .factory import CALIBRATORS, DEFAULT_PERCENTILE, make_observer
from .histogram import (HistogramObserver, arange_float32, compute_amax_entropy, compute_amax_mse,
                        compute_amax_percentile, histc_float32, linspace_float32, merge_bins)
from .observers import (EmaMaxObserver, MaxObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                        PerChannelMaxObserver, PerChannelMinMaxObserver)
from ._base import Observer

observer = make_observer   # the name of the public API v1 (docs/DESIGN.md): rq.calib.observer("entropy")

__all__ = ["Observer", "MaxObserver", "EmaMaxObserver", "MinMaxObserver", "MovingAverageMinMaxObserver",
           "PerChannelMaxObserver", "PerChannelMinMaxObserver", "HistogramObserver", "make_observer", "observer",
           "CALIBRATORS", "DEFAULT_PERCENTILE", "compute_amax_entropy", "compute_amax_percentile",
           "compute_amax_mse", "merge_bins", "histc_float32", "linspace_float32",
           "arange_float32"]
