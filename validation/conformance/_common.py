"""Shared machinery of the conformance scripts: bit-exact comparison, case counting,
mismatch reports, and the random inputs (ties, saturation, zeros, odd shapes).

A *check* is one library operation compared against refquant. A *case* is one call of that
operation (one input tensor with its parameters); a case is bit-exact when every compared
array is identical: float32 / float64 by their bytes (so -0.0 != +0.0 and NaN payloads count),
integers by value, and shapes equal.

Checks marked ``informational`` are printed in their own section and never fail a run; every
other check (including the non-finite ones compared against ``stack_artifacts=True``) fails
the run on any mismatch.

Skips: a script (or part of one) whose optional package is missing checks nothing, and that
must not read as a pass. ``Report.skip_missing`` records it; the script prints a SKIPPED line
and exits SKIP_EXIT (77), or 1 when the environment variable CI is set (``.ci/run``), where a
skipped check fails the run. run_all.py applies the same rule to the whole run.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

F32 = np.float32
FBGEMM_SCALE = F32(0.00214854861)   # pytorch/FBGEMM QuantUtils.h comment
FBGEMM_X = F32(0.273939937)         # x*(1/s) = 127.5 exactly, x/s = 127.49999
SEED = 20260822
SKIP_EXIT = 77   # "skipped", the automake test-harness convention: neither a pass nor a mismatch


def skips_fail() -> bool:
    """True when CI is set (CI=true, exported by .ci/run; not "", "0", "false", "no"): there a
    check that was skipped for a missing package fails the run instead of being reported."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skipped_exit_code() -> int:
    """The exit status of a run that passed what it checked but skipped something."""
    return 1 if skips_fail() else SKIP_EXIT


def missing_package(package: str, error: ImportError | None = None, install: str = "") -> str:
    """The one-line reason given for every skip caused by a missing optional package."""
    why = f" ({error})" if error is not None else ""
    how = f"; {install}" if install else ""
    return f"{package} is not installed{why}{how}"


def set_threads():
    """Keep BLAS / torch at 1-2 threads (the scripts must run on 2 cores)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


# ---------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------
def _bits(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.float32:
        return a.view(np.uint32)
    if a.dtype == np.float64:
        return a.view(np.uint64)
    if a.dtype == np.float16:
        return a.view(np.uint16)
    raise TypeError(a.dtype)


def fmt(v) -> str:
    """A scalar with its exact float32 value (repr + hex), or an int."""
    v = np.asarray(v)
    if v.dtype.kind == "f":
        f = v.astype(np.float64).item()
        return f"{v.item()!r} ({f.hex()}; bits 0x{int(_bits(np.asarray(v).reshape(1))[0]):08x})"
    if v.dtype.kind == "b":
        return repr(bool(v))
    return repr(int(v))


def _diff_mask(r: np.ndarray, l: np.ndarray):
    """Boolean mask of differing elements (flat arrays of equal size), and a note."""
    if r.dtype.kind == "f" and l.dtype.kind == "f":
        if r.dtype != l.dtype:
            return np.ones(r.shape, bool), f"float dtypes differ: refquant {r.dtype}, library {l.dtype}"
        return _bits(r) != _bits(l), ""
    if r.dtype.kind == "f" or l.dtype.kind == "f":   # integers vs integral floats: by value
        rf, lf = r.astype(np.float64), l.astype(np.float64)
        return ~((rf == lf) | (np.isnan(rf) & np.isnan(lf))), ""
    return r.astype(np.int64) != l.astype(np.int64), ""


def first_difference(ref, lib):
    """None if equal (bit-exact for floats), else (flat_index or None, note)."""
    ref = np.asarray(ref)
    lib = np.asarray(lib)
    if ref.shape != lib.shape:
        return (None, f"shape differs: refquant {ref.shape}, library {lib.shape}")
    mask, note = _diff_mask(ref.reshape(-1), lib.reshape(-1))
    bad = np.flatnonzero(mask)
    return None if bad.size == 0 else (int(bad[0]), note)


class Check:
    """One library operation vs refquant; counts cases and keeps the first mismatch."""

    def __init__(self, name: str, informational: bool = False, section: str = "main"):
        self.name = name
        self.informational = informational
        self.section = section
        self.cases = 0
        self.exact = 0
        self.elements = 0
        self.mismatch_report: str | None = None
        self.mismatch_cases = 0
        self.notes: list[str] = []

    def case(self, pairs, inputs: dict, spec=None, extra="") -> bool:
        """pairs: [(label, refquant_array, library_array, per_element_inputs_or_None)].

        per_element_inputs: dict name -> array of the same shape as the compared array (for
        printing the inputs at the mismatching index), e.g. {"x": x, "scale": scale_full}.
        inputs: the whole inputs of the case (printed in full when small).
        extra: a line for the report, or a function of the flat mismatching index returning one.
        """
        self.cases += 1
        for label, ref, lib, per_elem in pairs:
            ref = np.asarray(ref)
            self.elements += ref.size
            d = first_difference(ref, lib)
            if d is not None:
                self.mismatch_cases += 1
                if self.mismatch_report is None:
                    text = extra(d[0]) if callable(extra) else extra
                    self.mismatch_report = _describe(self.name, self.cases, label, ref, np.asarray(lib),
                                                     d, per_elem, inputs, spec, text)
                return False
        self.exact += 1
        return True

    def error_case(self, what: str, inputs: dict, spec=None):
        """A case where one side raised and the other did not."""
        self.cases += 1
        self.mismatch_cases += 1
        if self.mismatch_report is None:
            lines = [f"MISMATCH in '{self.name}', case #{self.cases}: {what}"]
            lines += _inputs_lines(inputs, spec)
            self.mismatch_report = "\n".join(lines)

    @property
    def ok(self) -> bool:
        return self.exact == self.cases

    def line(self) -> str:
        tag = "" if self.ok else "   <-- MISMATCH"
        return f"{self.name:<68s} {self.cases:5d} cases {self.exact:5d} bit-exact{tag}"


def _describe(name, case_no, label, ref, lib, d, per_elem, inputs, spec, extra):
    idx, note = d
    lines = [f"MISMATCH in '{name}', case #{case_no}, compared array '{label}'"
             + (f" ({note})" if note else "")]
    if idx is not None:
        shape = ref.shape
        nd_idx = tuple(int(i) for i in np.unravel_index(idx, shape)) if shape else ()
        lines.append(f"  first mismatching index {nd_idx} (flat {idx}) of shape {shape}")
        lines.append(f"    refquant: {fmt(ref.reshape(-1)[idx])}   dtype {ref.dtype}")
        lines.append(f"    library : {fmt(lib.reshape(-1)[idx])}   dtype {lib.dtype}")
        nbad = int(np.count_nonzero(_diff_mask(ref.reshape(-1), lib.reshape(-1))[0]))
        lines.append(f"    {nbad} of {ref.size} elements differ in this case")
        if per_elem:
            for k, v in per_elem.items():
                v = np.asarray(v)
                if v.size == ref.size:
                    lines.append(f"    input {k}[{nd_idx}] = {fmt(v.reshape(-1)[idx])}")
                elif v.size == 1:
                    lines.append(f"    input {k} = {fmt(v.reshape(-1)[0])}")
    else:
        lines.append(f"    refquant: shape {ref.shape} {ref.dtype}   library: shape {lib.shape} {lib.dtype}")
    if extra:
        lines.append("  " + extra)
    lines += _inputs_lines(inputs, spec)
    return "\n".join(lines)


def _inputs_lines(inputs, spec):
    lines = ["  inputs of the case:"]
    with np.printoptions(precision=9, threshold=48, edgeitems=6, linewidth=110):
        for k, v in inputs.items():
            if isinstance(v, np.ndarray):
                body = repr(v) if v.size <= 48 else f"shape {v.shape} {v.dtype}, first values {v.reshape(-1)[:12]!r}"
                lines.append(f"    {k} = {body}".replace("\n", "\n      "))
            else:
                lines.append(f"    {k} = {v!r}")
    if spec is not None:
        lines.append(f"    refquant spec = {spec.describe()}")
    return lines


class Report:
    """The checks of one script, printed as one block."""

    def __init__(self, stack: str):
        self.stack = stack
        self.checks: list[Check] = []
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        self.skipped: str | None = None      # why nothing at all was checked
        self.skipped_parts: list[str] = []   # "part: why" for each part left out

    def skip_missing(self, package: str, error: ImportError | None = None, install: str = "",
                     part: str | None = None):
        """Record a skip for a missing optional package: the whole report (part None; returns
        the finished report, for ``return rep.skip_missing(...)``) or one part of it."""
        reason = missing_package(package, error, install)
        if part is None:
            self.skipped = reason
            return self.finish()
        self.skipped_parts.append(f"{part}: {reason}")
        return self

    @property
    def any_skipped(self) -> bool:
        return bool(self.skipped or self.skipped_parts)

    def skip_lines(self) -> list:
        """One SKIPPED line per skip (none if nothing was skipped)."""
        if self.skipped:
            return [f"[{self.stack}] SKIPPED: {self.skipped}"]
        return [f"[{self.stack}] SKIPPED part {p}" for p in self.skipped_parts]

    def check(self, name, informational=False, section="main") -> Check:
        c = Check(name, informational, section)
        self.checks.append(c)
        return c

    def gating(self):
        return [c for c in self.checks if not c.informational]

    @property
    def passed(self) -> int:
        return sum(c.exact for c in self.gating())

    @property
    def failed(self) -> int:
        return sum(c.cases - c.exact for c in self.gating())

    def finish(self):
        self.seconds = time.perf_counter() - self.t0
        return self

    def print(self, final_line=True, file=sys.stdout):
        if self.skipped:
            print(self.skip_lines()[0], file=file)
            if final_line:
                print(f"conformance: 0 passed, 0 failed, SKIPPED: nothing was checked{ci_note()}", file=file)
            return
        sections = []
        for c in self.checks:
            if c.section not in sections:
                sections.append(c.section)
        for s in sections:
            if s != "main":
                print(f"-- {s}", file=file)
            for c in self.checks:
                if c.section == s:
                    info = "  [informational]" if c.informational else ""
                    print(c.line() + info, file=file)
                    for n in c.notes:
                        print(f"      note: {n}", file=file)
        bad = [c for c in self.checks if c.mismatch_report]
        for c in bad:
            print("", file=file)
            if c.informational:
                print("(informational, does not fail the run)", file=file)
            print(c.mismatch_report, file=file)
        n_bad_checks = sum(1 for c in self.gating() if not c.ok)
        print(f"[{self.stack}] {len(self.gating())} checks, {n_bad_checks} with mismatches; "
              f"{sum(c.elements for c in self.gating())} values compared; {self.seconds:.1f} s", file=file)
        for line in self.skip_lines():
            print(line, file=file)
        if final_line:
            skipped = (f", {len(self.skipped_parts)} part(s) SKIPPED{ci_note()}"
                       if self.skipped_parts else "")
            print(f"conformance: {self.passed} passed, {self.failed} failed{skipped}", file=file)

    def exit_code(self) -> int:
        """1 on any gating mismatch; else skipped_exit_code() if anything was skipped; else 0."""
        if self.failed:
            return 1
        return skipped_exit_code() if self.any_skipped else 0


def ci_note() -> str:
    """The words added to a skip's summary line under CI."""
    return " (CI is set: a skipped check fails the run)" if skips_fail() else ""


def script_main(run):
    """Entry point of a single script: run(), print, exit 1 on any gating mismatch, SKIP_EXIT
    (1 under CI) if something was skipped for a missing package (Report.exit_code)."""
    rep = run()
    rep.print()
    sys.exit(rep.exit_code())


# ---------------------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------------------
ODD_SHAPES = [(1,), (2,), (7,), (33,), (1, 1), (3, 5), (5, 3), (2, 9), (13, 17), (4, 1, 9),
              (2, 3, 5), (1, 6, 7), (3, 4, 1), (11, 2), (64,), (2, 2, 2, 3)]


def random_scale(rng) -> F32:
    """Power-of-two, non-power-of-two, the FBGEMM scale, all-ones mantissas, tiny, large."""
    r = rng.random()
    if r < 0.30:
        return F32(2.0 ** int(rng.integers(-14, 4)))
    if r < 0.40:
        return FBGEMM_SCALE
    if r < 0.50:   # all-ones mantissa: 1.99999988 * 2^e
        return F32(np.nextafter(F32(2.0), F32(0)) * F32(2.0 ** int(rng.integers(-12, 2))))
    if r < 0.60:   # 1/3, 1/255, 1/127.5 style
        return F32(1.0 / float(rng.choice([3, 7, 10, 127, 127.5, 255, 1000])))
    return F32(np.exp(rng.uniform(np.log(1e-5), np.log(20.0))))


def values_for(rng, scale_full: np.ndarray, zp_full: np.ndarray, qmin: int, qmax: int,
               mapping: str = "divide") -> np.ndarray:
    """float32 values on the grid given by (full-shape) scale and zero point: a mixture of
    exact ties (k + 0.5) * s, their float neighbours, ties of x * (1/s) (FBGEMM-style),
    grid points, random values in range, values just outside, far saturation, zeros, -0.0,
    tiny values, and for a few elements the FBGEMM example itself."""
    s = scale_full.astype(F32)
    zp = zp_full.astype(np.float64)
    n = s.size
    shape = s.shape
    s1 = s.reshape(-1)
    zp1 = zp.reshape(-1)
    kind = rng.integers(0, 11, n)
    lo = qmin - zp1 - 3
    hi = qmax - zp1 + 3
    k = np.floor(rng.uniform(lo, hi)).astype(np.float64)
    out = np.empty(n, F32)
    inv = (F32(1) / s1).astype(F32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        tie32 = ((k + 0.5).astype(F32) * s1).astype(F32)          # float32 product
        tie64 = ((k + 0.5) * s1.astype(np.float64)).astype(F32)    # exact product, rounded once
        tie_rec = ((k + 0.5) / inv.astype(np.float64)).astype(F32)  # x * (1/s) ~ k + 0.5
        grid = (k.astype(F32) * s1).astype(F32)
        inrange = (rng.uniform(lo, hi) * s1).astype(F32)
        far = (np.sign(rng.standard_normal(n)) * np.exp(rng.uniform(np.log(2), np.log(1e6), n))
               * (qmax - qmin + 1) * s1).astype(F32)
        tiny = (rng.standard_normal(n) * s1 * 1e-3).astype(F32)
    choices = [tie32, tie64, tie_rec, np.nextafter(tie32, F32(np.inf)), np.nextafter(tie32, F32(-np.inf)),
               grid, inrange, inrange, far, tiny, np.zeros(n, F32)]
    for j, arr in enumerate(choices):
        m = kind == j
        out[m] = arr[m]
    # zeros of both signs, and the FBGEMM example where its scale is used
    z = rng.random(n) < 0.04
    out[z] = F32(0.0)
    nz = rng.random(n) < 0.03
    out[nz] = F32(-0.0)
    fb = (s1 == FBGEMM_SCALE) & (rng.random(n) < 0.3)
    out[fb] = FBGEMM_X * np.where(rng.random(int(fb.sum())) < 0.5, 1, -1).astype(F32)
    out[~np.isfinite(out)] = F32(0)
    return out.reshape(shape)


class TieStats:
    """How hard the inputs pushed on the rounding rules: elements where x/s (or x*(1/s)) is
    exactly half-way, and where dividing and multiplying by the reciprocal round differently."""

    def __init__(self):
        self.elements = self.ties_div = self.ties_mul = self.div_ne_mul = 0

    def add(self, x, s_full):
        x = np.asarray(x, F32).reshape(-1)
        s = np.asarray(s_full, F32).reshape(-1)
        fin = np.isfinite(x)
        x, s = x[fin], s[fin]
        with np.errstate(all="ignore"):
            d = x / s
            m = x * (F32(1) / s)
        self.elements += x.size
        self.ties_div += int(np.count_nonzero(np.abs(d - np.trunc(d)) == F32(0.5)))
        self.ties_mul += int(np.count_nonzero(np.abs(m - np.trunc(m)) == F32(0.5)))
        self.div_ne_mul += int(np.count_nonzero(np.rint(d) != np.rint(m)))

    def note(self) -> str:
        return (f"{self.elements} values: {self.ties_div} exact ties of x/s, {self.ties_mul} exact "
                f"ties of x*(1/s), {self.div_ne_mul} where rint(x/s) != rint(x*(1/s))")


def data_for_qparams(rng, shape) -> np.ndarray:
    """float32 tensors to choose parameters from: normal / uniform at random magnitudes,
    one-signed, constant, all-zero, tiny, with outliers."""
    r = rng.random()
    mag = float(np.exp(rng.uniform(np.log(1e-4), np.log(1e3))))
    n = int(np.prod(shape))
    if r < 0.07:
        x = np.zeros(n)
    elif r < 0.12:
        x = np.full(n, rng.standard_normal() * mag)            # constant, nonzero
    elif r < 0.20:
        x = np.abs(rng.standard_normal(n)) * mag               # nonnegative
    elif r < 0.28:
        x = -np.abs(rng.standard_normal(n)) * mag              # nonpositive
    elif r < 0.33:
        x = rng.standard_normal(n) * 1e-9                      # tiny (below the eps floors)
    elif r < 0.38:   # quantize at a power-of-two grid: range 255 * 2^e, min a half-integer step
        e = 2.0 ** int(rng.integers(-10, 3))
        kk = int(rng.integers(1, 254))
        mn = -(kk + 0.5) * e
        x = rng.uniform(mn, mn + 255 * e, n)
        x[0], x[-1] = mn, mn + 255 * e
    elif r < 0.45:
        x = rng.standard_normal(n) * mag
        x[rng.integers(0, n)] = mag * 50                       # an outlier
    elif r < 0.60:
        x = rng.uniform(-1, 1, n) * mag + rng.uniform(-0.5, 0.5) * mag   # off-centre
    else:
        x = rng.standard_normal(n) * mag
    x = x.astype(F32).reshape(shape)
    # sprinkle zeros and exact copies of grid-like values
    if n > 3 and rng.random() < 0.3:
        x.reshape(-1)[rng.integers(0, n, max(1, n // 5))] = F32(0)
    return x


def splitting_rows(rng, rows: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """Fill each row of a 2-D float32 array with values whose [min, max] makes the two affine
    zero-point rules disagree: rint(clip(qmin - min/s)) != clip(qmin - rint(min/s)) with
    s = (max - min) / (qmax - qmin) in float32 (possible when qmin is odd, or when qmin - min/s
    loses the bits that kept min/s off a tie). Rows of length 1 are left alone."""
    rows = rows.copy()
    r, n = rows.shape
    if n < 2 or qmin == 0:   # qmin = 0: qmin - min/s is exact, the rules never disagree
        return rows
    d = F32(qmax - qmin)
    found = []
    for _ in range(64):
        if len(found) >= r:
            break
        m = 4096
        s0 = np.exp(rng.uniform(np.log(1e-4), np.log(10), m))
        k = rng.integers(0, qmax - qmin, m)
        eps = rng.choice([-1, 1], m) * 2.0 ** -rng.uniform(10, 24, m)
        mn = (-(k + 0.5 + eps) * s0).astype(F32)
        mx = (mn.astype(np.float64) + float(d) * s0).astype(F32)
        with np.errstate(all="ignore"):
            s = ((mx - mn).astype(F32) / d).astype(F32)
            q = (mn / s).astype(F32)
            a = np.rint(np.clip((F32(qmin) - q).astype(F32), qmin, qmax))
            b = np.clip(F32(qmin) - np.rint(q), qmin, qmax)
        sel = np.flatnonzero((a != b) & (mn < 0) & (mx > 0))
        found += [(mn[i], mx[i]) for i in sel[: r - len(found)]]
    for i, (mn, mx) in enumerate(found):
        v = rng.uniform(float(mn), float(mx), n).astype(F32)
        pos = rng.permutation(n)[:2]
        v[pos[0]], v[pos[1]] = mn, mx
        rows[i] = v
    return rows


def zero_slices(rng, x: np.ndarray, axis: int) -> np.ndarray:
    """Zero out a random subset of slices along ``axis`` (all-zero channels / groups)."""
    x = x.copy()
    if x.ndim and x.shape[axis] > 1 and rng.random() < 0.3:
        idx = rng.integers(0, x.shape[axis], max(1, x.shape[axis] // 3))
        sl = [slice(None)] * x.ndim
        sl[axis] = idx
        x[tuple(sl)] = 0
    return x
