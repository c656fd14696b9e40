"""float32 bit-level facts every backend shares: the one NaN (numeric contract rule 12), and
reinterpreting int32 bits as float32 inside Numba kernels.

Hardware does not agree on the NaN an invalid operation (``0 * inf``, ``inf - inf``) makes:
x86 SSE / AVX writes ``0xFFC00000``, NVIDIA GPUs ``0x7FFFFFFF``, ARM ``0x7FC00000``; nor on
whether an input NaN's sign and payload survive an operation. refquant therefore replaces every
NaN in a float32 output by ``CANONICAL_NAN`` (bits ``0x7FC00000``: positive, quiet, zero
payload, what ``np.float32("nan")`` is), at the end of each kernel and op:

- ``canonical_nan(x)``: the NumPy form, for arrays (the reference kernels, the fake-quant path,
  the model outputs, the golden dump);
- ``canonical_nan_value(y)``: the scalar form, called at the store inside Numba CPU kernels
  (``refquant.kernels.cuda`` compiles the same function for the GPU, with
  ``float32_from_bits`` bound to libdevice's ``int_as_float``, so that the constant is built
  from its bits and cannot become another NaN on the way to PTX).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._numba import numba

CANONICAL_NAN_BITS = 0x7FC00000
CANONICAL_NAN = np.array(CANONICAL_NAN_BITS, np.uint32).view(np.float32)[()]


def canonical_nan(x: np.ndarray) -> np.ndarray:
    """``x`` with every NaN replaced by the canonical NaN of its dtype (float32: bits
    0x7FC00000; float64: 0x7FF8000000000000), IN PLACE, and returned. For arrays the caller has
    just computed (an op's output); non-float arrays are returned untouched.

    Outputs almost never hold a NaN, so the common case is one read pass (a max reduction,
    which propagates NaN) and no allocation; only then are the NaNs located and replaced."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.size == 0:
        return x
    if np.isnan(x.max()):
        x[np.isnan(x)] = CANONICAL_NAN if x.dtype == np.float32 else x.dtype.type(np.nan)
    return x


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (a bitcast: no conversion that could
    touch a NaN's payload)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@numba.njit(cache=True, inline="always")
def canonical_nan_value(y):
    """``y``, or the canonical NaN (bits 0x7FC00000) when ``y`` is a NaN: the scalar form of
    ``canonical_nan``, for the store of a kernel's float32 output."""
    if y != y:
        return float32_from_bits(np.int32(CANONICAL_NAN_BITS))
    return y


@numba.njit(cache=True)
def _row_sums_in_order(x, start, out):
    for r in range(x.shape[0]):
        s = start[r]
        for j in range(x.shape[1]):
            s += x[r, j]
        out[r] = s


def sums_in_order(x, axis=-1, start=None) -> np.ndarray:
    """float64 sums along ``axis``, each added left to right (contract rule 14), optionally
    continuing from ``start`` (a running total carried over batches gives the same bits however
    the rows were batched). NumPy's own ``sum`` is pairwise, with blocks that depend on its
    build and on the array's layout."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    rows = np.ascontiguousarray(x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]))
    first = np.zeros(rows.shape[0]) if start is None else np.broadcast_to(np.asarray(start, np.float64).reshape(-1), (rows.shape[0],)).copy()
    out = np.empty(rows.shape[0])
    _row_sums_in_order(rows, first, out)
    return out.reshape(x.shape[:-1])


def sum_in_order(x, start: float = 0.0) -> float:
    """The float64 sum of every element of ``x`` in C order, left to right, from ``start``."""
    return float(sums_in_order(np.ravel(np.asarray(x, np.float64))[None], start=start)[0])


__all__ = ["CANONICAL_NAN", "CANONICAL_NAN_BITS", "canonical_nan", "canonical_nan_value",
           "float32_from_bits", "sums_in_order", "sum_in_order"]
