"""refquant.calib: observers, histogram searches, errors and the batch-split claims.

Bit-exact claims compare bytes. The live comparison with ModelOpt / torch / nlp-architect is
validation/conformance/check_calib.py; here the searches are checked against hand-computed
vectors and a line-by-line transcription of ModelOpt's entropy loop, the grown edges against
torch's CPU arange (bits fixed in the test, and torch itself when installed), and multi-batch
heavy-tailed draws against ModelOpt's HistogramCalibrator when ModelOpt is importable.
"""
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import entropy

import refquant.errors as rqe
from refquant.calib import (CALIBRATORS, EmaMaxObserver, HistogramObserver, MaxObserver,
                            MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMaxObserver,
                            PerChannelMinMaxObserver, compute_amax_entropy, compute_amax_mse,
                            arange_float32, compute_amax_percentile, make_observer, merge_bins)

F32 = np.float32
SMALL = dict(num_bins=64)                       # histogram sizes that keep the tests fast
SEARCH = dict(num_bits=4, start_bin=8)          # 8 levels, candidates from bin 8


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))


def observed(obs, *batches):
    for b in batches:
        obs.update(b)
    return obs


def all_observers(name="site"):
    """One of each kind, per-tensor ones with small histograms."""
    return [MaxObserver(name=name), EmaMaxObserver(name=name), MinMaxObserver(name=name),
            MovingAverageMinMaxObserver(name=name), PerChannelMaxObserver(name=name),
            PerChannelMinMaxObserver(name=name),
            HistogramObserver(name=name, method="entropy", **SMALL, **SEARCH),
            HistogramObserver(name=name, method="percentile", percentile=99.9, **SMALL),
            HistogramObserver(name=name, method="mse", **SMALL, **SEARCH)]


finite32 = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
arrays = hnp.arrays(F32, st.integers(1, 300), elements=finite32)


def split_points(draw, n):
    cuts = draw(st.lists(st.integers(0, n), max_size=5))
    return sorted(set(cuts))


# ---------------------------------------------------------------------------------------
# known vectors
# ---------------------------------------------------------------------------------------
def test_tensorrt_slide_merge():
    # GTC 2017 S7310: P merged into 2 levels is [6, 16]; expanded, empty bins stay empty
    assert merge_bins([1, 0, 2, 3, 5, 3, 1, 7], 2).tolist() == [2, 0, 2, 2, 4, 4, 4, 4]


def test_merge_uneven_groups_follow_digitize():
    # 5 bins into 2 levels: linspace(0, 5, 3) = [0, 2.5, 5] -> bins 0,1,2 | 3,4
    assert merge_bins([3, 0, 6, 2, 4], 2).tolist() == [4.5, 0, 4.5, 3, 3]


def test_entropy_hand_computed():
    edges = np.arange(9, dtype=F32)
    # bins[0] := bins[1] -> [1,1,1,1,1,1,1,8]; with 2 levels (num_bits=2) the divergences
    # of i = 4..8 are 0.6662, 0.6599, 0.6188, 0.5562, 0.3672 (by hand): no clipping wins
    assert compute_amax_entropy([5, 1, 1, 1, 1, 1, 1, 8], edges, num_bits=2, start_bin=4) == 8.0
    # every candidate i >= 2 reproduces P exactly (KL = 0): ties go to the LARGEST i
    assert compute_amax_entropy([4, 4, 0, 0, 0, 0, 0, 0], edges, num_bits=2, start_bin=2) == 8.0
    # a lone far outlier is clipped: the threshold stops at the end of the bulk
    assert compute_amax_entropy([0, 10, 9, 8, 7, 0, 0, 1], edges, num_bits=2, start_bin=2) == 5.0


def test_entropy_single_value_picks_the_nan_candidate_like_modelopt():
    # all data in the last bin: every clipped candidate has Q == 0 (divergence NaN) and
    # np.argmin treats NaN as the minimum, so the last clipped candidate (edge 2047) wins
    obs = observed(HistogramObserver(), np.array([3.0], F32))
    assert obs.amax_entropy() == obs.edges[2047] == F32(3.0) * F32(2047) / F32(2048)


def test_percentile_hand_computed():
    edges = np.arange(5, dtype=F32)
    hist = [1, 2, 3, 4]                   # cdf 0.1, 0.3, 0.6, 1.0
    got = [compute_amax_percentile(hist, edges, p) for p in (5, 30, 60, 61, 100)]
    assert got == [0.0, 1.0, 2.0, 3.0, 3.0]   # the LOWER edge of the bin reaching p


def test_mse_hand_computed():
    edges = np.arange(5, dtype=F32)       # centres 0.5, 1.5, 2.5, 3.5
    # 2 bits narrow: the grid is {-amax, 0, amax}. counts [0, 10, 0, 1]:
    # amax 1.5 -> errors 0 (x10) + (3.5-1.5)^2 = 4;  2.5 -> (2.5-1.5)^2 x10 + 1 = 11;  3.5 -> more
    assert compute_amax_mse([0, 10, 0, 1], edges, num_bits=2, start_bin=1) == 1.5
    # all mass in the last bin: amax = its centre quantizes it exactly
    assert compute_amax_mse([0, 0, 0, 10], edges, num_bits=2, start_bin=1) == 3.5
    # ties go to the FIRST minimum: no data at all in the candidates' reach costs 0 everywhere
    assert compute_amax_mse([0, 0, 0, 0], edges, num_bits=2, start_bin=1) == 1.5


def test_ema_float32_recurrence():
    obs = observed(EmaMaxObserver(), np.array([1.0], F32), np.array([-2.0], F32), np.array([0.5], F32))
    rate = F32(1 - 0.9999)                 # torch rounds the Python scalar to float32
    e = F32(1.0)
    for m in (F32(2.0), F32(0.5)):
        e = F32(e - F32(rate * F32(e - m)))
    assert same_bits(F32(obs.amax()), e) and obs.amax().dtype == np.float64
    # decay 0.5 in exact numbers: 1 -> 1 - 0.5 * (1 - 3) = 2 -> 2
    assert observed(EmaMaxObserver(0.5), [1.0], [3.0], [-2.0]).amax() == 2.0


def test_moving_average_minmax_float32_recurrence():
    c = F32(0.01)
    obs = observed(MovingAverageMinMaxObserver(), np.array([-1.0, 2.0], F32), np.array([-3.0, 0.1], F32))
    lo, hi = obs.minmax()
    assert same_bits(F32(lo), F32(F32(-1.0) + F32(c * F32(F32(-3.0) - F32(-1.0)))))
    assert same_bits(F32(hi), F32(F32(2.0) + F32(c * F32(F32(0.1) - F32(2.0)))))
    assert obs.amax() == max(abs(lo), abs(hi))


def test_histogram_growth_keeps_width():
    obs = observed(HistogramObserver(num_bins=8), np.array([1.0], F32), np.array([2.5], F32))
    w = F32(1.0) / F32(8)
    assert len(obs.edges) == 21 and same_bits(obs.edges, (np.arange(21) * 0.125).astype(F32))
    assert obs.hist.tolist() == [0] * 7 + [1] + [0] * 11 + [1]
    assert same_bits(obs.edges[1] - obs.edges[0], w)


def test_grown_edges_are_torch_cpu_arange_with_its_twice_rounded_lanes():
    # w = float32(1.1) / 32; the second batch grows 32 bins to 52. torch's CPU arange (ModelOpt's
    # new edges) writes edge 25 as float32(float32(24 w) + w) = 0x3f5c0001, one ulp above
    # float32(25 w) = 0x3f5c0000; 100 values in bin 25 put the percentile-50 and entropy amax
    # on that edge. Expected bits: ModelOpt 0.47.0 HistogramCalibrator on torch 2.13 CPU.
    w = np.float64(F32(F32(1.1) / F32(32)))
    second = np.concatenate([np.full(100, F32(25.5 * w), F32), np.array([1.76], F32)])
    obs = observed(HistogramObserver(num_bins=32), np.array([1.1], F32), second)
    assert len(obs.edges) == 53 and obs.hist[25] == 100 and obs.hist.sum() == 102
    edge_bits = obs.edges.view(np.uint32)
    assert [hex(edge_bits[k]) for k in (25, 26, 41, 46)] == ["0x3f5c0001", "0x3f64ccce", "0x3fb46666",
                                                              "0x3fca6666"]
    once = (np.arange(53) * w).astype(F32)
    assert np.flatnonzero(obs.edges != once).tolist() == [25, 26, 41, 46]
    assert F32(obs.amax_percentile(50)).view(np.uint32) == 0x3F5C0001
    assert F32(obs.amax_entropy(start_bin=16)).view(np.uint32) == 0x3F5C0001
    assert F32(obs.amax_mse(start_bin=16)).view(np.uint32) == 0x3FE2999A


@settings(max_examples=60, deadline=None)
@given(step=st.floats(float(F32(1e-30)), float(F32(1e30)), width=32), count=st.integers(0, 70000),
       threads=st.integers(1, 4))
def test_arange_float32_is_k_step_except_inside_simd_blocks(step, count, threads):
    got = arange_float32(step, count, threads)
    once = (np.arange(count) * np.float64(F32(step))).astype(F32)
    assert got.dtype == F32 and got.shape == (count,)
    # every element is within one ulp of k * step rounded once
    ulps = np.abs(got.view(np.int32).astype(np.int64) - once.view(np.int32).astype(np.int64))
    assert ulps.max(initial=0) <= 1
    if count <= 32768 or threads == 1:
        # one parallel range: exact on the first lane of each 16-element block of two 8-lane
        # vectors and on the scalar tail; the thread count cannot matter
        n_vec = count // 16 * 16
        exact = np.r_[np.arange(0, n_vec, 8), np.arange(n_vec, count)]
        assert same_bits(got[exact], once[exact])
        assert same_bits(got[:25], once[:25])   # blocks at 0, 8, 16: k0 * step exact
    if count <= 32768:
        assert same_bits(got, arange_float32(step, count, 1 + threads))


@settings(max_examples=40, deadline=None)
@given(step=st.floats(float(F32(1e-6)), 1e3, width=32), count=st.one_of(st.integers(2, 3000), st.integers(32760, 70000)),
       threads=st.integers(1, 3))
def test_arange_float32_equals_torch_cpu_arange(step, count, threads):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want = torch.arange(0, count * float(step), float(step), dtype=torch.float32).numpy()
    finally:
        torch.set_num_threads(before)
    assert same_bits(arange_float32(step, want.size, threads), want)


def modelopt_calib():
    """ModelOpt's histogram module and check_calib's draws and helpers (skip without ModelOpt)."""
    pytest.importorskip("torch")
    mo_hist = pytest.importorskip("modelopt.torch.quantization.calib.histogram")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "validation" / "conformance"))
    import check_calib
    return mo_hist, check_calib


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), num_bins=st.sampled_from([32, 64, 128]),
       start_bin=st.sampled_from([8, 16, 32]))
def test_multibatch_heavy_tails_match_modelopt_bit_for_bit(seed, num_bins, start_bin):
    # Student t batches (1.5-10 dof) of sizes 1-6000 growing, shrinking or wandering in scale
    # (check_calib.heavy_tailed_batches); ModelOpt's own collect and compute_amax.
    import torch
    mo_hist, check_calib = modelopt_calib()
    batches, _ = check_calib.heavy_tailed_batches(np.random.default_rng(seed))
    start_bin = min(start_bin, num_bins // 2)   # mse needs a candidate below the last centre
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lib, obs = check_calib._collect_both(torch, mo_hist, batches, num_bins)
        except rqe.CalibrationError:   # growth past max_bins: refused by design, ModelOpt allocates
            assume(False)
        assert same_bits(obs.edges, lib._calib_bin_edges.numpy())
        assert np.array_equal(obs.hist, lib._calib_hist.int().numpy())
        for p in (99.0, 99.99, 100.0):
            assert same_bits(F32(obs.amax_percentile(p)), lib.compute_amax("percentile", percentile=p).numpy())
        if len(obs.hist) <= 600:   # ModelOpt's entropy loop is O(bins^2) in Python
            assert same_bits(F32(obs.amax_entropy(start_bin=start_bin)),
                             lib.compute_amax("entropy", start_bin=start_bin).numpy())
            with check_calib._patched(mo_hist, "fake_tensor_quant",
                                      check_calib._intended_fake_tensor_quant(mo_hist)):
                want = lib.compute_amax("mse", start_bin=start_bin).numpy()
            assert same_bits(F32(obs.amax_mse(start_bin=start_bin)), want)


# ---------------------------------------------------------------------------------------
# the entropy search against a transcription of ModelOpt's loop
# ---------------------------------------------------------------------------------------
def modelopt_entropy_transcribed(hist, edges, num_bits, unsigned, stride, start_bin):
    """modelopt/torch/quantization/calib/histogram.py _compute_amax_entropy, line by line."""
    bins = np.array(hist)
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(start_bin, len(bins) + 1, stride):
        new_density_counts = np.zeros(nbins, dtype=np.float64)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        for key, val in Counter(digitized_space).items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        reference_density = np.array(bins[:len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        divergences.append(entropy(reference_density, new_density))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return edges[last_argmin * stride + start_bin]


@settings(max_examples=60, deadline=None)
@given(hist=st.lists(st.integers(0, 50), min_size=2, max_size=40), num_bits=st.integers(2, 4),
       unsigned=st.booleans(), stride=st.integers(1, 3), start=st.integers(1, 40))
def test_entropy_equals_modelopt_transcription(hist, num_bits, unsigned, stride, start):
    start = min(start, len(hist))
    edges = (np.arange(len(hist) + 1) * 0.37).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = modelopt_entropy_transcribed(np.array(hist, np.int32), edges, num_bits, unsigned, stride, start)
    got = compute_amax_entropy(hist, edges, num_bits, unsigned, stride, start)
    assert same_bits(F32(got), want)


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(x=arrays, data=st.data())
def test_max_and_minmax_ignore_split_and_order(x, data):
    cuts = split_points(data.draw, x.size)
    perm = data.draw(st.permutations(range(x.size)))
    for make in (MaxObserver, MinMaxObserver):
        whole = observed(make(), x)
        split = observed(make(), *np.split(x[np.array(perm, dtype=np.int64)], cuts))
        assert same_bits(whole.amax(), split.amax())
        if make is MinMaxObserver:
            assert all(same_bits(a, b) for a, b in zip(whole.minmax(), split.minmax()))
    assert whole.amax() == np.max(np.abs(x)).astype(np.float64)


@settings(max_examples=30, deadline=None)
@given(w=hnp.arrays(F32, st.tuples(st.integers(1, 5), st.integers(1, 30)), elements=finite32), data=st.data())
def test_per_channel_ignores_split_along_other_axes(w, data):
    cuts = split_points(data.draw, w.shape[1])
    for make in (PerChannelMaxObserver, PerChannelMinMaxObserver):
        whole = observed(make(), w)
        split = observed(make(), *np.split(w, cuts, axis=1))
        assert same_bits(whole.amax(), split.amax())
        transposed = observed(make(axis=1), w.T)
        assert same_bits(whole.amax(), transposed.amax())
    assert same_bits(whole.amax(), np.abs(w).max(axis=1).astype(np.float64))


@settings(max_examples=40, deadline=None)
@given(x=arrays)
def test_one_batch_ema_and_moving_average_are_that_batch(x):
    assert observed(EmaMaxObserver(), x).amax() == np.abs(x).max()
    lo, hi = observed(MovingAverageMinMaxObserver(), x).minmax()
    assert (lo, hi) == (x.min() + F32(0), x.max() + F32(0))


@settings(max_examples=40, deadline=None)
@given(x=arrays)
def test_every_method_stays_within_max_abs_on_one_batch(x):
    m = np.float64(np.abs(x).max())
    for obs in all_observers():
        amax = observed(obs, x).amax()
        assert np.all(amax <= m), (obs, amax, m)
        assert np.all(amax >= 0)


# |x| in {0} and [0.5, 8]: growth stays below 16x, so the searches stay fast
bounded = hnp.arrays(F32, st.integers(1, 200), elements=st.one_of(
    st.just(0.0), st.floats(0.5, 8, width=32), st.floats(-8, -0.5, width=32)))


@settings(max_examples=25, deadline=None)
@given(x=bounded, data=st.data())
def test_histogram_amax_after_growth_stays_below_last_edge(x, data):
    # after growth the last edge num_bins * w may exceed max|x| by less than one bin width,
    # and entropy's no-clipping candidate (or percentile 100) can return it
    cuts = split_points(data.draw, x.size)
    obs = observed(HistogramObserver(num_bins=16), *np.split(x, cuts))
    width = np.float64(obs.edges[1] - obs.edges[0])
    m = np.float64(np.abs(x).max())
    for amax in (obs.amax_entropy(num_bits=3, start_bin=4), obs.amax_percentile(100),
                 obs.amax_mse(num_bits=3, start_bin=4)):
        assert amax <= obs.edges[-1] and (m == 0 or amax < m + width)


@settings(max_examples=40, deadline=None)
@given(x=arrays, ps=st.lists(st.floats(0.001, 100), min_size=2, max_size=6), data=st.data())
def test_percentile_monotone_and_order_free_on_one_batch(x, ps, data):
    obs = observed(HistogramObserver(**SMALL), x)
    got = [obs.amax_percentile(p) for p in sorted(ps)]
    assert got == sorted(got)
    perm = np.array(data.draw(st.permutations(range(x.size))), dtype=np.int64)
    shuffled = observed(HistogramObserver(**SMALL), x[perm])
    assert same_bits(shuffled.hist, obs.hist)
    assert [shuffled.amax_percentile(p) for p in sorted(ps)] == got


def test_entropy_of_uniform_data_is_nearly_its_max():
    x = np.random.default_rng(0).uniform(-1, 1, 20000).astype(F32)
    obs = observed(make_observer("entropy", num_bins=512), x)
    assert 0.97 * obs.max_abs() <= obs.amax() <= obs.max_abs()


def test_entropy_clips_heavy_tails():
    x = np.random.default_rng(1).standard_t(2, 20000).astype(F32)
    obs = observed(make_observer("entropy", num_bins=512), x)
    assert obs.amax() < 0.5 * obs.max_abs()


# ---------------------------------------------------------------------------------------
# the batch-split claims of the docstrings
# ---------------------------------------------------------------------------------------
def test_histogram_depends_on_the_first_batch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(4000).astype(F32)
    small_first = np.argsort(np.abs(x))        # ascending |x|: the first batch fixes a small width
    whole = observed(HistogramObserver(**SMALL), x)
    split = observed(HistogramObserver(**SMALL), *np.array_split(x[small_first], 4))
    assert whole.max_abs() == split.max_abs()
    assert len(split.hist) > len(whole.hist)   # a finer width, more bins over the same range
    assert split.amax_percentile(99) != whole.amax_percentile(99)


def test_ema_depends_on_the_split():
    a, b = np.array([1.0], F32), np.array([5.0], F32)
    assert observed(EmaMaxObserver(), a, b).amax() != observed(EmaMaxObserver(), b, a).amax()
    assert observed(EmaMaxObserver(), np.concatenate([a, b])).amax() == 5.0


# ---------------------------------------------------------------------------------------
# errors and edge cases
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_names_site_and_index(bad):
    x = np.zeros((2, 3), F32)
    x[1, 2] = bad
    for obs in all_observers("encoder.layer.3.ffn"):
        with pytest.raises(rqe.NonFiniteError, match=r"encoder\.layer\.3\.ffn.*\(1, 2\)"):
            obs.update(x)


def test_no_data_raises_calibration_error():
    for obs in all_observers("head"):
        obs.update(np.zeros((0, 4), F32))      # empty: state unchanged
        with pytest.raises(rqe.CalibrationError, match="head"):
            obs.amax()
    for obs in (MinMaxObserver(), MovingAverageMinMaxObserver(), PerChannelMinMaxObserver()):
        with pytest.raises(rqe.CalibrationError):
            obs.minmax()
    hist = HistogramObserver()
    for method in (hist.amax_entropy, hist.amax_mse, lambda: hist.amax_percentile(99)):
        with pytest.raises(rqe.CalibrationError):
            method()
    assert issubclass(rqe.CalibrationError, rqe.RefquantError)


def test_empty_batches_change_nothing():
    x = np.array([1.0, -2.0], F32)
    for make in (MaxObserver, EmaMaxObserver, MovingAverageMinMaxObserver):
        a = observed(make(), x, np.array([], F32), x * 3, np.zeros((3, 0), F32))
        b = observed(make(), x, x * 3)
        assert a.amax() == b.amax() and a.batches == 2


def test_per_channel_count_change_raises_shape_error():
    obs = observed(PerChannelMaxObserver(name="layer.w"), np.ones((4, 3), F32))
    with pytest.raises(rqe.ShapeError, match=r"layer\.w.*4 channels.*now 5"):
        obs.update(np.ones((5, 3), F32))
    with pytest.raises(rqe.ShapeError, match="layer.w"):
        PerChannelMinMaxObserver(name="layer.w").update(np.float32(1.0))
    with pytest.raises(rqe.ShapeError):
        PerChannelMinMaxObserver(axis=2, name="w").update(np.ones((2, 2), F32))


def test_runaway_growth_raises_calibration_error():
    obs = observed(HistogramObserver(name="attn.q", num_bins=64, max_bins=4096), np.array([1e-3], F32))
    with pytest.raises(rqe.CalibrationError, match=r"attn\.q.*max_bins=4096"):
        obs.update(np.array([1.0], F32))


def test_integer_data_is_refused():
    with pytest.raises(rqe.DTypeError):
        MaxObserver().update(np.arange(3))


def test_all_zero_input_gives_zero_everywhere():
    for obs in all_observers():
        amax = observed(obs, np.zeros(7, F32), -np.zeros(7, F32)).amax()
        assert np.all(amax == 0) and not np.any(np.signbit(amax))
    assert observed(HistogramObserver(), np.zeros(3, F32)).amax_percentile(50) == 0.0


def test_zero_batches_before_data_count_in_bin_zero():
    x = np.array([0.5, 1.0, 0.0], F32)
    late = observed(HistogramObserver(**SMALL), x, np.zeros(4, F32))
    early = observed(HistogramObserver(**SMALL), np.zeros(4, F32), x)
    assert same_bits(early.hist, late.hist) and same_bits(early.edges, late.edges)
    assert early.hist[0] == 5


def test_single_element_and_negative_zero():
    for obs in all_observers():
        amax = observed(obs, np.array([-2.5], F32)).amax()
        assert np.all(amax <= 2.5) and np.all(amax > 0)
    lo, hi = observed(MinMaxObserver(), np.array([-0.0], F32)).minmax()
    assert not np.signbit(lo) and not np.signbit(hi) and lo == hi == 0
    assert not np.signbit(observed(MaxObserver(), np.array([-0.0], F32)).amax())
    assert observed(MinMaxObserver(), np.array([3.0], F32)).minmax() == (3.0, 3.0)


def test_results_are_float64_holding_float32_values():
    x = np.array([0.1, -0.3], np.float64)      # converted to float32 first
    for obs in all_observers():
        amax = observed(obs, x).amax()
        assert np.asarray(amax).dtype == np.float64
        assert np.all(np.asarray(amax, F32).astype(np.float64) == amax)


# ---------------------------------------------------------------------------------------
# the factory and option checks
# ---------------------------------------------------------------------------------------
def test_make_observer_methods():
    kinds = {"max": MaxObserver, "ema": EmaMaxObserver, "minmax": MinMaxObserver,
             "moving_minmax": MovingAverageMinMaxObserver, "entropy": HistogramObserver,
             "percentile": HistogramObserver, "mse": HistogramObserver}
    assert set(kinds) == set(CALIBRATORS)
    for method, cls in kinds.items():
        assert type(make_observer(method, name="s")) is cls
    pct = make_observer("percentile")
    assert pct.options == {"percentile": 99.999} and pct.method == "percentile"
    assert type(make_observer("max", axis=0)) is PerChannelMaxObserver
    assert type(make_observer("minmax", axis=1)) is PerChannelMinMaxObserver
    x = np.random.default_rng(3).standard_normal(5000).astype(F32)
    for method, call in (("entropy", "amax_entropy"), ("mse", "amax_mse")):
        obs = observed(make_observer(method, num_bins=256, start_bin=32), x)
        assert obs.amax() == getattr(obs, call)(start_bin=32)
    obs = observed(make_observer("percentile", percentile=99.0), x)
    assert obs.amax() == obs.amax_percentile(99.0)
    assert observed(make_observer("ema", decay=0.5), [1.0], [3.0]).amax() == 2.0


@pytest.mark.parametrize("call", [
    lambda: make_observer("kl"),
    lambda: make_observer("max", decay=0.9),
    lambda: make_observer("percentile", percentile=0),
    lambda: make_observer("percentile", percentile=100.5),
    lambda: make_observer("entropy", num_bins=64),               # start_bin 128 > 64 bins
    lambda: make_observer("mse", num_bits=9),
    lambda: HistogramObserver(method="percentile"),
    lambda: HistogramObserver(num_bins=1),
    lambda: HistogramObserver(torch_threads=0),
    lambda: arange_float32(0.5, -1),
    lambda: arange_float32(0.5, 10, threads=0),
    lambda: make_observer("entropy", torch_threads=1.5),
    lambda: EmaMaxObserver(decay=1.5),
    lambda: MovingAverageMinMaxObserver(averaging_constant=-0.1),
    lambda: observed(HistogramObserver(), [1.0]).amax_percentile(0),
])
def test_bad_options_raise_config_error(call):
    with pytest.raises(rqe.ConfigError):
        call()


def test_histogram_without_method_reports_max_abs():
    obs = observed(HistogramObserver(**SMALL), np.array([1.5, -4.0], F32))
    assert obs.amax() == obs.max_abs() == 4.0
