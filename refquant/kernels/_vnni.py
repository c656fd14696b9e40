"""AVX-512 VNNI (and AMX) micro-kernels with their epilogue, in LLVM IR through Numba intrinsics.

The AMX kernel (``make_amx_kernel``, end of the file) computes the same u8 x s8 products on
32 x 32 output tiles with TDPBUSD, stores the int32 tile to a buffer and runs the same epilogue
emitter row by row. Tile instructions need Linux's permission (``request_amx``) and a tile
configuration per thread (``amx_config`` / ``amx_release``); on a target without AMX the AMX
names are stubs, so that code referencing them still compiles (LLVM cannot select tile
instructions there).

LLVM never emits ``vpdpbusd`` from ordinary loops, so each micro-kernel here is one
``@intrinsic`` that generates its whole loop: an ``MR x NR`` tile of ``<16 x i32>``
accumulators held in registers (SSA values carried by phi nodes) over the whole K range, one
``llvm.x86.avx512.vpdpbusd.512`` per accumulator and K-step, then the epilogue straight from
the registers into the output (masked stores at the edges of the output).

``vpdpbusd`` multiplies unsigned bytes by signed bytes and adds each group of four products to
an int32 lane, wrapping (no saturation). Every sum here is exact modulo 2^32, and the callers'
K limit guarantees that the true result fits int32, so the wrapped result is the exact one.

Kinds (the multiplication):

``"i8"``  int8 x int8. A holds ``a + 128`` as uint8 (the u8 operand, 4 bytes of a row
          broadcast to the 16 lanes), B the int8 weights (the s8 operand) as
          ``[16-column block][kq][16 lanes][4]`` (64 bytes = one zmm per block and K-step). The
          accumulators start at ``colinit = -128 * colsum(w)`` per column.
``"w4"``  int4 weights x int8 activations, nibbles unpacked in the kernel. B holds ``w + 8``
          (0..15) two per byte: one 64-byte vector per block and PAIR of K-steps, low nibbles
          K-step 2i, high nibbles K-step 2i+1; ``v & 0x0f`` and ``(v >> 4) & 0x0f`` are the
          u8 operands, the int8 activations (A as they are) the s8 operand. The accumulators
          start at ``rowinit = -8 * rowsum(a)`` per row (over the same K range).

A is row-major with ``lda`` bytes per row (K padded to whole K-steps).

Epilogues (the float32 operations are IEEE operations in the written order: LLVM gets no
fast-math or contraction flags, so nothing is fused or reassociated):

``"int"``    out_i[m0 + r, n0 + j] = acc.
``"float"``  v = acc (+ q_bias[m, n] in int32 if has_qb, an overflow setting err[0] = 1);
             y = float32(v) * (s_a[m] * s_w[n]) (+ bias[n] if has_bias); out_f[m, n] = y, a NaN
             stored as the canonical NaN (rule 12, ``canonical_nan_lanes``).
``"group"``  p = float32(acc) * (s_a[m] * s_w[n]) (s_w is the group's row of scales);
             ftile[r * 48 + j] = p if first else ftile[r * 48 + j] + p (the caller adds the
             bias and copies the valid part out).

Only rows r < rows and columns j < cols are written (masked stores), except ``"group"``
which fills the whole tile buffer.

Arguments (offsets in elements of the array concerned):
``(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit, ri_off,
out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows, has_qb,
err, ftile, first)``. ``steps`` counts K-steps of 4 (i8) or pairs of them (w4); block c of B
starts at ``b_off + c * b_stride``; the accumulator of row r, block c starts at
``colinit[ci_off + 16c : +16] + rowinit[ri_off + r]``; s_a of row m is ``s_a[m * sa_stride]``,
q_bias of (m, n) is ``qb[m * qb_rows, n]``.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..floats import CANONICAL_NAN_BITS

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_V16 = ir.VectorType(_I32, 16)
_F16 = ir.VectorType(_F32, 16)
_M16 = ir.VectorType(_I1, 16)
TILE_W = 48


def _const(v):
    return ir.Constant(_I64, v)


def _wide_vectors(fn):
    """Let this function keep 512-bit vectors in zmm registers whatever the CPU tuning prefers
    (LLVM reads the attribute per function; inlining keeps the maximum)."""
    try:
        set.add(fn.attributes, '"min-legal-vector-width"="512"')
    except Exception:  # pragma: no cover - llvmlite's attribute set changed shape
        pass


class _Arr:
    """Data pointer (as ``elt*``) and row stride (in elements) of a Numba array argument."""

    def __init__(self, context, builder, ty, val, elt, itemsize):
        arr = context.make_array(ty)(context, builder, val)
        self.ptr = builder.bitcast(arr.data, elt.as_pointer())
        if ty.ndim == 2:
            strides = cgutils.unpack_tuple(builder, arr.strides, 2)
            self.ld = builder.sdiv(strides[0], _const(itemsize))
        else:
            self.ld = _const(0)


def _splat(builder, x, vec_ty):
    v = builder.insert_element(ir.Constant(vec_ty, None), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vec_ty, None), ir.Constant(_V16, [0] * 16))


def _vptr(builder, p, off, vec_ty=_V16):
    return builder.bitcast(builder.gep(p, [off]), vec_ty.as_pointer())


def canonical_nan_lanes(builder, y):
    """refquant.floats.canonical_nan_value on a <16 x float>: NaN lanes (fcmp uno) replaced by
    the canonical NaN, built from its bits (rule 12)."""
    nan = builder.bitcast(ir.Constant(_V16, [CANONICAL_NAN_BITS] * 16), _F16)
    return builder.select(builder.fcmp_unordered("uno", y, y), nan, y)


class _Epilogue:
    """Emits the epilogue ("int", "float" or "group", module docstring) of one row of a tile:
    ``row(r, accs)`` with r an i64 IR value (a constant, or a loop counter) and accs the row's
    NR <16 x i32> accumulators; ``finish()`` after the last row."""

    def __init__(self, context, builder, epi, NR, i64, array):
        self.b = b = builder
        self.mod = builder.module
        self.epi, self.NR = epi, NR
        self.m0, self.n0, self.rows = i64("m0"), i64("n0"), i64("rows")
        cols32 = b.trunc(i64("cols"), _I32)
        iota = ir.Constant(_V16, list(range(16)))
        self.colmask = [b.icmp_signed("<", b.add(iota, ir.Constant(_V16, [16 * c] * 16)),
                                      _splat(b, cols32, _V16)) for c in range(NR)]
        self.allfalse = ir.Constant(_M16, [0] * 16)
        if epi == "int":
            self.out = array("out_i", _I32, 4)
            return
        self.sa = array("s_a", _F32, 4)
        self.sa_stride = i64("sa_stride")
        sw = array("s_w", _F32, 4)
        self.swv = [self.mload(_vptr(b, sw.ptr, b.add(self.n0, _const(16 * c)), _F16),
                               self.colmask[c], _F16) for c in range(NR)]
        if epi == "group":
            self.ft = array("ftile", _F32, 4)
            self.first = b.icmp_signed("!=", i64("first"), _const(0))
            return
        self.out = array("out_f", _F32, 4)
        self.has_bias = b.icmp_signed("!=", i64("has_bias"), _const(0))
        self.has_qb = b.icmp_signed("!=", i64("has_qb"), _const(0))
        bias = array("bias", _F32, 4)
        self.biasv = [self.mload(_vptr(b, bias.ptr, b.add(self.n0, _const(16 * c)), _F16),
                                 b.select(self.has_bias, self.colmask[c], self.allfalse), _F16)
                      for c in range(NR)]
        self.qb = array("qb", _I32, 4)
        self.qb_rows = i64("qb_rows")
        self.err = array("err", _I8, 1)
        self.sadd = cgutils.get_or_insert_function(
            self.mod, ir.FunctionType(ir.LiteralStructType([_V16, _M16]), [_V16, _V16]),
            "llvm.sadd.with.overflow.v16i32")
        self.any = cgutils.get_or_insert_function(self.mod, ir.FunctionType(_I1, [_M16]),
                                                  "llvm.vector.reduce.or.v16i1")
        self.overflow = cgutils.alloca_once_value(b, ir.Constant(_I1, 0))

    def mstore(self, vec, ptr, mask):
        vty = vec.type
        f = cgutils.get_or_insert_function(
            self.mod, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, _M16]),
            f"llvm.masked.store.v16{'i32' if vty == _V16 else 'f32'}.p0")
        self.b.call(f, [vec, ptr, ir.Constant(_I32, 4), mask])

    def mload(self, ptr, mask, vty):
        f = cgutils.get_or_insert_function(
            self.mod, ir.FunctionType(vty, [vty.as_pointer(), _I32, _M16, vty]),
            f"llvm.masked.load.v16{'i32' if vty == _V16 else 'f32'}.p0")
        return self.b.call(f, [ptr, ir.Constant(_I32, 4), mask, ir.Constant(vty, None)])

    def row(self, r, accs):
        b, NR = self.b, self.NR
        valid = b.icmp_signed("<", r, self.rows)
        m = b.select(valid, b.add(self.m0, r), self.m0)  # rows past the end: kept in bounds
        masks = [b.select(valid, self.colmask[c], self.allfalse) for c in range(NR)]
        if self.epi == "int":
            base = b.add(b.mul(m, self.out.ld), self.n0)
            for c in range(NR):
                self.mstore(accs[c], _vptr(b, self.out.ptr, b.add(base, _const(16 * c))), masks[c])
            return
        sa = _splat(b, b.load(b.gep(self.sa.ptr, [b.mul(m, self.sa_stride)]), align=4), _F16)
        if self.epi == "group":
            for c in range(NR):
                p = b.fmul(b.sitofp(accs[c], _F16), b.fmul(sa, self.swv[c]))
                ptr = _vptr(b, self.ft.ptr, b.add(b.mul(r, _const(TILE_W)), _const(16 * c)), _F16)
                old = b.load(ptr, align=4)
                b.store(b.select(self.first, p, b.fadd(old, p)), ptr, align=4)
            return
        obase = b.add(b.mul(m, self.out.ld), self.n0)
        qbase = b.add(b.mul(b.mul(m, self.qb_rows), self.qb.ld), self.n0)
        for c in range(NR):
            qmask = b.select(self.has_qb, masks[c], self.allfalse)
            qv = self.mload(_vptr(b, self.qb.ptr, b.add(qbase, _const(16 * c))), qmask, _V16)
            res = b.call(self.sadd, [accs[c], b.select(self.has_qb, qv, ir.Constant(_V16, [0] * 16))])
            v = b.extract_value(res, 0)
            ovf = b.call(self.any, [b.and_(b.extract_value(res, 1), qmask)])
            b.store(b.or_(b.load(self.overflow), ovf), self.overflow)
            y = b.fmul(b.sitofp(v, _F16), b.fmul(sa, self.swv[c]))
            y = b.select(self.has_bias, b.fadd(y, self.biasv[c]), y)
            y = canonical_nan_lanes(b, y)
            self.mstore(y, _vptr(b, self.out.ptr, b.add(obase, _const(16 * c)), _F16), masks[c])

    def finish(self):
        if self.epi == "float":
            with self.b.if_then(self.b.load(self.overflow), likely=False):
                self.b.store(ir.Constant(_I8, 1), self.err.ptr)


def make_microkernel(MR: int, NR: int, kind: str, epi: str):
    """The micro-kernel (module docstring) for an MR x (16 * NR) tile."""
    if kind not in ("i8", "w4") or epi not in ("int", "float", "group"):
        raise ValueError((kind, epi))

    @intrinsic
    def kernel(typingctx, A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
               ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb,
               qb_rows, has_qb, err, ftile, first):
        sig = types.void(A, a_off, lda, B, b_off, b_stride, steps, colinit, ci_off, rowinit,
                         ri_off, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias,
                         has_bias, qb, qb_rows, has_qb, err, ftile, first)

        def codegen(context, builder, signature, args):
            ta = signature.args
            arg = dict(zip(("A", "a_off", "lda", "B", "b_off", "b_stride", "steps", "colinit",
                            "ci_off", "rowinit", "ri_off", "out_i", "out_f", "m0", "n0", "rows",
                            "cols", "s_a", "sa_stride", "s_w", "bias", "has_bias", "qb",
                            "qb_rows", "has_qb", "err", "ftile", "first"), zip(args, ta)))

            def i64(name):
                v, t = arg[name]
                return context.cast(builder, v, t, types.int64)

            def array(name, elt, itemsize):
                v, t = arg[name]
                return _Arr(context, builder, t, v, elt, itemsize)

            _wide_vectors(builder.function)
            mod = builder.module
            vdp = cgutils.get_or_insert_function(
                mod, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.x86.avx512.vpdpbusd.512")
            zero_idx = ir.Constant(_V16, [0] * 16)

            def splat(x, vec_ty=_V16):
                v = builder.insert_element(ir.Constant(vec_ty, None), x, ir.Constant(_I32, 0))
                return builder.shuffle_vector(v, ir.Constant(vec_ty, None), zero_idx)

            def vptr(p, off, vec_ty=_V16):
                return builder.bitcast(builder.gep(p, [off]), vec_ty.as_pointer())

            lda_, bstride, nsteps = i64("lda"), i64("b_stride"), i64("steps")
            pa = builder.gep(array("A", _I8, 1).ptr, [i64("a_off")])
            pb = builder.gep(array("B", _I8, 1).ptr, [i64("b_off")])
            pci = builder.gep(array("colinit", _I32, 4).ptr, [i64("ci_off")])
            pri = builder.gep(array("rowinit", _I32, 4).ptr, [i64("ri_off")])

            # ---- accumulators: colinit + rowinit
            cols_init = [builder.load(vptr(pci, _const(16 * c)), align=4) for c in range(NR)]
            init = []
            for r in range(MR):
                rv = splat(builder.load(builder.gep(pri, [_const(r)]), align=4))
                init.append([builder.add(cols_init[c], rv) for c in range(NR)])
            row_offsets = [builder.mul(_const(r), lda_) for r in range(MR)]
            pre = builder.block
            loop = builder.append_basic_block("vnni_loop")
            done = builder.append_basic_block("vnni_done")
            builder.cbranch(builder.icmp_signed(">", nsteps, _const(0)), loop, done)

            # ---- the K loop
            builder.position_at_end(loop)
            i = builder.phi(_I64)
            i.add_incoming(_const(0), pre)
            acc = [[builder.phi(_V16) for _ in range(NR)] for _ in range(MR)]
            for r in range(MR):
                for c in range(NR):
                    acc[r][c].add_incoming(init[r][c], pre)
            boff_i = builder.mul(i, _const(64))
            bvec = [builder.load(vptr(pb, builder.add(builder.mul(_const(c), bstride), boff_i)),
                                 align=1) for c in range(NR)]

            def a_bcast(step, r):  # 4 bytes of row r at K-step ``step``, in all 16 lanes
                off = builder.add(builder.mul(step, _const(4)), row_offsets[r])
                p = builder.bitcast(builder.gep(pa, [off]), _I32.as_pointer())
                return splat(builder.load(p, align=1))

            new = [list(row) for row in acc]
            if kind == "i8":
                for r in range(MR):
                    av = a_bcast(i, r)
                    for c in range(NR):
                        new[r][c] = builder.call(vdp, [new[r][c], av, bvec[c]])
            else:
                mask = ir.Constant(_V16, [0x0F0F0F0F] * 16)
                four = ir.Constant(_V16, [4] * 16)
                lo = [builder.and_(b, mask) for b in bvec]
                hi = [builder.and_(builder.lshr(b, four), mask) for b in bvec]
                s0 = builder.mul(i, _const(2))
                s1 = builder.add(s0, _const(1))
                for r in range(MR):
                    av = a_bcast(s0, r)
                    for c in range(NR):
                        new[r][c] = builder.call(vdp, [new[r][c], lo[c], av])
                for r in range(MR):
                    av = a_bcast(s1, r)
                    for c in range(NR):
                        new[r][c] = builder.call(vdp, [new[r][c], hi[c], av])
            inext = builder.add(i, _const(1))
            body_end = builder.block
            i.add_incoming(inext, body_end)
            for r in range(MR):
                for c in range(NR):
                    acc[r][c].add_incoming(new[r][c], body_end)
            builder.cbranch(builder.icmp_signed("<", inext, nsteps), loop, done)

            builder.position_at_end(done)
            final = [[None] * NR for _ in range(MR)]
            for r in range(MR):
                for c in range(NR):
                    ph = builder.phi(_V16)
                    ph.add_incoming(init[r][c], pre)
                    ph.add_incoming(new[r][c], body_end)
                    final[r][c] = ph

            # ---- epilogue
            em = _Epilogue(context, builder, epi, NR, i64, array)
            for r in range(MR):
                em.row(_const(r), [final[r][c] for c in range(NR)])
            em.finish()
            return context.get_dummy_value()

        return sig, codegen

    kernel.__name__ = f"vnni_{kind}_{epi}_{MR}x{NR}"
    return kernel


ROWS = (8, 4, 1)   # rows per micro-kernel tile (8, or fewer for small M)
for _kind, _epi in (("i8", "int"), ("i8", "float"), ("w4", "float"), ("w4", "group")):
    for _mr in ROWS:
        for _nr in (3, 2, 1):  # module attributes I8_INT_8x3, ..., W4_GROUP_1x1
            globals()[f"{_kind.upper()}_{_epi.upper()}_{_mr}x{_nr}"] = make_microkernel(_mr, _nr, _kind, _epi)


# ---------------------------------------------------------------------------------------------
# AMX: the same products on the tile unit (TDPBUSD, u8 x s8 -> int32, 16 x 16 x 64 per instruction)
# ---------------------------------------------------------------------------------------------
_VOID = ir.VoidType()
_PTR = _I8.as_pointer()
AMX_ROWS, AMX_COLS = 32, 32   # output tile of the AMX kernel: tmm0-3 = 2 x 2 blocks of 16 x 16


def _amx_fn(mod, name, args):
    return cgutils.get_or_insert_function(mod, ir.FunctionType(_VOID, args), f"llvm.x86.{name}")


@intrinsic
def _amx_config(typingctx, cfg):
    """ldtilecfg: load the tile configuration (64 bytes) for this thread."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.call(_amx_fn(builder.module, "ldtilecfg", [_PTR]), [builder.bitcast(data, _PTR)])
        return context.get_dummy_value()
    return types.void(cfg), codegen


@intrinsic
def _amx_release(typingctx):
    """tilerelease: back to the initial tile state."""
    def codegen(context, builder, signature, args):
        builder.call(_amx_fn(builder.module, "tilerelease", []), [])
        return context.get_dummy_value()
    return types.void(), codegen


def make_amx_kernel(epi: str):
    """A 32 x 32 output tile on AMX, epilogue ``epi`` ("int" or "float", module docstring).

    Arguments: (A, a_off, lda, a_kstride, B, b_off, b_stride, kblocks, colinit, ci_off, cbuf,
    out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb, qb_rows, has_qb,
    err). A is uint8 a + 128: the tile of rows 0-15 of K-block k at a_off + k * a_kstride with
    rows lda bytes apart, rows 16-31 16 * lda further (row-major: a_kstride 64; packed in
    32 x 64-byte tiles: lda 64, a_kstride 2048); B the
    PackedWeight layout (the 16 K-steps of a block of 64 are one 16 x 64-byte tile), block c at
    b_off + c * b_stride; kblocks blocks of 64 along K; cbuf an int32 buffer of 32 x 32 that
    receives the tiles; the accumulators get colinit[ci_off + n] in the epilogue. The caller
    has loaded the tile configuration (amx_config: 8 tiles of 16 rows x 64 bytes)."""
    names = ("A", "a_off", "lda", "a_kstride", "B", "b_off", "b_stride", "kblocks", "colinit",
             "ci_off", "cbuf",
             "out_i", "out_f", "m0", "n0", "rows", "cols", "s_a", "sa_stride", "s_w", "bias",
             "has_bias", "qb", "qb_rows", "has_qb", "err")

    @intrinsic
    def kernel(typingctx, A, a_off, lda, a_kstride, B, b_off, b_stride, kblocks, colinit, ci_off,
               cbuf, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias, has_bias, qb,
               qb_rows, has_qb, err):
        sig = types.void(A, a_off, lda, a_kstride, B, b_off, b_stride, kblocks, colinit, ci_off,
                         cbuf, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias,
                         has_bias, qb, qb_rows, has_qb, err)

        def codegen(context, builder, signature, args):
            arg = dict(zip(names, zip(args, signature.args)))

            def i64(name):
                v, t = arg[name]
                return context.cast(builder, v, t, types.int64)

            def array(name, elt, itemsize):
                v, t = arg[name]
                return _Arr(context, builder, t, v, elt, itemsize)

            b = builder
            mod = b.module
            _wide_vectors(b.function)
            load = _amx_fn(mod, "tileloadd64", [_I8, _PTR, _I64])
            store = _amx_fn(mod, "tilestored64", [_I8, _PTR, _I64])
            zero = _amx_fn(mod, "tilezero", [_I8])
            dp = _amx_fn(mod, "tdpbusd", [_I8, _I8, _I8])

            def t(n):
                return ir.Constant(_I8, n)

            lda, bstride, nk = i64("lda"), i64("b_stride"), i64("kblocks")
            pa = b.gep(array("A", _I8, 1).ptr, [i64("a_off")])
            pa1 = b.gep(pa, [b.mul(lda, _const(16))])
            pb = b.gep(array("B", _I8, 1).ptr, [i64("b_off")])
            pb1 = b.gep(pb, [bstride])
            for n in range(4):
                b.call(zero, [t(n)])
            pre = b.block
            loop = b.append_basic_block("amx_loop")
            done = b.append_basic_block("amx_done")
            b.cbranch(b.icmp_signed(">", nk, _const(0)), loop, done)
            b.position_at_end(loop)
            k = b.phi(_I64)
            k.add_incoming(_const(0), pre)
            koff_a = b.mul(k, i64("a_kstride"))
            koff_b = b.mul(k, _const(1024))
            # loads interleaved with the products, in the order each tile is last read, so that
            # a load (tile registers are not renamed) waits for as little as possible
            b.call(load, [t(4), b.gep(pa, [koff_a]), lda])
            b.call(load, [t(6), b.gep(pb, [koff_b]), _const(64)])
            b.call(dp, [t(0), t(4), t(6)])
            b.call(load, [t(7), b.gep(pb1, [koff_b]), _const(64)])
            b.call(dp, [t(1), t(4), t(7)])
            b.call(load, [t(5), b.gep(pa1, [koff_a]), lda])
            b.call(dp, [t(2), t(5), t(6)])
            b.call(dp, [t(3), t(5), t(7)])
            knext = b.add(k, _const(1))
            k.add_incoming(knext, b.block)
            b.cbranch(b.icmp_signed("<", knext, nk), loop, done)
            b.position_at_end(done)
            cb = array("cbuf", _I32, 4).ptr
            cb8 = b.bitcast(cb, _PTR)
            for n, off in enumerate((0, 64, 16 * 128, 16 * 128 + 64)):
                b.call(store, [t(n), b.gep(cb8, [_const(off)]), _const(128)])
            pci = b.gep(array("colinit", _I32, 4).ptr, [i64("ci_off")])
            colv = [b.load(_vptr(b, pci, _const(16 * c)), align=4) for c in range(2)]
            em = _Epilogue(context, b, epi, 2, i64, array)
            # epilogue: a loop over the 32 rows of the buffer
            pre = b.block
            rloop = b.append_basic_block("amx_rows")
            rdone = b.append_basic_block("amx_rows_done")
            b.branch(rloop)
            b.position_at_end(rloop)
            r = b.phi(_I64)
            r.add_incoming(_const(0), pre)
            base = b.mul(r, _const(AMX_COLS))
            accs = [b.add(b.load(_vptr(b, cb, b.add(base, _const(16 * c))), align=4), colv[c])
                    for c in range(2)]
            em.row(r, accs)
            rnext = b.add(r, _const(1))
            r.add_incoming(rnext, b.block)
            b.cbranch(b.icmp_signed("<", rnext, _const(AMX_ROWS)), rloop, rdone)
            b.position_at_end(rdone)
            em.finish()
            return context.get_dummy_value()

        return sig, codegen

    kernel.__name__ = f"amx_i8_{epi}"
    return kernel


def target_features() -> set:
    """The CPU features Numba compiles for (the host's unless NUMBA_CPU_NAME says otherwise)."""
    try:
        import llvmlite.binding as llvm
        from numba import config
        if config.CPU_NAME and config.CPU_NAME != "host":
            features = config.CPU_FEATURES or ""
        else:
            features = llvm.get_host_cpu_features().flatten()
        return set(f[1:] for f in features.split(",") if f.startswith("+"))
    except Exception:  # pragma: no cover
        return set()


AMX_COMPILES = {"amx-tile", "amx-int8"} <= target_features()

if AMX_COMPILES:
    AMX_INT = make_amx_kernel("int")
    AMX_FLOAT = make_amx_kernel("float")
    amx_config, amx_release = _amx_config, _amx_release
else:
    # LLVM cannot select tile instructions for a target without AMX (a fatal error, not an
    # exception), and the drivers reference these names in a branch that is never taken there:
    # stubs that emit nothing keep those drivers compilable.
    @intrinsic
    def _amx_stub(typingctx, A, a_off, lda, a_kstride, B, b_off, b_stride, kblocks, colinit,
                  ci_off, cbuf, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias,
                  has_bias, qb, qb_rows, has_qb, err):
        def codegen(context, builder, signature, args):
            return context.get_dummy_value()
        return types.void(A, a_off, lda, a_kstride, B, b_off, b_stride, kblocks, colinit, ci_off,
                          cbuf, out_i, out_f, m0, n0, rows, cols, s_a, sa_stride, s_w, bias,
                          has_bias, qb, qb_rows, has_qb, err), codegen

    @intrinsic
    def _amx_config_stub(typingctx, cfg):
        def codegen(context, builder, signature, args):
            return context.get_dummy_value()
        return types.void(cfg), codegen

    @intrinsic
    def _amx_release_stub(typingctx):
        def codegen(context, builder, signature, args):
            return context.get_dummy_value()
        return types.void(), codegen

    AMX_INT = AMX_FLOAT = _amx_stub
    amx_config, amx_release = _amx_config_stub, _amx_release_stub


def amx_config_bytes():
    """The 64-byte tile configuration: palette 1, tiles 0-7 of 16 rows x 64 bytes."""
    import numpy as np
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    for n in range(8):
        cfg[16 + 2 * n] = 64
        cfg[48 + n] = 16
    return cfg


def request_amx() -> bool:
    """Ask Linux for the AMX tile-data state (arch_prctl ARCH_REQ_XCOMP_PERM, needed once per
    process before the first tile instruction; without it they raise SIGILL). True if granted."""
    import ctypes
    import platform
    import sys
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_arch_prctl, ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1022, 0x1023, 18
        if libc.syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
            return False
        mask = ctypes.c_uint64(0)
        if libc.syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
            return False
        return bool(mask.value & (1 << XFEATURE_XTILEDATA))
    except Exception:  # pragma: no cover
        return False
