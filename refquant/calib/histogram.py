"""Histogram calibration: NVIDIA's histogram of |x| and the entropy (KL), percentile and MSE
choices of amax made from it.

Sources: NVIDIA Model-Optimizer ``modelopt/torch/quantization/calib/histogram.py``
(HistogramCalibrator.collect with torch_hist=True, _compute_amax_entropy,
_compute_amax_percentile, _compute_amax_mse; pytorch-quantization's copies are identical),
PyTorch's ``torch.histc`` / ``torch.linspace`` CPU kernels (aten/src/ATen/native/cpu/
HistogramKernel.cpp, RangeFactoriesKernel.cpp) for the float32 bin rule and edges, and
S. Migacz, "8-bit Inference with TensorRT" (GTC 2017) for the merge of P into levels.

The histogram is kept as exact int64 counts and float32 edges. ModelOpt keeps torch.histc's
float32 counts, which stop growing at 2^24 = 16,777,216 in one bin (then 2^24 + 1 == 2^24);
below that the two are identical.
"""
from __future__ import annotations

import math

import numpy as np

from weights_io.errors import CalibrationError, ConfigError

from ..dialects import dialect
from ..quant import fake_quant, fma_float32, qparams_from_amax
from ._base import F32, Observer, result

METHODS = ("entropy", "percentile", "mse")


# ---------------------------------------------------------------------------------------
# the float32 building blocks of torch.histc / torch.linspace / torch.arange
# ---------------------------------------------------------------------------------------
def linspace_float32(end, steps: int) -> np.ndarray:
    """torch.linspace(0, end, steps) in float32, as torch 2.13's CPU kernel computes it.

    step = float32(end - 0) / float32(steps - 1); element i is start + step * i below
    steps // 2 and end - step * (steps - 1 - i) from there on, each with ONE rounding (the
    kernels are built with FMA contraction on AVX2 / AVX512 CPUs, and CUDA contracts too);
    the two endpoints are returned exactly.
    """
    end = F32(end)
    step = F32(F32(end - F32(0)) / F32(steps - 1))
    i = np.arange(steps)
    lower = fma_float32(np.full(steps, step, F32), i.astype(F32), np.zeros(steps, F32))
    upper = fma_float32(np.full(steps, -step, F32), (steps - 1 - i).astype(F32), np.full(steps, end, F32))
    out = np.where(i < steps // 2, lower, upper).astype(F32)
    out[0], out[-1] = F32(0), end
    return out


# ATen's CPU arange writes contiguous float32 output in blocks of two 8-lane vectors (Vectorized<float>
# ::size() is 8 in torch 2.13's x86 builds: measured under ATEN_CPU_CAPABILITY default, avx2 and
# avx512 alike) and splits the range into threads only beyond at::internal::GRAIN_SIZE elements.
ARANGE_LANES = 8
ATEN_GRAIN_SIZE = 32768


def _aten_parallel_chunks(count: int, threads: int) -> list:
    """The [begin, end) ranges at::parallel_for(0, count, GRAIN_SIZE, f) hands to f (OpenMP build:
    aten/src/ATen/ParallelOpenMP.h invoke_parallel): one range up to GRAIN_SIZE elements or with
    one thread; else min(threads, ceil(count / GRAIN_SIZE)) ranges of ceil(count / that) each."""
    if count <= ATEN_GRAIN_SIZE or threads <= 1:
        return [(0, count)]
    tasks = min(threads, -(-count // ATEN_GRAIN_SIZE))
    chunk = -(-count // tasks)
    return [(b, min(count, b + chunk)) for b in range(0, count, chunk)]


def arange_float32(step, count: int, threads: int = 1) -> np.ndarray:
    """The first ``count`` elements of torch.arange(0, end, step) in float32, as torch 2.13's CPU
    kernel computes them (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp, arange_kernel).

    start and step are double there (acc_type<float>). Element k is one of two things:
    - scalar path: float32(k * step), one rounding (k * step is exact in double);
    - vector path, for the lanes of each full block of 2 x ARANGE_LANES elements of a
      parallel_for range: ``Vectorized<float>::arange(start + step * k0, step)`` rounds the
      block's first element to float32 (its ``float base`` parameter) and makes lane j as
      float32(double(base) + j * step): TWO roundings, so lane j can sit 1 ulp off k * step.
    The trailing count % (2 x ARANGE_LANES) elements of each range take the scalar path. Ranges
    follow at::parallel_for (see _aten_parallel_chunks), so beyond 32768 elements the result
    depends on torch.get_num_threads(), passed here as ``threads``.
    """
    if not (isinstance(count, (int, np.integer)) and count >= 0):
        raise ConfigError(f"arange_float32: count must be an integer >= 0, got {count!r}")
    if not (isinstance(threads, (int, np.integer)) and threads >= 1):
        raise ConfigError(f"arange_float32: threads must be an integer >= 1, got {threads!r}")
    step = np.float64(F32(step))
    out = (np.arange(count, dtype=np.float64) * step).astype(F32)
    block = 2 * ARANGE_LANES
    for begin, end in _aten_parallel_chunks(count, threads):
        n_vec = (end - begin) // block * block
        i = np.arange(n_vec)
        lane = i % ARANGE_LANES
        base = ((begin + i - lane) * step).astype(F32).astype(np.float64)
        out[begin:begin + n_vec] = (base + lane * step).astype(F32)
    return out


def histc_float32(values: np.ndarray, bins: int, hi) -> np.ndarray:
    """torch.histc(values, bins, min=0, max=hi) for float32 values >= 0, as int64 counts.

    The CPU kernel's bin rule (LINEAR_INTERPOLATION, used by histc):
    pos = (int64) ((x - 0) * bins / (hi - 0)) in float32 arithmetic, then pos == bins -> bins-1
    (the last bin includes its right edge); values outside [0, hi] are not counted.
    """
    hi = F32(hi)
    v = values[(values >= 0) & (values <= hi)]
    pos = np.floor((v * F32(bins)).astype(F32) / hi).astype(np.int64)  # v >= 0: floor == trunc
    np.minimum(pos, bins - 1, out=pos)
    return np.bincount(pos, minlength=bins).astype(np.int64)


# ---------------------------------------------------------------------------------------
# amax from a histogram (pure functions)
# ---------------------------------------------------------------------------------------
def merge_bins(p, num_levels: int) -> np.ndarray:
    """TensorRT's "quantize P into num_levels levels and expand back" (the Q of the KL search).

    Source bin j goes to level ``np.digitize(j, linspace(0, len(p), num_levels + 1)) - 1``
    (uneven groups when len(p) is not a multiple of num_levels: ModelOpt's rule). A level's
    value is the MEAN over its NONZERO source bins, and every empty source bin stays 0 ("preserve
    empty bins from the original distribution P", GTC 2017). Float64 result, not normalised.

    >>> merge_bins([1, 0, 2, 3, 5, 3, 1, 7], 2).tolist()
    [2.0, 0.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    """
    p = np.asarray(p)
    n = p.shape[0]
    level = np.digitize(np.arange(n), np.linspace(0, n, num=num_levels + 1)) - 1
    full = p != 0
    sums = np.bincount(level[full], weights=p[full].astype(np.float64), minlength=num_levels)
    counts = np.bincount(level[full], minlength=num_levels)
    q = np.zeros(n, np.float64)
    q[full] = sums[level[full]] / counts[level[full]]
    return q


def _check_search(num_bits, unsigned, stride, start_bin, what):
    if not (isinstance(num_bits, (int, np.integer)) and 2 <= num_bits <= 8):
        raise ConfigError(f"{what}: num_bits must be an integer in 2..8, got {num_bits!r}")
    if not (isinstance(stride, (int, np.integer)) and stride >= 1):
        raise ConfigError(f"{what}: stride must be a positive integer, got {stride!r}")
    if not (isinstance(start_bin, (int, np.integer)) and start_bin >= 1):
        raise ConfigError(f"{what}: start_bin must be a positive integer, got {start_bin!r}")
    if not isinstance(unsigned, (bool, np.bool_)):
        raise ConfigError(f"{what}: unsigned must be a bool, got {unsigned!r}")


def compute_amax_entropy(hist, edges, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
                         start_bin: int = 128) -> np.float64:
    """The amax whose clipped-and-merged histogram is closest in KL divergence to the original.

    ModelOpt ``_compute_amax_entropy`` exactly:
    - bins = a copy of hist with bins[0] := bins[1] (the zero bin is not trusted);
    - candidates i = start_bin, start_bin + stride, ... up to and INCLUDING len(bins) (no
      clipping is a candidate);
    - P = bins[:i] with every count from bin i on folded into its last bin; Q = merge_bins(
      bins[:i], 2^(num_bits - 1 + unsigned)) (128 levels for int8);
    - divergence = scipy.stats.entropy(P, Q) (natural log; scipy normalises both). It is +inf
      when Q is 0 where P is not (last bin empty but outliers folded into it) and NaN when Q
      is all zero (no data below i): np.argmin takes a NaN as the minimum, so ModelOpt then
      picks that candidate, and so does this function;
    - ties go to the LAST (largest) i; amax = edges[i] (the upper edge of bin i - 1).
    Differences from the TensorRT slides (candidates < 2048 only, threshold (m + 0.5) * width,
    bin 0 unmodified): see stacks.md section 5; ModelOpt's rules are the ones kept.
    """
    from scipy.stats import entropy  # scipy only when entropy calibration is used
    # scipy's own function without its axis / nan_policy wrapper (same values for 1-D finite
    # inputs, which these are; the wrapper costs 5x the computation)
    entropy = getattr(entropy, "__wrapped__", entropy)

    _check_search(num_bits, unsigned, stride, start_bin, "entropy calibration")
    bins = np.array(hist, dtype=np.int64)
    edges = np.asarray(edges, dtype=F32)
    n = bins.shape[0]
    if n < 2 or start_bin > n:
        raise ConfigError(f"entropy calibration: start_bin {start_bin} needs a histogram of at "
                          f"least max(2, start_bin) bins, got {n}")
    bins[0] = bins[1]
    levels = 1 << (num_bits - 1 + int(unsigned))
    outliers = np.concatenate([np.cumsum(bins[::-1])[::-1], [0]])  # outliers[i] = sum(bins[i:])
    candidates = range(start_bin, n + 1, stride)
    divergences = np.empty(len(candidates))
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, i in enumerate(candidates):
            p = bins[:i].copy()
            p[-1] += outliers[i]
            divergences[k] = entropy(p, merge_bins(bins[:i], levels))
    last = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return result(edges[candidates[last]])


def _checked_percentile(percentile, what: str) -> float:
    percentile = float(percentile)
    if not 0 < percentile <= 100:
        raise ConfigError(f"{what}: percentile must lie in (0, 100], got {percentile!r}")
    return percentile


def compute_amax_percentile(hist, edges, percentile: float) -> np.float64:
    """The lower edge of the bin in which the cumulative share of the data reaches percentile.

    ModelOpt ``_compute_amax_percentile``: cdf = cumsum(hist / total) (float64);
    idx = searchsorted(cdf, percentile / 100) (side "left"); amax = edges[idx]. ModelOpt
    accepts percentile 0 (amax 0); here it must lie in (0, 100].
    """
    percentile = _checked_percentile(percentile, "percentile calibration")
    hist = np.asarray(hist, dtype=np.int64)
    edges = np.asarray(edges, dtype=F32)
    cdf = np.cumsum(hist / hist.sum())
    return result(edges[int(np.searchsorted(cdf, percentile / 100))])


def compute_amax_mse(hist, edges, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
                     start_bin: int = 128, name: str = "x") -> np.float64:
    """The bin centre that, as amax, gives the least count-weighted fake-quantization error.

    ModelOpt ``_compute_amax_mse`` with its INTENDED semantics (stacks.md section 3):
    - centres c = (edges[1:] + edges[:-1]) / 2 and counts, both float32;
    - candidates amax = c[i] for i = start_bin, start_bin + stride, ... up to the last centre
      (so never the last edge, which entropy's no-clipping candidate is);
    - error(i) = mean((fake_tensor_quant(c, c[i]) - c)^2 * counts) over all bins, with
      ModelOpt's fake quantization at num_bits, unsigned, narrow_range=True (the function's
      default: [-127, 127]); computed here with refquant's "modelopt" dialect;
    - np.argmin: ties go to the FIRST (smallest) i; amax = c[i*] (a bin centre, not an edge).
    ModelOpt itself passes num_bits and unsigned positionally into fake_tensor_quant's
    ``bias`` and ``num_bits`` slots (every quantized centre becomes amax + 8 on CPU); that
    accident is not reproduced.
    The squared errors are float32 as in torch; their mean is summed in float64, whereas
    torch sums float32 in its own order: two candidates whose errors agree to ~1e-7 relative
    may be ordered differently.
    """
    _check_search(num_bits, unsigned, stride, start_bin, "mse calibration")
    counts = np.asarray(hist).astype(F32)
    edges = np.asarray(edges, dtype=F32)
    centers = ((edges[1:] + edges[:-1]) / F32(2)).astype(F32)
    n = centers.shape[0]
    if start_bin >= n:
        raise ConfigError(f"mse calibration: start_bin {start_bin} needs a histogram of more than "
                          f"{start_bin} bins, got {n}")
    spec = dialect("modelopt", bits=int(num_bits), signed=not unsigned, narrow=not unsigned,
                   granularity="channel", axis=0)
    candidates = np.arange(start_bin, n, stride)
    errors = np.empty(candidates.shape[0])
    block = max(1, (1 << 22) // n)  # bound the [candidates, bins] work array to ~16 MB
    for s in range(0, candidates.shape[0], block):
        amax = centers[candidates[s:s + block]]
        grid = np.broadcast_to(centers, (amax.shape[0], n))
        d = (fake_quant(grid, qparams_from_amax(amax, spec), name) - centers).astype(F32)
        errors[s:s + block] = ((d * d).astype(F32) * counts).astype(F32).astype(np.float64).sum(axis=1) / n
    return result(centers[candidates[int(np.argmin(errors))]])


# ---------------------------------------------------------------------------------------
# the observer
# ---------------------------------------------------------------------------------------
class HistogramObserver(Observer):
    """Histogram of |x| over all batches; amax by entropy (KL), percentile or MSE.

    Collection follows ModelOpt HistogramCalibrator.collect with torch_hist=True (the default):
    - first batch: ``torch.histc(|x|, num_bins, min=0, max=m)`` with m = max|x| and edges
      ``torch.linspace(0, m, num_bins + 1)`` (float32; see linspace_float32);
    - later batch with max|x| = m > edges[-1]: the bin width w = edges[1] - edges[0] is KEPT,
      num_bins := ceil(float32(m / w)) and the edges become ``torch.arange(0, m + w, w)`` as
      torch's CPU kernel computes it (arange_float32: k * w rounded once, except the SIMD lanes,
      rounded twice), k = 0..num_bins;
    - every later batch: ``torch.histc(|x|, num_bins, min=0, max=edges[-1])`` with the current
      num_bins, its counts added to the previous ones in the first bins.
    Bin rule: histc_float32 (torch's float32 ``x * bins / max``, truncated).

    Choices where ModelOpt has no sane behaviour (documented, not reproduced):
    - a batch whose max|x| is 0 before any nonzero batch: ModelOpt makes edges
      linspace(0, 0) and the next nonzero batch dies (width 0, ``int(inf)`` OverflowError).
      Here its values are counted once the first nonzero batch fixes the edges (in bin 0,
      where histc puts zeros); if no nonzero batch ever comes, every amax is 0.0;
    - ModelOpt sizes a grown histogram twice: ceil(float32(m / w)) bins for histc and
      ceil(float32(m + w) / w) (double division) edges from arange. When m / w lies within
      about 2^-24 (relative) of an integer they can disagree: num_bins + 2 edges, the histc
      bins then wider than w, or a last edge below m, m then left uncounted. Here there are
      always num_bins + 1 edges, num_bins raised until the last edge reaches m.
    - growth beyond ``max_bins`` bins (default 2^22; e.g. a first batch of max 1e-6 followed
      by data up to 1e3) raises CalibrationError naming the site; ModelOpt allocates them.
    - ModelOpt's torch_hist=False path (np.histogram over [min|x|, max|x|]) is not offered.
    - ModelOpt on a GPU gets CUDA's arange (k * w rounded once) and CUDA's histc bin rule;
      refquant follows the CPU kernels.

    Batch split: the result DEPENDS on the split. The first batch with a nonzero max fixes the
    bin width w = max|x_first| / num_bins for good, and with it the resolution and the
    candidate thresholds (edges k * w for entropy and percentile, centres (k + 1/2) * w for
    mse): feeding the same data whole or starting with a batch of smaller max gives different
    amax. Given the first batch, the final bin count depends only on the overall max; the split
    and order of the remaining data change the counts only through float32 rounding of the bin
    index for values within a few ulps of a bin edge (each batch is binned with the bin count
    current when it arrives). max|x| itself (``amax()`` with method None) does not depend on it.
    After growth the last edge num_bins * w lies up to one bin width above max|x|, and
    entropy's no-clipping candidate (or percentile 100) can return it; on the first batch's
    histogram every amax is <= max|x|.

    Options (``method`` chooses what ``amax()`` computes; the amax_* methods work regardless):
      num_bins   bins of the first histogram (2048); its width is kept when the range grows
      max_bins   the most bins growth may reach (CalibrationError beyond)
      torch_threads  torch.get_num_threads() of the run reproduced: torch's CPU arange splits
                 its range across threads beyond 32768 edges, which moves its SIMD blocks
                 (arange_float32); no effect on smaller histograms
      method     None (amax() = the running max|x|), "entropy", "percentile" or "mse"
      options    those of the chosen method: percentile (required for "percentile");
                 num_bits, unsigned, stride, start_bin for "entropy" / "mse".
    """

    def __init__(self, num_bins: int = 2048, name: str = "x", method: str | None = None,
                 max_bins: int = 1 << 22, torch_threads: int = 1, **options):
        if not (isinstance(num_bins, (int, np.integer)) and num_bins >= 2):
            raise ConfigError(f"HistogramObserver({name!r}): num_bins must be an integer >= 2, "
                              f"got {num_bins!r}")
        if not (isinstance(max_bins, (int, np.integer)) and max_bins >= num_bins):
            raise ConfigError(f"HistogramObserver({name!r}): max_bins must be an integer >= num_bins, "
                              f"got {max_bins!r}")
        if not (isinstance(torch_threads, (int, np.integer)) and torch_threads >= 1):
            raise ConfigError(f"HistogramObserver({name!r}): torch_threads must be an integer >= 1, "
                              f"got {torch_threads!r}")
        self.num_bins = int(num_bins)
        self.max_bins = int(max_bins)
        self.torch_threads = int(torch_threads)
        if method is not None and method not in METHODS:
            raise ConfigError(f"HistogramObserver({name!r}): unknown method {method!r}; known: "
                              f"{', '.join(METHODS)} (or None for the plain max|x|)")
        allowed = {"entropy": {"num_bits", "unsigned", "stride", "start_bin"},
                   "mse": {"num_bits", "unsigned", "stride", "start_bin"},
                   "percentile": {"percentile"}, None: set()}[method]
        unknown = set(options) - allowed
        if unknown:
            raise ConfigError(f"HistogramObserver({name!r}, method={method!r}): unknown option(s) "
                              f"{sorted(unknown)}; allowed: {sorted(allowed)}")
        if method == "percentile":
            if "percentile" not in options:
                raise ConfigError(f"HistogramObserver({name!r}): method 'percentile' needs percentile=")
            _checked_percentile(options["percentile"], f"HistogramObserver({name!r})")
        if method in ("entropy", "mse"):
            start = options.get("start_bin", 128)
            _check_search(options.get("num_bits", 8), options.get("unsigned", False),
                          options.get("stride", 1), start, f"HistogramObserver({name!r})")
            if start > self.num_bins - (method == "mse"):
                raise ConfigError(f"HistogramObserver({name!r}): start_bin {start} leaves no "
                                  f"candidate among {self.num_bins} bins (method {method!r})")
        self.method = method
        self.options = dict(options)
        super().__init__(name)

    def _reset_state(self):
        self._hist = None          # int64 counts; None until a batch with a nonzero max
        self._edges = None         # float32, len(hist) + 1
        self._zeros_pending = 0    # values of all-zero batches seen before the edges exist
        self._max = F32(0)

    # -- collection --------------------------------------------------------------------
    def _observe(self, x):
        a = np.abs(x).reshape(-1)
        m = a.max()
        self._max = max(self._max, m)
        if self._edges is None:
            if m == 0:
                self._zeros_pending += a.size
                return
            self._edges = linspace_float32(m, self.num_bins + 1)
            self._hist = histc_float32(a, self.num_bins, m)
            self._hist[0] += self._zeros_pending
            self._zeros_pending = 0
            return
        if m > self._edges[-1]:
            width = F32(self._edges[1] - self._edges[0])
            with np.errstate(divide="ignore", over="ignore"):
                ratio = F32(m / width)   # width 0: a subnormal first max underflowed its step
            if not ratio <= self.max_bins:   # ModelOpt would try to allocate them (torch.arange)
                raise CalibrationError(
                    f"{self.name}: this batch's max|x| = {float(m)!r} needs {float(ratio)!r} bins "
                    f"of the width {float(width)!r} that the first batch fixed (its max|x| / {self.num_bins}), "
                    f"more than max_bins={self.max_bins}. Start with a batch of representative "
                    "range, or raise max_bins")
            nb = math.ceil(ratio)
            # ModelOpt modelopt/torch/quantization/calib/histogram.py:124 (0.47.0) makes the new
            # edges with torch.arange(0, x_max + width, width). On CPU, torch writes arange's
            # 8-lane SIMD blocks as float32(float32(k0 * w) + j * w), two roundings, so about
            # one grown edge in five is 1 ulp off k * w; an amax that lands on such an edge
            # (entropy, percentile: edges[i]; mse: a centre next to it) differed by 1 ulp while
            # refquant computed k * w rounded once. arange_float32 is torch's kernel.
            edges = arange_float32(width, nb + 1, self.torch_threads)
            while edges[-1] < m:  # see the class docstring (m / width within 2^-24 of an integer)
                nb += 1
                edges = arange_float32(width, nb + 1, self.torch_threads)
            self._edges = edges
        counts = histc_float32(a, len(self._edges) - 1, self._edges[-1])
        counts[: len(self._hist)] += self._hist
        self._hist = counts

    # -- state ---------------------------------------------------------------------------
    @property
    def hist(self) -> np.ndarray:
        """The int64 counts (a copy); zeros-only data gives a single bin."""
        self._require_data()
        if self._hist is None:
            return np.array([self._zeros_pending], np.int64)
        return self._hist.copy()

    @property
    def edges(self) -> np.ndarray:
        """The float32 bin edges (a copy), len(hist) + 1 of them."""
        self._require_data()
        if self._edges is None:
            return np.zeros(2, F32)
        return self._edges.copy()

    def max_abs(self) -> np.float64:
        """The running max|x| (independent of the batch split)."""
        self._require_data()
        return result(self._max)

    # -- results ---------------------------------------------------------------------------
    def amax_entropy(self, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
                     start_bin: int = 128) -> np.float64:
        """compute_amax_entropy on the collected histogram (0.0 if all data was zero)."""
        self._require_data()
        if self._hist is None:
            return result(0)
        return compute_amax_entropy(self._hist, self._edges, num_bits, unsigned, stride, start_bin)

    def amax_percentile(self, percentile: float) -> np.float64:
        """compute_amax_percentile on the collected histogram (0.0 if all data was zero)."""
        self._require_data()
        if self._hist is None:
            _checked_percentile(percentile, f"{self.name}: percentile calibration")
            return result(0)
        return compute_amax_percentile(self._hist, self._edges, percentile)

    def amax_mse(self, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
                 start_bin: int = 128) -> np.float64:
        """compute_amax_mse on the collected histogram (0.0 if all data was zero)."""
        self._require_data()
        if self._hist is None:
            return result(0)
        return compute_amax_mse(self._hist, self._edges, num_bits, unsigned, stride, start_bin, self.name)

    def amax(self) -> np.float64:
        """The amax of the method chosen at construction (max|x| for method None)."""
        self._require_data()
        if self.method is None:
            return self.max_abs()
        return getattr(self, f"amax_{self.method}")(**self.options)

    def _options(self):
        opts = "".join(f", {k}={v!r}" for k, v in sorted(self.options.items()))
        threads = f", torch_threads={self.torch_threads}" if self.torch_threads != 1 else ""
        return f"num_bins={self.num_bins}, method={self.method!r}{threads}{opts}"
