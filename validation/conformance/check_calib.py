"""refquant.calib (observers and histogram calibration) vs the libraries it follows, run live.

Libraries:
- NVIDIA ModelOpt, modelopt/torch/quantization/calib: MaxCalibrator (per tensor, axis 0),
  HistogramCalibrator (torch_hist=True: collect + compute_amax), and the functions
  _compute_amax_entropy, _compute_amax_percentile, _compute_amax_mse;
- PyTorch torch.ao.quantization.observer: MinMaxObserver, MovingAverageMinMaxObserver,
  PerChannelMinMaxObserver; and the kernels the histogram rests on (torch.histc, torch.linspace);
- IntelLabs nlp-architect QuantizedLinear._update_ema (Q8BERT's EMA), when installed.

Data: normal, uniform, heavy-tailed (Student t with 2 and 3 degrees of freedom, Laplace,
log-normal), GELU-like activations with zeros, single outliers, values lying exactly on bin
edges, all-zero batches; fed whole and split into batches (equal, uneven, ascending max so that
the histogram grows at every batch, descending). amax values are compared bit for bit.

Multi-batch heavy tails (check_multibatch_heavy_tails): Student t batches (1.5 to 10 degrees
of freedom) of different sizes whose scale grows, shrinks or wanders from batch to batch, so
that later batches extend the histogram (torch.arange edges) or not; entropy, percentile and
mse end to end through HistogramCalibrator.compute_amax, each case bit for bit. Before the
edges followed torch's CPU arange, about one such case in six differed by 1 ulp.

MSE: ModelOpt's histogram-MSE path passes num_bits and unsigned positionally into
fake_tensor_quant's bias / num_bits slots (stacks.md section 3). refquant follows the intended
semantics; the gating MSE check runs ModelOpt's own _compute_amax_mse with that one call bound
by keyword, and an informational check shows what the shipped code returns.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from refquant import calib as rc  # noqa: E402
from refquant.errors import CalibrationError  # noqa: E402

F32 = np.float32


def _lib():
    warnings.simplefilter("ignore")
    C.set_threads()
    import torch
    from modelopt.torch.quantization.calib import histogram as mo_hist
    from modelopt.torch.quantization.calib.max import MaxCalibrator
    return torch, mo_hist, MaxCalibrator


# ---------------------------------------------------------------------------------------
# data and batch splits
# ---------------------------------------------------------------------------------------
KINDS = ("normal", "uniform", "student_t2", "student_t3", "laplace", "lognormal", "gelu",
         "outlier", "on_edges", "sparse")


def tensor(rng, kind: str, n: int) -> np.ndarray:
    scale = float(np.exp(rng.uniform(np.log(1e-3), np.log(1e3))))
    if kind == "on_edges":   # a power of two keeps the values on the edges
        scale = 2.0 ** int(rng.integers(-10, 10))
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, n)
    elif kind == "student_t2":
        x = rng.standard_t(2, n)
    elif kind == "student_t3":
        x = rng.standard_t(3, n)
    elif kind == "laplace":
        x = rng.laplace(size=n)
    elif kind == "lognormal":
        x = rng.lognormal(0, 1, n) * rng.choice([-1, 1], n)
    elif kind == "gelu":   # GELU(x) of normal pre-activations: many small negatives, zeros
        z = rng.standard_normal(n) * 2
        x = 0.5 * z * (1 + np.tanh(0.79788456 * (z + 0.044715 * z ** 3)))
        x[rng.random(n) < 0.1] = 0
    elif kind == "outlier":
        x = rng.standard_normal(n)
        x[rng.integers(0, n)] = 100 * rng.choice([-1, 1])
    elif kind == "on_edges":  # values k * max / 2048 exactly: every bin rule decision is a tie
        k = rng.integers(0, 2049, n)
        x = k / 2048.0 * rng.choice([-1, 1], n)
        x[0] = 1.0
    else:  # sparse: mostly zeros (and -0.0)
        x = rng.standard_normal(n) * (rng.random(n) < 0.05)
        x[rng.random(n) < 0.3] = -0.0
    return (x * scale).astype(F32)


def splits(rng, x: np.ndarray, how: str) -> list:
    """x cut into batches; the first batch always has a nonzero value (ModelOpt's histogram
    cannot grow from an all-zero first batch: OverflowError)."""
    batches = _cut(rng, x, how)
    first = next((k for k, b in enumerate(batches) if np.any(b)), 0)
    return batches[first:] + batches[:first]


def _cut(rng, x: np.ndarray, how: str) -> list:
    n = x.size
    if how == "whole" or n < 8:
        return [x]
    if how == "equal":
        return list(np.array_split(x, int(rng.integers(2, 6))))
    if how == "uneven":
        cuts = np.sort(rng.choice(np.arange(1, n), int(rng.integers(1, 6)), replace=False))
        return [b for b in np.split(x, cuts) if b.size]
    order = np.argsort(np.abs(x), kind="stable")   # ascending |x|: the histogram grows each batch
    if how == "descending":
        order = order[::-1]
    parts = np.array_split(x[order], int(rng.integers(2, 6)))
    return [rng.permutation(p) for p in parts]


SPLITS = ("whole", "equal", "uneven", "ascending", "descending")


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------
def check_torch_kernels(rep, torch, rng):
    """The three torch kernels the histogram is built from."""
    chk_h = rep.check("torch.histc(|x|, bins, min=0, max) bin counts vs histc_float32")
    chk_l = rep.check("torch.linspace(0, end, steps) float32 edges vs linspace_float32")
    chk_a = rep.check("torch.arange(0, end, step) edges vs arange_float32 (1-3 threads)")
    for i in range(300):
        kind = KINDS[i % len(KINDS)]
        a = np.abs(tensor(rng, kind, int(rng.integers(1, 4000))))
        bins = int(rng.choice([2048, 2047, 256, 100, 3000, 4097, 7]))
        hi = F32(a.max()) if rng.random() < 0.6 else F32(a.max() * F32(rng.uniform(1, 2)))
        if hi == 0:
            continue
        lib = torch.histc(torch.from_numpy(a), bins=bins, min=0, max=float(hi)).numpy()
        chk_h.case([("counts", rc.histc_float32(a, bins, hi).astype(F32), lib, None)],
                   {"x": a, "bins": bins, "max": hi})
        steps = bins + 1
        lib_e = torch.linspace(0, torch.tensor(hi), steps).numpy()
        chk_l.case([("edges", rc.linspace_float32(hi, steps), lib_e, None)], {"end": hi, "steps": steps})
    threads = torch.get_num_threads()
    twice = 0
    try:   # beyond 32768 elements torch's arange splits its range across threads
        for i in range(240):
            nthreads = 1 + i % 3
            torch.set_num_threads(nthreads)
            count = int(rng.integers(2, 5000)) if i % 4 else int(rng.integers(5000, 140000))
            step = F32(np.exp(rng.uniform(np.log(1e-6), np.log(1e3))))
            end = F32(F32(count - 1) * step * F32(rng.uniform(0.999, 1.0)))   # ModelOpt: x_max
            lib = torch.arange(0, torch.tensor(end) + torch.tensor(step), torch.tensor(step)).numpy()
            ref = rc.arange_float32(step, lib.size, threads=nthreads)
            twice += int(np.count_nonzero(ref != (np.arange(ref.size) * np.float64(step)).astype(F32)))
            chk_a.case([("edges", ref, lib, None)], {"step": step, "count": lib.size, "threads": nthreads})
    finally:
        torch.set_num_threads(threads)
    chk_a.notes.append(f"{twice} elements differ from float32(k * step) (torch's SIMD lanes, rounded twice)")


def check_max(rep, torch, MaxCalibrator, rng):
    chk = rep.check("modelopt MaxCalibrator per tensor vs MaxObserver (batch splits)")
    chk_c = rep.check("modelopt MaxCalibrator axis=0 vs PerChannelMaxObserver (batch splits)")
    for i in range(120):
        kind = KINDS[i % len(KINDS)]
        x = tensor(rng, kind, int(rng.integers(1, 3000)))
        how = SPLITS[i % len(SPLITS)]
        lib, obs = MaxCalibrator(), rc.MaxObserver(name="x")
        for b in splits(rng, x, how):
            lib.collect(torch.from_numpy(b.copy()))
            obs.update(b)
        chk.case([("amax", F32(obs.amax()), lib.compute_amax().numpy(), None)],
                 {"x": x, "split": how})
        # per channel: a [C, K] or [C, K, L] weight split along a non-channel axis
        c = int(rng.integers(1, 9))
        w = tensor(rng, kind, c * int(rng.integers(2, 200))).reshape(c, -1)
        if rng.random() < 0.3 and w.shape[1] % 2 == 0:
            w = w.reshape(c, 2, -1)
        lib, obs = MaxCalibrator(axis=0), rc.PerChannelMaxObserver(axis=0, name="w")
        parts = np.array_split(w, int(rng.integers(1, 4)), axis=1)
        for b in (p for p in parts if p.size):
            lib.collect(torch.from_numpy(np.ascontiguousarray(b)))
            obs.update(b)
        chk_c.case([("amax", obs.amax().astype(F32), lib.compute_amax().numpy().reshape(-1), None)],
                   {"w": w, "batches": len(parts)})


def _collect_both(torch, mo_hist, batches, num_bins):
    lib = mo_hist.HistogramCalibrator(num_bins=num_bins)
    obs = rc.HistogramObserver(num_bins=num_bins, name="x", torch_threads=torch.get_num_threads())
    for b in batches:
        lib.collect(torch.from_numpy(b.copy()))
        obs.update(b)
    return lib, obs


def _lib_index(value, edges) -> int:
    hit = np.flatnonzero(np.asarray(edges, F32) == F32(value))
    return int(hit[0]) if hit.size else -1


def _intended_fake_tensor_quant(mo_hist):
    """ModelOpt's fake_tensor_quant as _compute_amax_mse means to call it (bias=None,
    narrow_range=True, the default); the shipped call passes num_bits, unsigned positionally."""
    shipped = mo_hist.fake_tensor_quant

    def intended(inputs, amax, num_bits, unsigned):
        return shipped(inputs, amax, None, num_bits, unsigned)
    return intended


def heavy_tailed_batches(rng) -> tuple:
    """Student t batches of different sizes whose scale grows, shrinks or wanders from batch to
    batch (the first batch fixes the bin width; a later, wider one grows the histogram)."""
    dof = float(rng.choice([1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0]))
    trend = str(rng.choice(["grow", "shrink", "wander"]))
    scale = float(np.exp(rng.uniform(np.log(1e-3), np.log(1e3))))
    batches = []
    for _ in range(int(rng.integers(2, 7))):
        n = int(rng.choice([int(rng.integers(1, 64)), int(rng.integers(64, 6000))], p=[0.15, 0.85]))
        batches.append((rng.standard_t(dof, n) * scale).astype(F32))
        scale *= {"grow": rng.uniform(1.0, 1.8), "shrink": 1 / rng.uniform(1.0, 1.8),
                  "wander": np.exp(rng.uniform(-0.5, 0.5))}[trend]
    if not np.any(batches[0]):
        batches[0][0] = F32(scale)
    return batches, {"dof": dof, "trend": trend, "batch sizes": [b.size for b in batches]}


def check_multibatch_heavy_tails(rep, torch, mo_hist, rng, cases=300):
    """HistogramCalibrator.compute_amax end to end on multi-batch heavy-tailed data: entropy,
    percentile and mse, every case bit for bit (issue 14: 1 ulp in about one case in six while
    grown edges were k * w rounded once)."""
    chk_hist = rep.check("multi-batch heavy tails: collect counts and edges (bytes)", section="multi-batch")
    chk_ent = rep.check("multi-batch heavy tails: compute_amax('entropy')", section="multi-batch")
    chk_pct = rep.check("multi-batch heavy tails: compute_amax('percentile'), 6 percentiles",
                        section="multi-batch")
    chk_mse = rep.check("multi-batch heavy tails: compute_amax('mse'), intended fake quant",
                        section="multi-batch")
    mse_intended = _intended_fake_tensor_quant(mo_hist)
    grown = shrunk = on_twice_rounded = amaxes = split_arange = refused = 0
    max_bins_seen = 0
    searched = tries = 0
    default_threads = torch.get_num_threads()
    while searched < cases and tries < 4 * cases:
        tries += 1
        batches, inputs = heavy_tailed_batches(rng)
        num_bins = int(rng.choice([64, 128, 256]))
        if tries % 10 == 0:   # growth to 40000-120000 edges (past 32768; with 2 threads below)
            bins_wanted = rng.uniform(40000, 120000)
            widen = bins_wanted / num_bins * np.abs(batches[0]).max() / np.abs(batches[-1]).max()
            batches[-1] = (batches[-1] * widen).astype(F32)
            inputs["last batch widened"] = float(widen)
        threads = 2 if tries % 5 == 0 else default_threads   # arange splits by thread beyond 32768 edges
        torch.set_num_threads(threads)
        try:
            lib, obs = _collect_both(torch, mo_hist, batches, num_bins)
        except CalibrationError:   # growth past max_bins (2^22): refused, documented; ModelOpt allocates
            refused += 1
            continue
        finally:
            torch.set_num_threads(default_threads)
        inputs = dict(inputs, num_bins=num_bins, torch_threads=threads, x=np.concatenate(batches))
        lib_edges = lib._calib_bin_edges.numpy()
        chk_hist.case([("counts", obs.hist, lib._calib_hist.int().numpy(), None),
                       ("edges", obs.edges, lib_edges, None)], inputs)
        maxima = [float(np.abs(b).max()) for b in batches]
        grown += len(obs.edges) != num_bins + 1
        shrunk += any(later < maxima[0] for later in maxima[1:])
        max_bins_seen = max(max_bins_seen, len(obs.hist))
        split_arange += threads > 1 and len(obs.edges) > rc.histogram.ATEN_GRAIN_SIZE
        # edges torch rounds twice: the values k * w rounded once (the old rule) would miss
        once = (np.arange(len(obs.edges)) * np.float64(obs.edges[1])).astype(F32)
        twice = obs.edges != once
        start = min(128, num_bins // 2)
        results = [("percentile", dict(percentile=p), lambda p=p: obs.amax_percentile(p))
                   for p in (50.0, 99.0, 99.9, 99.99, 99.999, 100.0)]
        if len(obs.hist) <= 1024:   # ModelOpt's entropy loop is O(bins^2) in Python
            searched += 1
            results += [("entropy", dict(start_bin=start), lambda: obs.amax_entropy(start_bin=start)),
                        ("mse", dict(start_bin=start), lambda: obs.amax_mse(start_bin=start))]
        pct_pairs = []
        for method, kw, ref_fn in results:
            ref = F32(ref_fn())
            if method == "mse":
                with _patched(mo_hist, "fake_tensor_quant", mse_intended):
                    lib_a = lib.compute_amax(method, **kw).cpu().numpy()
                centre = np.flatnonzero(((obs.edges[1:] + obs.edges[:-1]) / F32(2)).astype(F32) == ref)
                on_twice = centre.size and (twice[centre[0]] or twice[centre[0] + 1])
            else:
                lib_a = lib.compute_amax(method, **kw).numpy()
                hit = np.flatnonzero(obs.edges == ref)
                on_twice = hit.size and twice[hit[0]]
            amaxes += 1
            on_twice_rounded += bool(on_twice)
            if method == "percentile":
                pct_pairs.append((f"percentile {kw['percentile']}", ref, lib_a, None))
            else:
                (chk_ent if method == "entropy" else chk_mse).case(
                    [("amax", ref, lib_a, None)], dict(inputs, start_bin=start))
        chk_pct.case(pct_pairs, inputs)
    chk_hist.notes.append(f"{chk_hist.cases} multi-batch cases: {grown} grew the histogram (up to "
                          f"{max_bins_seen} bins), {shrunk} had a later batch narrower than the first, "
                          f"{split_arange} grew past 32768 edges with 2 torch threads (arange split); {refused} draws "
                          "refused for growing past max_bins (not compared)")
    chk_ent.notes.append(f"entropy and mse on the {searched} cases of at most 1024 bins; of the {amaxes} "
                         f"amax values compared, {on_twice_rounded} sit on (or, mse, next to) an edge "
                         "torch's arange rounds twice, where k * w rounded once would be 1 ulp off")


def check_histogram(rep, torch, mo_hist, rng):
    chk_counts = rep.check("modelopt HistogramCalibrator.collect: counts (batch splits)")
    chk_edges = rep.check("modelopt HistogramCalibrator.collect: edges, no growth (torch.linspace)")
    chk_edges_grown = rep.check("modelopt HistogramCalibrator.collect: edges after growth (torch.arange)")
    chk_ent = rep.check("modelopt _compute_amax_entropy on the same histogram")
    chk_pct = rep.check("modelopt _compute_amax_percentile on the same histogram")
    chk_mse = rep.check("modelopt _compute_amax_mse (fake_tensor_quant bound by keyword: intended)")
    chk_mse_bug = rep.check("modelopt _compute_amax_mse as shipped (positional num_bits -> bias)",
                            informational=True)
    chk_e2e = rep.check("modelopt HistogramCalibrator.compute_amax end to end: amax bits")
    grown_cases = 0
    mse_intended = _intended_fake_tensor_quant(mo_hist)
    searched = 0
    for i in range(90):
        kind = KINDS[i % len(KINDS)]
        how = SPLITS[(i // len(KINDS)) % len(SPLITS)]
        num_bins = 2048 if i % 15 == 0 else int(rng.choice([256, 384, 512]))
        x = tensor(rng, kind, int(rng.integers(200, 20000)))
        batches = splits(rng, x, how)
        lib, obs = _collect_both(torch, mo_hist, batches, num_bins)
        inputs = {"x": x, "kind": kind, "split": how, "batches": len(batches), "num_bins": num_bins}
        lib_hist = lib._calib_hist.int().numpy()
        lib_edges = lib._calib_bin_edges.numpy()
        chk_counts.case([("counts", obs.hist, lib_hist, None)], inputs)
        grown = len(obs.edges) != num_bins + 1
        if grown:
            grown_cases += 1
            chk_edges_grown.case([("edges", obs.edges, lib_edges, None)], inputs)
        else:
            chk_edges.case([("edges", obs.edges, lib_edges, None)], inputs)

        # the searches on refquant's own histogram (int32 as compute_amax hands it over)
        h32, e32 = obs.hist.astype(np.int32), obs.edges
        bits, unsigned = (8, False) if i % 4 else (int(rng.choice([4, 6, 8])), bool(rng.integers(2)))
        start = min(128, len(h32) // 2)
        small = len(h32) <= 1600   # entropy and mse cost O(bins^2)
        if small:
            searched += 1
            ref = rc.compute_amax_entropy(h32, e32, bits, unsigned, 1, start)
            lib_a = mo_hist._compute_amax_entropy(h32.copy(), e32, bits, unsigned, 1, start).numpy()
            chk_ent.case([("amax", F32(ref), lib_a, None)], dict(inputs, num_bits=bits, unsigned=unsigned,
                                                                start_bin=start))
        for p in (50.0, 99.0, 99.9, 99.99, 99.999, 100.0):
            ref = rc.compute_amax_percentile(h32, e32, p)
            lib_a = mo_hist._compute_amax_percentile(h32.copy(), e32, p).numpy()
            chk_pct.case([("amax", F32(ref), lib_a, None)], dict(inputs, percentile=p))
        if small:
            ref = rc.compute_amax_mse(h32, e32, bits, unsigned, 1, start)
            with _patched(mo_hist, "fake_tensor_quant", mse_intended):
                lib_a = mo_hist._compute_amax_mse(h32.copy(), e32, bits, unsigned, 1, start).numpy()
            centres = (e32[1:] + e32[:-1]) / F32(2)
            chk_mse.case([("amax", F32(ref), lib_a, None)], dict(inputs, num_bits=bits, unsigned=unsigned,
                                                                 start_bin=start),
                         extra=f"refquant picks centre {_lib_index(ref, centres)}, ModelOpt "
                               f"{_lib_index(lib_a, centres)}")
            lib_a = mo_hist._compute_amax_mse(h32.copy(), e32, bits, unsigned, 1, start).numpy()
            chk_mse_bug.case([("amax", F32(ref), lib_a, None)], dict(inputs, num_bits=bits, unsigned=unsigned))

        # end to end through HistogramCalibrator.compute_amax (its own histogram and edges)
        methods = [("percentile", dict(percentile=99.99)), ("percentile", dict(percentile=99.9))]
        if small and (num_bins < 2048 or i % 30 == 0):
            methods.append(("entropy", {}))
        for method, kw in methods:
            lib_a = lib.compute_amax(method, start_bin=start, **kw).numpy()
            ref = (obs.amax_entropy(start_bin=start) if method == "entropy"
                   else obs.amax_percentile(kw["percentile"]))
            chk_e2e.case([("amax", F32(ref), lib_a, None)], dict(inputs, method=method, **kw),
                         extra=f"refquant picks edge {_lib_index(ref, obs.edges)}, ModelOpt edge "
                               f"{_lib_index(lib_a, lib_edges)}")
    chk_edges_grown.notes.append(f"{grown_cases} cases grew the histogram")
    chk_mse_bug.notes.append("ModelOpt as shipped quantizes every centre to amax + 8 (bias = num_bits, "
                             "num_bits = unsigned = 0); refquant does not reproduce that")
    chk_ent.notes.append(f"entropy and mse on the {searched} histograms of at most 1600 bins (ModelOpt's "
                         "entropy loop is O(bins^2) in Python: about 5 s at 2048 bins)")


def check_histogram_edges_cases(rep, torch, mo_hist, rng):
    """Single elements, all-equal values, zeros after data, -0.0: the corner cases."""
    chk = rep.check("modelopt HistogramCalibrator corner cases (single value, zeros, -0.0, ties)")
    cases = [
        [np.array([3.0], F32)],
        [np.array([-0.0, 0.0, 2.5], F32)],
        [np.full(17, 0.75, F32)],
        [np.array([1.0, 2.0], F32), np.zeros(5, F32), np.array([-4.0], F32)],
        [np.array([5.0], F32), np.array([5.0], F32), np.array([0.5], F32)],
        [np.array([1e-30, 2e-30], F32)],
        [np.array([1.0], F32), np.array([1.0000001], F32)],
    ]
    for batches in cases:
        lib, obs = _collect_both(torch, mo_hist, batches, 2048)
        inputs = {"batches": [b.tolist() for b in batches]}
        pairs = [("counts", obs.hist, lib._calib_hist.int().numpy(), None),
                 ("edges", obs.edges, lib._calib_bin_edges.numpy(), None)]
        for p in (99.99, 100.0):
            pairs.append((f"percentile {p}", F32(obs.amax_percentile(p)),
                          lib.compute_amax("percentile", percentile=p).numpy(), None))
        chk.case(pairs, inputs)
    chk.notes.append("ModelOpt raises OverflowError (int(inf)) for an all-zero first batch followed by "
                     "data; refquant counts such zeros once the edges exist (not compared)")


def check_single_entropy_2048(rep, torch, mo_hist, rng):
    """A few full-size (2048-bin) end-to-end entropy runs, including a single value (NaN
    divergences: ModelOpt's np.argmin picks the NaN candidate, so does refquant)."""
    chk = rep.check("modelopt HistogramCalibrator entropy, 2048 bins, one batch")
    data = [np.array([3.0], F32), tensor(rng, "student_t2", 50000), tensor(rng, "gelu", 30000),
            tensor(rng, "uniform", 20000)]
    for x in data:
        lib, obs = _collect_both(torch, mo_hist, [x], 2048)
        chk.case([("amax", F32(obs.amax_entropy()), lib.compute_amax("entropy").numpy(), None)],
                 {"x": x})


def check_torch_observers(rep, torch, rng):
    from torch.ao.quantization.observer import (MinMaxObserver, MovingAverageMinMaxObserver,
                                                PerChannelMinMaxObserver)
    chk_mm = rep.check("torch MinMaxObserver min_val/max_val vs MinMaxObserver (batch splits)")
    chk_ma = rep.check("torch MovingAverageMinMaxObserver vs MovingAverageMinMaxObserver")
    chk_pc = rep.check("torch PerChannelMinMaxObserver (ch_axis 0/1) vs PerChannelMinMaxObserver")
    zero_sign = 0

    def canon(t):   # +0.0 for -0.0: torch's sign of a zero extremum follows its reduction order
        nonlocal zero_sign
        a = t.detach().numpy().astype(F32)
        zero_sign += int(np.count_nonzero((a == 0) & np.signbit(a)))
        return a + F32(0)

    for i in range(150):
        kind = KINDS[i % len(KINDS)]
        how = SPLITS[i % len(SPLITS)]
        x = tensor(rng, kind, int(rng.integers(1, 3000)))
        batches = splits(rng, x, how)
        lib, obs = MinMaxObserver(), rc.MinMaxObserver()
        for b in batches:
            lib(torch.from_numpy(b.copy()))
            obs.update(b)
        mn, mx = obs.minmax()
        chk_mm.case([("min", F32(mn), canon(lib.min_val), None), ("max", F32(mx), canon(lib.max_val), None)],
                    {"x": x, "split": how})
        c = 0.01 if i % 2 else float(rng.choice([0.1, 0.5, 1.0, 1e-4, 0.3333]))
        lib, obs = MovingAverageMinMaxObserver(averaging_constant=c), rc.MovingAverageMinMaxObserver(c)
        for b in batches:
            lib(torch.from_numpy(b.copy()))
            obs.update(b)
        mn, mx = obs.minmax()
        chk_ma.case([("min", F32(mn), canon(lib.min_val), None), ("max", F32(mx), canon(lib.max_val), None)],
                    {"x": x, "split": how, "averaging_constant": c})
        ch = int(rng.integers(1, 7))
        axis = int(rng.integers(0, 2))
        w = tensor(rng, kind, ch * int(rng.integers(1, 100))).reshape(ch, -1)
        if axis == 1:
            w = np.ascontiguousarray(w.T)
        lib = PerChannelMinMaxObserver(ch_axis=axis)
        obs = rc.PerChannelMinMaxObserver(axis=axis)
        for b in np.array_split(w, int(rng.integers(1, 4)), axis=1 - axis):
            if b.size:
                lib(torch.from_numpy(np.ascontiguousarray(b)))
                obs.update(b)
        mn, mx = obs.minmax()
        chk_pc.case([("min", mn.astype(F32), canon(lib.min_val), None),
                     ("max", mx.astype(F32), canon(lib.max_val), None)], {"w": w, "ch_axis": axis})
    chk_mm.notes.append(f"{zero_sign} zero extrema came back as -0.0 from torch (over the three checks); "
                        "compared as +0.0, refquant's convention")


def check_q8bert_ema(rep, torch, rng):
    try:
        from nlp_architect.nn.torch.quantization import QuantizedLinear
    except ImportError as e:
        rep.skip_missing("nlp-architect", e, "pip install --no-deps nlp-architect", part="Q8BERT EMA")
        return
    chk = rep.check("nlp-architect QuantizedLinear._update_ema (Q8BERT) vs EmaMaxObserver")
    for i in range(120):
        decay = 0.9999 if i % 2 else float(rng.choice([0.9, 0.99, 0.5, 0.999999, 0.0, 1.0]))
        layer = QuantizedLinear(4, 4, mode="ema", ema_decay=decay)
        obs = rc.EmaMaxObserver(decay=decay)
        kind = KINDS[i % len(KINDS)]
        steps = int(rng.integers(1, 40))
        for s in range(steps):
            b = tensor(rng, kind, int(rng.integers(1, 500)))
            layer._step.fill_(s)   # _update_ema fills at _step == start_step (0), then decays
            layer._update_ema(layer.input_thresh, torch.from_numpy(b))
            obs.update(b)
        chk.case([("ema", np.array([obs.amax()], F32), layer.input_thresh.numpy(), None)],
                 {"decay": decay, "steps": steps, "kind": kind})


def run() -> C.Report:
    rep = C.Report("calib")
    try:
        torch, mo_hist, MaxCalibrator = _lib()
    except ImportError as e:
        return rep.skip_missing("torch or nvidia-modelopt", e, "pip install --no-deps nvidia-modelopt "
                                "requests urllib3 certifi omegaconf pulp")
    rng = np.random.default_rng(C.SEED + 7)
    check_torch_kernels(rep, torch, rng)
    import modelopt
    rep.checks[0].notes.append(f"torch {torch.__version__} (CPU capability "
                               f"{torch.backends.cpu.get_cpu_capability()}), nvidia-modelopt "
                               f"{modelopt.__version__}")
    check_max(rep, torch, MaxCalibrator, rng)
    check_histogram(rep, torch, mo_hist, rng)
    check_multibatch_heavy_tails(rep, torch, mo_hist, rng)
    check_histogram_edges_cases(rep, torch, mo_hist, rng)
    check_single_entropy_2048(rep, torch, mo_hist, rng)
    check_torch_observers(rep, torch, rng)
    check_q8bert_ema(rep, torch, rng)
    return rep.finish()


if __name__ == "__main__":
    C.script_main(run)
