"""Every float32 z in [-4, 4] (2.2 billion values): refquant.nn.fast_erf.erf_float32(z) has
the bits of scipy.special.erf(z), and so does GELU's erf argument path. |z| >= 4 is +-1 in
both (checked at the ends). Takes a few minutes on 2 cores; prints the count of mismatches
(expected 0) and how many elements the kernel handed to scipy.
Run: python validation/check_erf_exhaustive.py
"""
from __future__ import annotations

import sys
import time

import numpy as np
from scipy.special import erf

from refquant.nn import fast_erf

CHUNK = 1 << 24


def main() -> int:
    top = np.float32(4.0).view(np.uint32)  # positive float32 bit patterns 0 .. 4.0 inclusive
    mismatches = handed = checked = 0
    start = time.time()
    for lo in range(0, int(top) + 1, CHUNK):
        bits = np.arange(lo, min(lo + CHUNK, int(top) + 1), dtype=np.uint32)
        for sign in (0, 0x80000000):
            z = (bits | np.uint32(sign)).view(np.float32)
            got = fast_erf.erf_float32(z)
            want = erf(z)
            bad = got.view(np.uint32) != want.view(np.uint32)
            mismatches += int(bad.sum())
            if bad.any():
                i = np.flatnonzero(bad)[0]
                print(f"mismatch at z={z[i]!r}: {got[i]!r} vs scipy {want[i]!r}")
            out, unsure = np.empty_like(z), np.empty(z.size, np.uint8)
            fast_erf._erf_kernel(z, out, unsure, fast_erf.COEFFS)
            handed += int(unsure.sum())
            checked += z.size
        print(f"\r{checked / 2.0 / (int(top) + 1):6.1%}  {time.time() - start:5.0f} s", end="", flush=True)
    print(f"\n{checked} float32 values in [-4, 4]: {mismatches} differ from scipy.special.erf; "
          f"{handed} ({handed / checked:.1e}) were near a rounding boundary and handed to scipy")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
