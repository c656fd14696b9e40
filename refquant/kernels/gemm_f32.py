"""The float32 GEMM of contract rule 13, fast: every output element is the sequential fma chain
over k (``c = +0; c = fma(x[m, k], w[n, k], c)``, then ``+ bias[n]``), byte for byte the
NumPy definition ``refquant.nn.dot.dot_chain`` / ``linear_chain``, on every path, for every
shape, thread count and blocking.

Why the order cannot move: a register-blocked micro-kernel vectorizes across OUTPUT columns
(one lane per column n) and broadcasts x[m, k]; each lane then runs exactly the chain above,
one ``fma`` per k. Cutting K into blocks stores the float32 partial and continues the chain
from it (exact); threads and tiles only decide WHICH outputs a piece of code computes, never
how one output is summed.

Paths (``path=``; default chosen at import from the CPU features Numba compiles for):

``"avx512"``    8 x 48 tiles: 24 ``<16 x float>`` accumulators in zmm registers carried over K
                (``llvm.fma.v16f32``), masked loads / stores at the edges.
``"avx2"``      6 x 16 tiles: 12 ``<8 x float>`` accumulators in ymm registers
                (``llvm.fma.v8f32``; AVX2 + FMA).
``"portable"``  plain Numba loops calling the scalar ``llvm.fma.f32``, which is exact on every
                target (without an FMA unit LLVM calls libm's fmaf).

Weights are PREPACKED once (``prepack_f32(w)`` -> ``PackedF32``): blocks of 16 output columns,
K contiguous per block (16 floats per k), 64-byte aligned. Every path reads the same layout.

The micro-kernels are LLVM IR through Numba intrinsics (as refquant.kernels._vnni): one
``@intrinsic`` per tile shape emits the K loop with its accumulators as phi nodes, then the
epilogue from the registers: ``+ bias`` (only when there is one: adding +0.0 would turn a -0
into +0), the canonical NaN (rule 12), a masked store. The output of a tile goes through row and
block offset tables (``roff[m] + coff[n // 16] + n % 16``), so the same kernel writes a plain
[M, N] matrix, BERT's head-split [B, H, T, D] layout, or attention's [B, T, H, D] context.

Threads: refquant.kernels._pool, ``numba.get_num_threads()`` parts; enough rows: each part
takes its own rows; few rows (decode): parts split the columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from weights_io.errors import ConfigError, DTypeError, ShapeError
from .._numba import numba
from ..floats import CANONICAL_NAN_BITS, canonical_nan_value
from . import _pool
from ._vnni import _Arr, _const, _wide_vectors, target_features

F32 = np.float32
BLOCK = 16                      # output columns per packed block

_F32 = ir.FloatType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)

_FEATURES = target_features()
HAVE_AVX512 = {"avx512f"} <= _FEATURES
HAVE_AVX2 = {"avx2", "fma"} <= _FEATURES
PATHS = ("avx512", "avx2", "portable")
DEFAULT_PATH = "avx512" if HAVE_AVX512 else "avx2" if HAVE_AVX2 else "portable"
_PATH_ID = {"avx512": 0, "avx2": 1, "portable": 2}
# (rows, 16-column blocks) of the largest tile per path
TILE = {"avx512": (8, 3), "avx2": (6, 1), "portable": (4, 1)}


def _path(path) -> str:
    path = DEFAULT_PATH if path is None else path
    if path not in PATHS:
        raise ConfigError(f"gemm_f32: path must be one of {PATHS} or None, got {path!r}")
    if path == "avx512" and not HAVE_AVX512:
        raise ConfigError("gemm_f32: path 'avx512' needs a CPU with AVX-512F; this one has none "
                          "(use path='avx2', 'portable' or None)")
    if path == "avx2" and not HAVE_AVX2:
        raise ConfigError("gemm_f32: path 'avx2' needs a CPU with AVX2 and FMA; this one lacks them "
                          "(use path='portable' or None)")
    return path


# ---------------------------------------------------------------------------------------------
# the micro-kernels (LLVM IR)
# ---------------------------------------------------------------------------------------------
_KERNEL_ARGS = ("A", "a_off", "lda", "B", "b_off", "b_stride", "k0", "k1", "out", "roff", "r0",
                "coff", "c0", "rows", "cols", "first", "last", "bias", "n0", "has_bias")


def _canonical_nan_vec(builder, y):
    """refquant.floats.canonical_nan_value on a float vector of any width (rule 12): NaN lanes
    replaced by the canonical NaN, built from its bits."""
    n = y.type.count
    nan = builder.bitcast(ir.Constant(ir.VectorType(_I32, n), [CANONICAL_NAN_BITS] * n), y.type)
    return builder.select(builder.fcmp_unordered("uno", y, y), nan, y)


def make_f32_kernel(MR: int, NR: int, VW: int):
    """The micro-kernel of an MR x (16 * NR) output tile with <VW x float> vectors (VW 16 or 8).

    Arguments (offsets in elements): ``A`` float32 1-D, row r of the tile at
    ``a_off + r * lda`` (K contiguous); ``B`` the packed weights, block c of the tile at
    ``b_off + c * b_stride``, 16 floats per k; the chain runs over k in [k0, k1). ``out`` float32
    1-D: element (r, 16c + j) at ``roff[r0 + r] + coff[c0 + c] + j``; only r < rows and
    16c + j < cols are read or written. ``first``: the chain starts at +0.0 (else at the stored
    partial); ``last``: the bias (``bias[n0 + 16c + j]`` if has_bias) is added and NaN made
    canonical (else the partial is stored as it is)."""
    if VW not in (8, 16) or MR < 1 or NR < 1:
        raise ValueError((MR, NR, VW))
    VPB = BLOCK // VW                         # vectors per 16-column block
    vty = ir.VectorType(_F32, VW)
    mty = ir.VectorType(_I1, VW)
    ity = ir.VectorType(_I32, VW)

    @intrinsic
    def kernel(typingctx, A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows,
               cols, first, last, bias, n0, has_bias):
        sig = types.void(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows,
                         cols, first, last, bias, n0, has_bias)

        def codegen(context, builder, signature, args):
            b = builder
            arg = dict(zip(_KERNEL_ARGS, zip(args, signature.args)))

            def i64(name):
                v, t = arg[name]
                return context.cast(b, v, t, types.int64)

            def ptr(name, elt, itemsize):
                v, t = arg[name]
                return _Arr(context, b, t, v, elt, itemsize).ptr

            if VW == 16:
                _wide_vectors(b.function)
            mod = b.module
            fma = cgutils.get_or_insert_function(mod, ir.FunctionType(vty, [vty, vty, vty]),
                                                 f"llvm.fma.v{VW}f32")
            mload = cgutils.get_or_insert_function(
                mod, ir.FunctionType(vty, [vty.as_pointer(), _I32, mty, vty]),
                f"llvm.masked.load.v{VW}f32.p0")
            mstore = cgutils.get_or_insert_function(
                mod, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, mty]),
                f"llvm.masked.store.v{VW}f32.p0")
            zero = ir.Constant(vty, [0.0] * VW)
            nomask = ir.Constant(mty, [0] * VW)

            def splat(x):
                v = b.insert_element(ir.Constant(vty, None), x, ir.Constant(_I32, 0))
                return b.shuffle_vector(v, ir.Constant(vty, None), ir.Constant(ity, [0] * VW))

            def vptr(p, off):
                return b.bitcast(b.gep(p, [off]), vty.as_pointer())

            rows_, cols_ = i64("rows"), i64("cols")
            first_ = b.icmp_signed("!=", i64("first"), _const(0))
            last_ = b.icmp_signed("!=", i64("last"), _const(0))
            has_bias_ = b.icmp_signed("!=", i64("has_bias"), _const(0))
            pa = b.gep(ptr("A", _F32, 4), [i64("a_off")])
            pb = b.gep(ptr("B", _F32, 4), [i64("b_off")])
            po = ptr("out", _F32, 4)
            proff = b.gep(ptr("roff", _I64, 8), [i64("r0")])
            pcoff = b.gep(ptr("coff", _I64, 8), [i64("c0")])
            pbias = b.gep(ptr("bias", _F32, 4), [i64("n0")])
            lda_, bstride = i64("lda"), i64("b_stride")

            # rows past ``rows`` compute on row 0 (in bounds) and store nothing
            valid = [b.icmp_signed("<", _const(r), rows_) for r in range(MR)]
            rsafe = [b.select(valid[r], _const(r), _const(0)) for r in range(MR)]
            arow = [b.mul(rsafe[r], lda_) for r in range(MR)]
            orow = [b.load(b.gep(proff, [rsafe[r]]), align=8) for r in range(MR)]
            cols32 = b.trunc(cols_, _I32)
            iota = ir.Constant(ity, list(range(VW)))
            colmask, ocol = [], []
            for v in range(NR * VPB):
                c, j = divmod(v, VPB)
                start = c * BLOCK + j * VW
                colmask.append(b.icmp_signed("<", b.add(iota, ir.Constant(ity, [start] * VW)),
                                             _splat_i32(b, cols32, ity)))
                cvalid = b.icmp_signed("<", _const(c * BLOCK), cols_)
                cidx = b.select(cvalid, _const(c), _const(0))
                ocol.append(b.add(b.load(b.gep(pcoff, [cidx]), align=8), _const(j * VW)))
            masks = [[b.select(valid[r], colmask[v], nomask) for v in range(NR * VPB)]
                     for r in range(MR)]
            optr = [[vptr(po, b.add(orow[r], ocol[v])) for v in range(NR * VPB)] for r in range(MR)]

            # accumulators: +0.0, or the stored partial (masked lanes read as +0.0: never stored)
            init = [[b.call(mload, [optr[r][v], ir.Constant(_I32, 4),
                                    b.select(first_, nomask, masks[r][v]), zero])
                     for v in range(NR * VPB)] for r in range(MR)]

            kbeg, kend = i64("k0"), i64("k1")
            pre = b.block
            loop = b.append_basic_block("f32_loop")
            done = b.append_basic_block("f32_done")
            b.cbranch(b.icmp_signed("<", kbeg, kend), loop, done)
            b.position_at_end(loop)
            k = b.phi(_I64)
            k.add_incoming(kbeg, pre)
            acc = [[b.phi(vty) for _ in range(NR * VPB)] for _ in range(MR)]
            for r in range(MR):
                for v in range(NR * VPB):
                    acc[r][v].add_incoming(init[r][v], pre)
            kb = b.mul(k, _const(BLOCK))
            bvec = []
            for v in range(NR * VPB):
                c, j = divmod(v, VPB)
                off = b.add(b.add(b.mul(_const(c), bstride), kb), _const(j * VW))
                bvec.append(b.load(vptr(pb, off), align=4))
            new = [[None] * (NR * VPB) for _ in range(MR)]
            for r in range(MR):
                av = splat(b.load(b.gep(pa, [b.add(arow[r], k)]), align=4))
                for v in range(NR * VPB):
                    new[r][v] = b.call(fma, [av, bvec[v], acc[r][v]])
            knext = b.add(k, _const(1))
            body_end = b.block
            k.add_incoming(knext, body_end)
            for r in range(MR):
                for v in range(NR * VPB):
                    acc[r][v].add_incoming(new[r][v], body_end)
            b.cbranch(b.icmp_signed("<", knext, kend), loop, done)

            b.position_at_end(done)
            final = [[b.phi(vty) for _ in range(NR * VPB)] for _ in range(MR)]
            for r in range(MR):
                for v in range(NR * VPB):
                    final[r][v].add_incoming(init[r][v], pre)
                    final[r][v].add_incoming(new[r][v], body_end)
            biasv = []
            for v in range(NR * VPB):
                c, j = divmod(v, VPB)
                bmask = b.select(b.and_(last_, has_bias_), colmask[v], nomask)
                biasv.append(b.call(mload, [vptr(pbias, _const(c * BLOCK + j * VW)),
                                            ir.Constant(_I32, 4), bmask, zero]))
            for r in range(MR):
                for v in range(NR * VPB):
                    ph = final[r][v]
                    y = b.select(b.and_(last_, has_bias_), b.fadd(ph, biasv[v]), ph)
                    y = b.select(last_, _canonical_nan_vec(b, y), y)
                    b.call(mstore, [y, optr[r][v], ir.Constant(_I32, 4), masks[r][v]])
            return context.get_dummy_value()

        return sig, codegen

    kernel.__name__ = f"f32_{MR}x{NR}_v{VW}"
    return kernel


def _splat_i32(builder, x, ity):
    v = builder.insert_element(ir.Constant(ity, None), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(ity, None), ir.Constant(ity, [0] * ity.count))


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 fma(a, b, c), one rounding: ``llvm.fma.f32`` (an FMA instruction, or libm's
    fmaf on a target without one; never a separate multiply and add)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        f = cgutils.get_or_insert_function(builder.module,
                                           ir.FunctionType(_F32, [_F32, _F32, _F32]), "llvm.fma.f32")
        return builder.call(f, list(args))
    return types.float32(types.float32, types.float32, types.float32), codegen


for _mr in (8, 4, 2, 1):
    for _nr in (3, 2, 1):      # F512_8x3, ..., F512_1x1
        globals()[f"F512_{_mr}x{_nr}"] = make_f32_kernel(_mr, _nr, 16)
for _mr in (6, 4, 2, 1):       # F256_6x1, ..., F256_1x1
    globals()[f"F256_{_mr}x1"] = make_f32_kernel(_mr, 1, 8)


@numba.njit(cache=True, inline="always")
def _portable_tile(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols,
                   first, last, bias, n0, has_bias, acc):
    """The portable micro-kernel: up to 4 rows x 16 columns (one block), the same arguments and
    result as make_f32_kernel's (acc: float32 scratch of 4 * 16)."""
    for r in range(rows):
        o = roff[r0 + r] + coff[c0]
        for j in range(BLOCK):
            acc[r * BLOCK + j] = np.float32(0) if first or j >= cols else out[o + j]
    for k in range(k0, k1):
        bk = B[b_off + k * BLOCK:b_off + k * BLOCK + BLOCK]
        for r in range(rows):
            a = A[a_off + r * lda + k]
            t = acc[r * BLOCK:r * BLOCK + BLOCK]
            for j in range(BLOCK):
                t[j] = fma32(a, bk[j], t[j])
    for r in range(rows):
        o = roff[r0 + r] + coff[c0]
        for j in range(cols):
            y = acc[r * BLOCK + j]
            if last:
                if has_bias:
                    y = y + bias[n0 + j]
                y = canonical_nan_value(y)
            out[o + j] = y


@numba.njit(cache=True, inline="always")
def _tile(path, mr, nr, A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows,
          cols, first, last, bias, n0, has_bias, acc):
    """One tile on ``path`` (0 avx512, 1 avx2, 2 portable) with the kernel of mr rows, nr blocks."""
    if path == 0:
        if mr == 8:
            if nr == 3:
                F512_8x3(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            elif nr == 2:
                F512_8x2(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            else:
                F512_8x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
        elif mr == 4:
            if nr == 3:
                F512_4x3(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            elif nr == 2:
                F512_4x2(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            else:
                F512_4x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
        elif mr == 2:
            if nr == 3:
                F512_2x3(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            elif nr == 2:
                F512_2x2(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            else:
                F512_2x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
        else:
            if nr == 3:
                F512_1x3(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            elif nr == 2:
                F512_1x2(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
            else:
                F512_1x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
    elif path == 1:
        if mr == 6:
            F256_6x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
        elif mr == 4:
            F256_4x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
        elif mr == 2:
            F256_2x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
        else:
            F256_1x1(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols, first, last, bias, n0, has_bias)  # noqa: F821,E501
    else:
        _portable_tile(A, a_off, lda, B, b_off, b_stride, k0, k1, out, roff, r0, coff, c0, rows, cols,
                       first, last, bias, n0, has_bias, acc)


@numba.njit(cache=True, inline="always")
def _kernel_rows(path, rows):
    """The rows of the smallest kernel of ``path`` that covers ``rows`` rows."""
    if path == 0:
        return 8 if rows > 4 else 4 if rows > 2 else rows
    if path == 1:
        return 6 if rows > 4 else 4 if rows > 2 else rows
    return 4


# ---------------------------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------------------------
KC = 256          # K per block: a tile's stretch of A (8 x KC floats) and of B stays in L1 / L2


@numba.njit(cache=True, inline="always")
def _gemm_range(path, MRm, NRm, A, a_base, lda, M, K, B, b_stride, N, out, roff, r_base, coff,
                bias, has_bias, mb0, mb1, ch0, ch1, acc):
    """Rows blocks [mb0, mb1) x column chunks [ch0, ch1) of one GEMM: tiles of MRm x 16 NRm,
    K cut into blocks of KC (each chain continued from its stored partial)."""
    NB = (N + BLOCK - 1) // BLOCK
    nkb = max(1, (K + KC - 1) // KC)
    for kb in range(nkb):
        k0 = kb * KC
        k1 = min(K, k0 + KC)
        first = kb == 0
        last = kb == nkb - 1
        for ch in range(ch0, ch1):
            nb0 = ch * NRm
            nr = min(NRm, NB - nb0)
            cols = min(BLOCK * nr, N - BLOCK * nb0)
            for mb in range(mb0, mb1):
                m0 = mb * MRm
                rows = min(MRm, M - m0)
                _tile(path, _kernel_rows(path, rows), nr, A, a_base + m0 * lda, lda, B,
                      nb0 * b_stride, b_stride, k0, k1, out, roff, r_base + m0, coff, nb0, rows,
                      cols, first, last, bias, BLOCK * nb0, has_bias, acc)


@numba.njit(cache=True, inline="always")
def _split(part, nparts, R, nmb, nchunks):
    """(mb0, mb1, ch0, ch1) of part ``part`` in a grid of R row parts x nparts / R column parts."""
    Cn = nparts // R
    ri, ci = part // Cn, part % Cn
    return ri * nmb // R, (ri + 1) * nmb // R, ci * nchunks // Cn, (ci + 1) * nchunks // Cn


@numba.njit(cache=True, inline="always")
def _gemm_body(path, A, lda, M, K, B, N, out, roff, coff, bias, has_bias, R, part, nparts):
    MRm = 8 if path == 0 else 6 if path == 1 else 4
    NRm = 3 if path == 0 else 1
    nmb = (M + MRm - 1) // MRm
    nchunks = ((N + BLOCK - 1) // BLOCK + NRm - 1) // NRm
    mb0, mb1, ch0, ch1 = _split(part, nparts, R, nmb, nchunks)
    acc = np.empty(4 * BLOCK, np.float32)
    _gemm_range(path, MRm, NRm, A, 0, lda, M, K, B, K * BLOCK, N, out, roff, 0, coff, bias,
                has_bias, mb0, mb1, ch0, ch1, acc)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gemm_avx512(A, lda, M, K, B, N, out, roff, coff, bias, has_bias, R, part, nparts):
    _gemm_body(0, A, lda, M, K, B, N, out, roff, coff, bias, has_bias, R, part, nparts)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gemm_avx2(A, lda, M, K, B, N, out, roff, coff, bias, has_bias, R, part, nparts):
    _gemm_body(1, A, lda, M, K, B, N, out, roff, coff, bias, has_bias, R, part, nparts)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gemm_portable(A, lda, M, K, B, N, out, roff, coff, bias, has_bias, R, part, nparts):
    _gemm_body(2, A, lda, M, K, B, N, out, roff, coff, bias, has_bias, R, part, nparts)


_GEMM = {"avx512": _gemm_avx512, "avx2": _gemm_avx2, "portable": _gemm_portable}


# ---------------------------------------------------------------------------------------------
# prepacked weights
# ---------------------------------------------------------------------------------------------
def _aligned_empty(n: int) -> np.ndarray:
    """float32 [n] whose data starts on a 64-byte boundary (one zmm load per cache line)."""
    raw = np.empty(4 * n + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + 4 * n].view(F32)


@dataclass(frozen=True, eq=False)
class PackedF32:
    """float32 weights [N, K] prepacked for matmul_f32 (build once with ``prepack_f32``).

    data  float32 [NB * K * 16], 64-byte aligned: w[16 b + j, k] at 16 * (b * K + k) + j
          (zeros past N).
    """
    data: np.ndarray
    N: int
    K: int
    NB: int

    def unpack(self) -> np.ndarray:
        """The float32 [N, K] array this was packed from."""
        blocks = self.data[:self.NB * self.K * BLOCK].reshape(self.NB, self.K, BLOCK)
        return np.ascontiguousarray(blocks.transpose(0, 2, 1).reshape(self.NB * BLOCK, self.K)[:self.N])

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def _check_f32(a, what, ndim=None):
    a = np.asarray(a)
    if a.dtype != F32:
        raise DTypeError(f"{what}: expected float32, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{what}: expected {ndim} dimensions, got shape {list(a.shape)}")
    return a


def prepack_f32(w) -> PackedF32:
    """Pack float32 weights w [N, K] once for matmul_f32."""
    w = _check_f32(w, "prepack_f32: w", 2)
    N, K = w.shape
    NB = -(-N // BLOCK)
    data = _aligned_empty(max(NB * K * BLOCK, 1))
    view = data[:NB * K * BLOCK].reshape(NB, K, BLOCK)
    full = N // BLOCK
    view[:full] = w[:full * BLOCK].reshape(full, BLOCK, K).transpose(0, 2, 1)
    if full < NB:
        view[full] = 0
        view[full, :, :N - full * BLOCK] = w[full * BLOCK:].T
    return PackedF32(data, N, K, NB)


def _as_packed(w, what) -> PackedF32:
    if isinstance(w, PackedF32):
        return w
    return prepack_f32(_check_f32(w, f"{what}: w", 2))


# ---------------------------------------------------------------------------------------------
# front ends
# ---------------------------------------------------------------------------------------------
def _grid(M: int, MR: int, nchunks: int, nparts: int) -> int:
    """Row parts R of an R x (nparts / R) grid: rows when there are enough, else columns."""
    if nparts <= 1:
        return 1
    if -(-M // MR) >= 4 * nparts or nchunks < nparts:
        return nparts
    return 1


def _run_gemm(path, A2, M, K, packed, out_flat, roff, coff, bias):
    N = packed.N
    if M == 0 or N == 0:
        return
    MR, NR = TILE[path]
    nparts = _pool.threads()
    nchunks = -(-packed.NB // NR)
    R = _grid(M, MR, nchunks, nparts)
    nparts = R if R > 1 else min(nparts, nchunks)
    b = np.zeros(1, F32) if bias is None else bias
    _pool.run(_GEMM[path], max(1, nparts), A2.reshape(-1), K, M, K, packed.data, N, out_flat, roff,
              coff, b, bias is not None, R if nparts > 1 else 1)


def _check_bias(bias, N, what):
    if bias is None:
        return None
    bias = _check_f32(bias, f"{what}: bias")
    if bias.shape != (N,):
        raise ShapeError(f"{what}: bias must be [{N}], got shape {list(bias.shape)}")
    return np.ascontiguousarray(bias)


def matmul_f32(x, w, bias=None, out=None, path=None, head_split=None) -> np.ndarray:
    """y = x @ w.T (+ bias) by contract rule 13 (the fma chain over k per element, the bias added
    after it): x float32 [..., K], w float32 [N, K] or a PackedF32, bias float32 [N] or None.
    Returns float32 [..., N] (``out``: a C-contiguous float32 array of that shape to write
    into), NaN canonical. ``head_split=H`` (x [B, T, K]) returns [B, H, T, N / H] instead: the
    heads written directly in attention's layout. Same bytes as refquant.nn.dot.linear_chain on
    every path (``path``: "avx512", "avx2", "portable", None for the default)."""
    what = "matmul_f32"
    path = _path(path)
    x = _check_f32(x, f"{what}: x")
    if x.ndim < 1:
        raise ShapeError(f"{what}: x must have a K axis, got a scalar")
    packed = _as_packed(w, what)
    N, K = packed.N, packed.K
    if x.shape[-1] != K:
        raise ShapeError(f"{what}: x has K = {x.shape[-1]} (shape {list(x.shape)}) but w is "
                         f"[{N}, {K}]")
    bias = _check_bias(bias, N, what)
    lead = x.shape[:-1]
    A2 = np.ascontiguousarray(x.reshape(int(np.prod(lead, dtype=np.int64)), K))
    M = A2.shape[0]
    NB = packed.NB
    coff = np.arange(NB, dtype=np.int64) * BLOCK
    if head_split is not None:
        H = int(head_split)
        if x.ndim != 3 or H <= 0 or N % H:
            raise ShapeError(f"{what}: head_split={head_split} needs x [B, T, K] and N = {N} a "
                             f"multiple of it, got x {list(x.shape)}")
        Bsz, T = lead
        D = N // H
        y = np.empty((Bsz, H, T, D), F32) if out is None else out
        if y.shape != (Bsz, H, T, D) or y.dtype != F32 or not y.flags.c_contiguous:
            raise ShapeError(f"{what}: out must be C-contiguous float32 {[Bsz, H, T, D]}")
        if D % BLOCK:  # a 16-column block would straddle two heads: plain, then one copy
            plain = matmul_f32(x, packed, bias, path=path)
            y[...] = plain.reshape(Bsz, T, H, D).transpose(0, 2, 1, 3)
            return y
        m = np.arange(M, dtype=np.int64)
        roff = (m // T) * (H * T * D) + (m % T) * D           # row (b, t) -> b, t of [B, H, T, D]
        n0 = coff
        coff = (n0 // D) * (T * D) + n0 % D                   # block at n0 -> head n0 // D, d
        _run_gemm(path, A2, M, K, packed, y.reshape(-1), roff, coff, bias)
        return y
    y = np.empty(lead + (N,), F32) if out is None else out
    if y.shape != lead + (N,) or y.dtype != F32 or not y.flags.c_contiguous:
        raise ShapeError(f"{what}: out must be C-contiguous float32 {list(lead + (N,))}, got "
                         f"{y.dtype} {list(y.shape)}")
    roff = np.arange(M, dtype=np.int64) * N
    _run_gemm(path, A2, M, K, packed, y.reshape(-1), roff, coff, bias)
    return y


# ---------------------------------------------------------------------------------------------
# attention: all heads in one call, k / v packed per head by the thread that uses it
# ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _pack_rows(src, dst, n, K):
    """dst[16 * (c * K + k) + j] = src[16 c + j, k] for a 2-D src [n, K] (zeros past n)."""
    NB = (n + BLOCK - 1) // BLOCK
    for c in range(NB):
        for k in range(K):
            base = BLOCK * (c * K + k)
            for j in range(BLOCK):
                i = c * BLOCK + j
                dst[base + j] = src[i, k] if i < n else np.float32(0)


@numba.njit(cache=True, inline="always")
def _pack_cols(src, dst, n, K):
    """dst[16 * (c * K + k) + j] = src[k, 16 c + j] for a 2-D src [K, n] (zeros past n): the
    weights of an NN product (w[n, k] = src[k, n])."""
    NB = (n + BLOCK - 1) // BLOCK
    for c in range(NB):
        for k in range(K):
            base = BLOCK * (c * K + k)
            for j in range(BLOCK):
                i = c * BLOCK + j
                dst[base + j] = src[k, i] if i < n else np.float32(0)


@numba.njit(cache=True, inline="always")
def _attention_body(path, context, A, kv, out, G, T, H, part, nparts):
    """Every (batch, kv head) g of ``kv`` [B, Hkv, S, D]: the G query heads that share it are
    one GEMM of G * T rows, A rows (b, hkv * G + i, t) contiguous. Scores (context False):
    A = q scaled [B, H, T, D], w = k[b, hkv] [S, D], out [B, H, T, S]. Context (True):
    A = p [B, H, T, S], w[d, s] = v[b, hkv, s, d], out in [B, T, H, D] layout."""
    Bsz, Hkv, S, D = kv.shape
    nh = Bsz * Hkv
    GT = G * T
    if context:
        N, K = D, S
    else:
        N, K = S, D
    MRm = 8 if path == 0 else 6 if path == 1 else 4
    NRm = 3 if path == 0 else 1
    NB = (N + BLOCK - 1) // BLOCK
    nmb = (GT + MRm - 1) // MRm
    nchunks = (NB + NRm - 1) // NRm
    if nh >= nparts:   # whole heads per part
        h0, h1 = part * nh // nparts, (part + 1) * nh // nparts
        mb0, mb1 = 0, nmb
    else:              # every part takes every head, its share of the rows
        h0, h1 = 0, nh
        mb0, mb1 = part * nmb // nparts, (part + 1) * nmb // nparts
    packed = np.empty(max(1, NB * K * BLOCK), np.float32)
    roff = np.empty(GT, np.int64)
    coff = np.empty(NB, np.int64)
    for c in range(NB):
        coff[c] = c * BLOCK
    acc = np.empty(4 * BLOCK, np.float32)
    bias = np.zeros(1, np.float32)
    for g in range(h0, h1):
        b, hkv = g // Hkv, g % Hkv
        if context:
            _pack_cols(kv[b, hkv], packed, N, K)
        else:
            _pack_rows(kv[b, hkv], packed, N, K)
        for r in range(GT):
            if context:
                h = hkv * G + r // T
                roff[r] = ((b * T + r % T) * H + h) * D
            else:
                roff[r] = (g * GT + r) * S
        _gemm_range(path, MRm, NRm, A, g * GT * K, K, GT, K, packed, K * BLOCK, N, out, roff, 0,
                    coff, bias, False, mb0, mb1, 0, nchunks, acc)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _attention_avx512(context, A, kv, out, G, T, H, part, nparts):
    _attention_body(0, context, A, kv, out, G, T, H, part, nparts)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _attention_avx2(context, A, kv, out, G, T, H, part, nparts):
    _attention_body(1, context, A, kv, out, G, T, H, part, nparts)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _attention_portable(context, A, kv, out, G, T, H, part, nparts):
    _attention_body(2, context, A, kv, out, G, T, H, part, nparts)


_ATTENTION = {"avx512": _attention_avx512, "avx2": _attention_avx2, "portable": _attention_portable}


def _check_heads(a, kv, what, a_name, kv_name, inner_a, inner_kv):
    a = _check_f32(a, f"{what}: {a_name}", 4)
    kv = _check_f32(kv, f"{what}: {kv_name}", 4)
    B, H, T, X = a.shape
    if kv.shape[0] != B or kv.shape[1] == 0 or H % kv.shape[1]:
        raise ShapeError(f"{what}: {a_name} {list(a.shape)} and {kv_name} {list(kv.shape)}: expected "
                         f"the same batch and H a multiple of Hkv")
    if X != kv.shape[inner_kv]:
        raise ShapeError(f"{what}: {a_name} {list(a.shape)} and {kv_name} {list(kv.shape)}: the "
                         f"{inner_a} sizes differ")
    return a, kv


def _run_attention(path, context, A, kv, out, G, T, H):
    if out.size:
        _pool.run(_ATTENTION[path], _pool.threads(), context, np.ascontiguousarray(A).reshape(-1),
                  kv, out.reshape(-1), G, T, H)


def attention_scores(q_scaled, k, path=None) -> np.ndarray:
    """scores [B, H, T, S]: each the fma chain over d of q_scaled[b, h, t, d] * k[b, h // G, s, d]
    (contract rule 13; q already multiplied by float32(1/sqrt(D)); G = H / Hkv, grouped-query
    heads). Same bytes as refquant.nn.dot.attention_scores_chain."""
    path = _path(path)
    q, k = _check_heads(q_scaled, k, "attention_scores", "q", "k", "D", 3)
    B, H, T, D = q.shape
    S = k.shape[2]
    out = np.empty((B, H, T, S), F32)
    _run_attention(path, False, q, k, out, H // k.shape[1], T, H)
    return out


def attention_context(p, v, path=None) -> np.ndarray:
    """context [B, H, T, D]: each the fma chain over s = 0 .. S-1 (every key) of
    p[b, h, t, s] * v[b, h // G, s, d] (contract rule 13). Computed in [B, T, H, D] memory
    order and returned as the [B, H, T, D] view of it, so ``ctx.transpose(0, 2, 1, 3)
    .reshape(B, T, H * D)`` costs no copy. Same bytes as
    refquant.nn.dot.attention_context_chain."""
    path = _path(path)
    p, v = _check_heads(p, v, "attention_context", "p", "v", "S", 2)
    B, H, T, S = p.shape
    D = v.shape[3]
    out = np.empty((B, T, H, D), F32)
    _run_attention(path, True, p, v, out, H // v.shape[1], T, H)
    return out.transpose(0, 2, 1, 3)


__all__ = ["matmul_f32", "prepack_f32", "PackedF32", "attention_scores", "attention_context",
           "fma32", "PATHS", "DEFAULT_PATH", "HAVE_AVX512", "HAVE_AVX2", "make_f32_kernel"]
