"""Run every conformance script (ONNX reference, PyTorch, compressed-tensors), print each
script's checks, a summary table and one final line ``conformance: N passed, M failed``
(N, M: cases of the gating checks, over all stacks). Exit 1 on any failure.

A stack whose library is not installed, or a part of one, is SKIPPED with a one-line reason
(its cases count as 0) and listed as skipped in the summary, never as passed. Exit status: 1 on
any failure; else, if anything was skipped, 77 (_common.SKIP_EXIT), or 1 when the environment
variable CI is set (.ci/run exports CI=true): in CI a check that ran nothing fails the run; else 0.

Run: /work/venv/bin/python validation/conformance/run_all.py [onnx|torch|compressed_tensors ...]
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402

C.set_threads()

# stack -> (module, libraries it needs)
STACKS = {
    "onnx": ("check_onnx", ("onnx",)),
    "torch": ("check_torch", ("torch",)),
    "compressed_tensors": ("check_compressed_tensors", ("compressed_tensors", "torch")),
    "modelopt": ("check_modelopt", ("modelopt", "torch")),
    "papers": ("check_papers", ("torch",)),   # nlp-architect (Q8BERT) and deepspeed (ZeroQuant)
    "calib": ("check_calib", ("modelopt", "torch")),   # refquant.calib vs ModelOpt / torch observers / Q8BERT EMA
    # refquant's quantized checkpoints read by compressed-tensors' own decompressors and by transformers
    "quantized_checkpoint": ("check_quantized_checkpoint", ("compressed_tensors", "transformers", "torch")),
}


def _refquant_state() -> str:
    """Which refquant was tested: its path, a digest of its sources, and whether the checkout has
    uncommitted changes there (results can move while the numeric core is being edited)."""
    import refquant
    pkg = os.path.dirname(refquant.__file__)
    h = hashlib.sha256()
    for path in sorted(Path(pkg).rglob("*.py")):  # subpackages (nn, models, calib) included
        name = path.relative_to(pkg).as_posix()
        h.update(name.encode() + b"\0" + path.read_bytes())
    state = f"refquant {refquant.__version__} at {pkg}, sources sha256 {h.hexdigest()[:12]}"
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", pkg], cwd=pkg, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            dirty = [ln[3:] for ln in out.stdout.splitlines() if ln.strip()]
            state += "; uncommitted changes: " + (", ".join(dirty) if dirty else "none")
    except (OSError, subprocess.SubprocessError):
        pass
    return state


def run_stack(stack: str) -> C.Report:
    module, libs = STACKS[stack]
    missing = [lib for lib in libs if importlib.util.find_spec(lib) is None]
    if missing:
        return C.Report(stack).skip_missing(", ".join(missing))
    mod = importlib.import_module(module)
    return mod.run()


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(STACKS)
    unknown = [n for n in names if n not in STACKS]
    if unknown:
        print(f"unknown stack(s) {unknown}; known: {', '.join(STACKS)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(_refquant_state())
    reports = []
    for name in names:
        print(f"\n==================== {name} ====================")
        rep = run_stack(name)
        rep.print(final_line=False)
        reports.append(rep)
    total = time.perf_counter() - t0

    print("\n==================== summary ====================")
    hdr = f"{'stack':<20s} {'checks':>6s} {'failing':>7s} {'cases':>7s} {'bit-exact':>9s} {'failed':>7s} {'info.mismatch':>13s} {'seconds':>8s}"
    print(hdr)
    print("-" * len(hdr))
    passed = failed = 0
    for rep in reports:
        if rep.skipped:
            print(f"{rep.stack:<20s} SKIPPED: {rep.skipped}")
            continue
        gating = rep.gating()
        info_bad = sum(c.cases - c.exact for c in rep.checks if c.informational)
        print(f"{rep.stack:<20s} {len(gating):6d} {sum(1 for c in gating if not c.ok):7d} "
              f"{sum(c.cases for c in gating):7d} {rep.passed:9d} {rep.failed:7d} {info_bad:13d} {rep.seconds:8.1f}")
        for part in rep.skipped_parts:
            print(f"{'':<20s} SKIPPED part {part}")
        passed += rep.passed
        failed += rep.failed
    failing = [f"{rep.stack}: {c.name}" for rep in reports for c in rep.gating() if not c.ok]
    if failing:
        print("\nfailing checks:")
        for f in failing:
            print(f"  {f}")
    skipped = [rep.stack for rep in reports if rep.any_skipped]
    print(f"\ntotal {total:.1f} s")
    note = ""
    if skipped:
        note = (f", SKIPPED (in whole or part): {', '.join(skipped)}"
                + C.ci_note())
    print(f"conformance: {passed} passed, {failed} failed{note}")
    if failed:
        return 1
    return C.skipped_exit_code() if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
