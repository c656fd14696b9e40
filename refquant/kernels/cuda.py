"""numba.cuda versions of refquant.kernels.reference: the same names and signatures, the same bytes.

Every function here returns exactly the bytes of its namesake in ``reference`` (tests/test_cuda.py
checks it bit for bit under Numba's CUDA simulator; validation/gpu_check.py on a real GPU). The
functions take and return NumPy arrays, like ``reference`` and ``cpu``; weights can be prepared
once on the device with ``prepack`` / ``prepack_w4`` (the forms a QuantizedModel keeps).

The kernels
-----------
``_linear_kernel``  one kernel for every GEMM: int8 or int4 weights, one or G input-dimension
    groups, and the epilogue (int32 out, int32 bias, float32 with bias and GELU). Each block
    computes a 64 x 64 output tile with 16 x 16 threads (4 x 4 outputs each); K advances 32
    values at a time through shared memory, as 4-byte words multiplied by ``dp4a`` (the PTX
    instruction: four int8 x int8 products summed into an int32, exact). int4 weights stay
    4 bits in device memory: a 32-bit word holds 8 values and is widened to two int8x4 words
    in shared memory (sign extension with two bit operations, ``_widen_nibbles``).
    Input-dimension groups are padded to a multiple of 32 values (zeros), so a K step never
    straddles two groups and each group's int32 sum is exact on its own.
``_rows_kernel``   one block per row: (LayerNorm ->) amax -> parameters -> quantize, writing
    the int8 row straight into the GEMM's padded word layout.

Bit-exactness on a real GPU
---------------------------
NVVM contracts ``a * b + c`` into one FMA unless told otherwise, and an FMA rounds once where
the reference rounds twice. Every float operation whose rounding matters is therefore an
explicitly rounded libdevice call (``__nv_fmul_rn``, ``__nv_fadd_rn``, ``__nv_dmul_rn``, ...,
which NVVM never contracts): the epilogue ``float32(acc) * (s_a * s_w) + bias``, the
input-group sum, the LayerNorm statistics (sequential, in float64, THE order of
``refquant.nn.fused.layer_norm_row_stats``), the LayerNorm affine step, the quantizer's
division / multiplication, and GELU's erf polynomial (the Estrin scheme of
``refquant.nn.fast_erf``, operation for operation). tests/test_cuda.py compiles every kernel to
PTX (when NVVM is installed; no GPU needed) and asserts that no ``fma`` instruction is left.
Every float32 store goes through ``_canonical_nan`` (refquant.floats.canonical_nan_value
compiled for the GPU: its constant built from the bits 0x7FC00000 by ``int_as_float``, since a
GPU's own invalid operations write 0x7FFFFFFF; tests/test_cuda.py finds ``0f7FC00000`` and no
other NaN immediate in the PTX), so NaN bytes are the CPU's (contract rule 12).
GELU's rare "unsure" elements (a float32 rounding boundary within fast_erf.TOLERANCE of the
polynomial, about 24 per million) come back flagged and are recomputed on the host with
scipy, exactly as ``fast_erf.gelu_erf_float32`` does.

Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as Python on NumPy scalars:
the same indexing, tiling, group and reduction order; the rounded operations are NumPy
float32 / float64 operations (each rounds once, as the libdevice calls do), ``dp4a`` is
computed on the bytes. The simulator proves the algorithm; the PTX check proves the
roundings; validation/gpu_check.py runs both on a real GPU at full model shapes. (Importing this
module under the simulator lowers the GIL switch interval to 0.1 ms: the simulator polls one
Python thread per CUDA thread, and at the default 5 ms it runs 3-10x slower.)
"""
from __future__ import annotations

import os
import re
import types as types_module
from collections import Counter
from dataclasses import dataclass

import numpy as np

from weights_io.errors import ConfigError, DTypeError, OutOfRangeError, ShapeError
from ..floats import canonical_nan_value
from ..nn.fast_erf import COEFFS, INV_SQRT2, TOLERANCE, U_MAX, Z_MAX
from ..quant import QParams
from ..spec import QuantSpec
from . import cpu, reference as ref
from .reference import ACTIVATIONS, I8_MAX_K, W4_MAX_K, dequant_step, pack_w4, unpack_w4

F32 = np.float32

__all__ = ["gemm_i8", "linear_i8", "linear_i8_int32_bias", "pack_w4", "unpack_w4",
           "linear_w4a8_rows", "linear_w4a8_groups", "quantize_rows", "quantize_activation",
           "quantize_dynamic", "quantize_linear_i8", "layer_norm_quantize_per_token", "dequant_step",
           "prepack", "prepack_w4", "CudaWeight", "CudaW4", "LinearLaunch", "available", "unavailable_reason",
           "SIMULATED", "I8_MAX_K", "W4_MAX_K", "ACTIVATIONS"]

TM = 4                   # outputs per thread per side
BKW = 8                  # K words (4 int8 values each) per shared-memory step
KSTEP = 4 * BKW          # 32 values: K and every input group are padded to a multiple of this
SHARED_W = BKW + 1       # shared tile row stride in words: + 1, so the 16 column reads hit 16 banks
OUT_INT, OUT_FLOAT, OUT_INT_BIAS = 0, 1, 2
ERF_LO, ERF_HI = 1.0 - TOLERANCE, 1.0 + TOLERANCE
ERF_T_SCALE = 2.0 / U_MAX


def _load_numba_cuda():
    """(cuda module or None, simulated, reason it is unavailable or None)."""
    try:
        from numba import cuda
        from numba.cuda.core import config
    except ImportError as e:  # numba-cuda (or its cuda-bindings) missing
        return None, False, (f"numba's CUDA target is not installed ({e}); install it with "
                             "pip install 'refquant[cuda]' (numba-cuda)")
    if getattr(cuda, "implementation", None) != "NVIDIA":
        return None, False, ("numba.cuda is numba's deprecated built-in CUDA target; install "
                             "numba-cuda (pip install 'refquant[cuda]')")
    simulated = bool(config.ENABLE_CUDASIM)
    if not simulated:
        try:  # the real target's numpy registry: numba-cuda <= 0.30.4 names np.row_stack (gone in numpy 2.5)
            from numba.cuda.np import arrayobj  # noqa: F401
        except AttributeError as e:
            from numba_cuda import __version__ as version
            return cuda, False, (f"numba-cuda {version} does not load with numpy {np.__version__} ({e}); "
                                 "install numpy<2.5, as pip install 'refquant[cuda]' does")
        try:
            if not cuda.is_available():
                return cuda, False, ("no CUDA GPU is visible (cuda.is_available() is False); "
                                     "set NUMBA_ENABLE_CUDASIM=1 to run the kernels in the simulator")
            cc = tuple(cuda.get_current_device().compute_capability)
        except Exception as e:  # noqa: BLE001 - any driver failure means "no GPU"
            return cuda, False, f"the CUDA driver did not initialize: {e}"
        if cc < (6, 1):
            return cuda, False, f"the GPU has compute capability {cc}; dp4a needs 6.1 or newer"
    return cuda, simulated, None


cuda, SIMULATED, _UNAVAILABLE = _load_numba_cuda()

# Launch shapes. On a GPU: 16 x 16 threads per GEMM block (a 64 x 64 output tile), 128 threads
# per row. The simulator runs every thread as a Python thread, so by default it runs the same
# code with 4 x 4 threads (16 x 16 tiles) and 8 threads per row, which lets CI afford
# hypothesis; REFQUANT_CUDASIM_FULL_TILES=1 makes it use the GPU's shapes (one test does).
_FULL = not SIMULATED or os.environ.get("REFQUANT_CUDASIM_FULL_TILES") == "1"
TPB = 16 if _FULL else 4         # threads per GEMM block side
BM = TPB * TM                    # a block's output tile: BM rows x BM columns
NT = TPB * TPB                   # threads per GEMM block
ROW_THREADS = 128 if _FULL else 8   # threads per row in _rows_kernel (a power of two)


def available() -> bool:
    """True when the kernels can run here (a GPU, or the simulator)."""
    return _UNAVAILABLE is None


def unavailable_reason() -> str | None:
    return _UNAVAILABLE


def _require():
    if _UNAVAILABLE is not None:
        raise ConfigError(f"backend 'cuda': {_UNAVAILABLE}")


# ---------------------------------------------------------------------------------------
# rounded operations: libdevice on a GPU (never contracted into FMA), NumPy in the simulator
# ---------------------------------------------------------------------------------------
if cuda is None:
    def _jit(fn=None, **kw):  # the module still imports; every entry point raises
        return fn if fn is not None else (lambda f: f)
    _device = _jit
elif SIMULATED:
    import sys
    # The simulator runs each CUDA thread as a Python thread and its scheduler polls them; at
    # the default 5 ms GIL switch interval every syncthreads costs milliseconds (3-10x slower).
    sys.setswitchinterval(min(sys.getswitchinterval(), 1e-4))
    from . import _cudasim
    _cudasim.install()  # one shared array per block even when a thread is preempted (issue 14)
    _jit = cuda.jit

    def _device(fn):
        return fn

    def _fmul(a, b):
        return F32(a) * F32(b)

    def _fadd(a, b):
        return F32(a) + F32(b)

    def _fsub(a, b):
        return F32(a) - F32(b)

    def _fdiv(a, b):
        with np.errstate(all="ignore"):
            return F32(a) / F32(b)

    def _fsqrt(a):
        return np.sqrt(F32(a))

    def _dadd(a, b):
        return np.float64(a) + np.float64(b)

    def _dmul(a, b):
        return np.float64(a) * np.float64(b)

    def _ddiv(a, b):
        return np.float64(a) / np.float64(b)

    def _rint(a):
        return np.rint(F32(a))

    def _trunc(a):
        return np.trunc(F32(a))

    def _bits(a):
        return int(np.float32(a).view(np.int32))

    def _from_bits(i):
        return np.int32(i).view(np.float32)

    def _dp4a(a, b, c):
        """c + the four signed byte products of the 32-bit words a and b."""
        a, b, total = int(a), int(b), int(c)
        for shift in (0, 8, 16, 24):
            x, y = (a >> shift) & 0xFF, (b >> shift) & 0xFF
            total += (x - 256 if x > 127 else x) * (y - 256 if y > 127 else y)
        return np.int32(total)
else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import libdevice
    from numba.cuda.extending import intrinsic, register_jitable

    _jit = cuda.jit
    _device = register_jitable
    _fmul, _fadd, _fsub, _fdiv = libdevice.fmul_rn, libdevice.fadd_rn, libdevice.fsub_rn, libdevice.fdiv_rn
    _fsqrt, _dadd, _dmul, _ddiv = libdevice.fsqrt_rn, libdevice.dadd_rn, libdevice.dmul_rn, libdevice.ddiv_rn
    _rint, _trunc = libdevice.rintf, libdevice.truncf
    _bits, _from_bits = libdevice.float_as_int, libdevice.int_as_float

    @intrinsic
    def _dp4a(typingctx, a, b, c):
        """PTX ``dp4a.s32.s32``: c + the four signed byte products of words a and b."""
        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(32)] * 3)
            asm = ir.InlineAsm(fnty, "dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r")
            return builder.call(asm, [context.cast(builder, v, t, types.int32)
                                      for v, t in zip(args, sig.args)])
        return types.int32(types.uint32, types.uint32, types.int32), codegen

def _rebind(fn, **names):
    """fn's code with some of its global names bound to other objects."""
    return types_module.FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__,
                                     fn.__defaults__, fn.__closure__)


# The quantization parameters of one slice from its amax: the very code the CPU kernels run
# (refquant.kernels.cpu._params), compiled for the GPU with its one multiply rounded explicitly.
_params = _device(_rebind(cpu._params.py_func, _mul=_fmul)) if cuda is not None else None
# Contract rule 12 at every float32 store: the CPU kernels' function, its canonical NaN built
# from the bits by libdevice's int_as_float (a NaN literal could reach PTX as another NaN).
_canonical_nan = (_device(_rebind(canonical_nan_value.py_func, float32_from_bits=_from_bits))
                  if cuda is not None else None)


@_device
def _quantize_value(v, p, divide, half_away, qmin, qmax):
    """clip(round(v / p or v * p), qmin, qmax) as an int32: cpu._quantize_value's operations."""
    y = _fdiv(v, p) if divide else _fmul(v, p)
    if half_away:
        whole = _trunc(y)
        r = whole
        if abs(_fsub(y, whole)) >= F32(0.5):
            r = _fadd(whole, F32(1)) if y > 0 else _fsub(whole, F32(1))
    else:
        r = _rint(y)
    return np.int32(min(max(r, qmin), qmax))


@_device
def _erf_abs64(a, m):
    """fast_erf._erf_abs64, operation for operation, each one rounded on its own."""
    t = _dadd(_dmul(_dmul(a, a), ERF_T_SCALE), -1.0)
    t2 = _dmul(t, t)
    t4 = _dmul(t2, t2)
    t8 = _dmul(t4, t4)
    t16 = _dmul(t8, t8)
    b0 = _dadd(_dadd(m[0], _dmul(m[1], t)), _dmul(_dadd(m[2], _dmul(m[3], t)), t2))
    b1 = _dadd(_dadd(m[4], _dmul(m[5], t)), _dmul(_dadd(m[6], _dmul(m[7], t)), t2))
    b2 = _dadd(_dadd(m[8], _dmul(m[9], t)), _dmul(_dadd(m[10], _dmul(m[11], t)), t2))
    b3 = _dadd(_dadd(m[12], _dmul(m[13], t)), _dmul(_dadd(m[14], _dmul(m[15], t)), t2))
    b4 = _dadd(_dadd(m[16], _dmul(m[17], t)), _dmul(_dadd(m[18], _dmul(m[19], t)), t2))
    b5 = _dadd(_dadd(m[20], _dmul(m[21], t)), _dmul(_dadd(m[22], _dmul(m[23], t)), t2))
    d0 = _dadd(b0, _dmul(b1, t4))
    d1 = _dadd(b2, _dmul(b3, t4))
    d2 = _dadd(b4, _dmul(b5, t4))
    p = _dadd(_dadd(d0, _dmul(d1, t8)), _dmul(_dadd(d2, _dmul(m[24], t8)), t16))
    return _dmul(a, p)


@_device
def _gelu(v, m):
    """(gelu_erf_float32(v), 1 when the host must recompute it with scipy): fast_erf's _erf32
    and _gelu_kernel arithmetic."""
    z = np.float64(_fmul(v, INV_SQRT2))
    a = min(abs(z), Z_MAX)
    r = _erf_abs64(a, m)
    unsure = np.float32(_dmul(r, ERF_LO)) != np.float32(_dmul(r, ERF_HI)) and a < Z_MAX
    e = np.float32(r) if a < Z_MAX else F32(1.0)
    if z != z:
        e = np.float32(z)
    e = -e if z < 0 else (e if z > 0 else np.float32(z))
    return _fmul(_fmul(F32(0.5), v), _fadd(F32(1.0), e)), unsure


@_device
def _widen_nibbles(word):
    """A 32-bit word of 8 int4 values (CudaW4 layout: low nibbles = values 0..3, high nibbles =
    values 4..7) -> two int8x4 words: sign extension by OR-ing 0xF0 into each byte whose bit 3
    is set ((b & 8) * 0x1E = 0xF0 byte by byte: no carry crosses a byte)."""
    lo = word & np.uint32(0x0F0F0F0F)
    hi = (word >> np.uint32(4)) & np.uint32(0x0F0F0F0F)
    lo = lo | ((lo & np.uint32(0x08080808)) * np.uint32(0x1E))
    hi = hi | ((hi & np.uint32(0x08080808)) * np.uint32(0x1E))
    return np.uint32(lo), np.uint32(hi)


# ---------------------------------------------------------------------------------------
# the GEMM kernel
# ---------------------------------------------------------------------------------------
@_jit
def _linear_kernel(a, w8, w4, is_w4, M, N, G, gw, mode, s_a, sa_stride, s_wT, bias, has_bias, qb,
                   qb_rows, gelu, coeffs, out_i, out_f, unsure, err):
    """a uint32 [M, G * gw] (int8x4 words, each group padded to gw words); w8 uint32
    [N, G * gw] or w4 uint32 [N, G * gw / 2] (is_w4); output tile (blockIdx.y, blockIdx.x)."""
    sA = cuda.shared.array((BM, SHARED_W), np.uint32)
    sW = cuda.shared.array((BM, SHARED_W), np.uint32)
    acc = cuda.local.array((TM, TM), np.int32)
    y = cuda.local.array((TM, TM), np.float32)
    av = cuda.local.array(TM, np.uint32)
    wv = cuda.local.array(TM, np.uint32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * TPB + tx
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BM
    for g in range(G):
        for i in range(TM):
            for j in range(TM):
                acc[i, j] = 0
        for kw0 in range(g * gw, (g + 1) * gw, BKW):
            for idx in range(tid, BM * BKW, NT):  # the A tile: BM rows x BKW words
                row = idx // BKW
                c = idx % BKW
                sA[row, c] = a[m0 + row, kw0 + c] if m0 + row < M else np.uint32(0)
            if is_w4:  # BM rows x BKW / 2 packed words, each widened to two words
                for idx in range(tid, BM * (BKW // 2), NT):
                    row = idx // (BKW // 2)
                    c = idx % (BKW // 2)
                    packed = w4[n0 + row, kw0 // 2 + c] if n0 + row < N else np.uint32(0)
                    lo, hi = _widen_nibbles(packed)
                    sW[row, 2 * c] = lo
                    sW[row, 2 * c + 1] = hi
            else:
                for idx in range(tid, BM * BKW, NT):
                    row = idx // BKW
                    c = idx % BKW
                    sW[row, c] = w8[n0 + row, kw0 + c] if n0 + row < N else np.uint32(0)
            cuda.syncthreads()
            for kk in range(BKW):
                for i in range(TM):  # this thread's 4 A words and 4 W words, into registers
                    av[i] = sA[ty + TPB * i, kk]
                    wv[i] = sW[tx + TPB * i, kk]
                for i in range(TM):
                    for j in range(TM):
                        acc[i, j] = _dp4a(av[i], wv[j], acc[i, j])
            cuda.syncthreads()
        if mode == OUT_FLOAT:  # p_g = float32(acc_g) * (s_a[m] * s_w[n, g]); y = ((p_0 + p_1) + ...)
            for i in range(TM):
                m = min(m0 + ty + TPB * i, M - 1)
                for j in range(TM):
                    n = min(n0 + tx + TPB * j, N - 1)
                    p = _fmul(np.float32(acc[i, j]), _fmul(s_a[m * sa_stride], s_wT[g, n]))
                    y[i, j] = p if g == 0 else _fadd(y[i, j], p)
    for i in range(TM):
        m = m0 + ty + TPB * i
        if m >= M:
            continue
        for j in range(TM):
            n = n0 + tx + TPB * j
            if n >= N:
                continue
            if mode == OUT_INT:
                out_i[m, n] = acc[i, j]
            elif mode == OUT_INT_BIAS:
                total = np.int64(acc[i, j]) + np.int64(qb[m * qb_rows, n])
                if total < -2147483648 or total > 2147483647:
                    err[0] = 1
                    total = 0
                out_f[m, n] = _canonical_nan(_fmul(np.float32(np.int32(total)),
                                                   _fmul(s_a[m * sa_stride], s_wT[0, n])))
            else:
                v = _fadd(y[i, j], bias[n]) if has_bias else y[i, j]
                if gelu:
                    out, flag = _gelu(v, coeffs)
                    if flag:
                        unsure[m, n] = 1
                        out = v  # the host recomputes gelu(v) with scipy
                    out_f[m, n] = _canonical_nan(out)
                else:
                    out_f[m, n] = _canonical_nan(v)


# ---------------------------------------------------------------------------------------
# the row kernel: (LayerNorm ->) amax -> parameters -> quantize
# ---------------------------------------------------------------------------------------
@_device
def _layer_norm_stats(x, r, c, eps):
    """fused.layer_norm_row_stats in THE order: s = sum x left to right in float64, mean =
    float32(s / C); v = sum float64(x - mean)^2 left to right; rstd = float32(1 / sqrt(
    float32(v / C) + eps)) with a float32 add and a float32 square root."""
    s = 0.0
    for j in range(c):
        s = _dadd(s, np.float64(x[r, j]))
    mean = np.float32(_ddiv(s, np.float64(c)))
    v = 0.0
    for j in range(c):
        d = np.float64(_fsub(x[r, j], mean))
        v = _dadd(v, _dmul(d, d))
    return mean, _fdiv(F32(1.0), _fsqrt(_fadd(np.float32(_ddiv(v, np.float64(c))), eps)))


@_jit
def _rows_kernel(x, ln, gamma, beta, eps, y, dynamic, check, do_quant, fp, ip, param, pstride, step,
                 amax_out, q, gs, gsp, bad):
    """Row r = blockIdx.x of float32 x [M, K]. ln: y = LayerNorm(x) (then y is the source);
    dynamic / check: amax (and its finiteness) by a max over the int32 bits of |x| (order-free);
    dynamic and do_quant: param[r], step[r] from cpu._params; do_quant: int8 codes into
    q [M, G * gsp], value k at (k // gs) * gsp + k % gs, zeros in the padding."""
    red = cuda.shared.array(ROW_THREADS, np.int32)
    stats = cuda.shared.array(2, np.float32)
    flag = cuda.shared.array(1, np.int32)
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    K = x.shape[1]
    if ln:
        if t == 0:
            mean, rstd = _layer_norm_stats(x, r, K, eps)
            stats[0] = mean
            stats[1] = rstd
        cuda.syncthreads()
        mean = stats[0]
        rstd = stats[1]
        for k in range(t, K, ROW_THREADS):
            h = _fmul(_fsub(x[r, k], mean), rstd)
            y[r, k] = _canonical_nan(_fadd(_fmul(h, gamma[k]), beta[k]))
        cuda.syncthreads()
    src = y if ln else x
    if t == 0:
        flag[0] = 0
    if dynamic or check:
        mx = 0
        for k in range(t, K, ROW_THREADS):
            mx = max(mx, _bits(src[r, k]) & 0x7FFFFFFF)
        red[t] = mx
        cuda.syncthreads()
        width = ROW_THREADS // 2
        while width > 0:
            if t < width:
                red[t] = max(red[t], red[t + width])
            cuda.syncthreads()
            width //= 2
        if t == 0:
            if red[0] >= 0x7F800000:  # NaN / Inf: the host raises NonFiniteError
                bad[r] = 1
                flag[0] = 1
            if dynamic:
                amax = _from_bits(np.int32(red[0]))
                amax_out[r] = amax
                if do_quant and flag[0] == 0:
                    p, s = _params(amax, fp, ip)
                    param[r] = p
                    step[r] = s
    cuda.syncthreads()
    if do_quant and flag[0] == 0:
        ncols = q.shape[1]
        for idx in range(t, ncols, ROW_THREADS):  # zero the padding
            g = idx // gsp
            j = idx - g * gsp
            if j >= gs or g * gs + j >= K:
                q[r, idx] = 0
        p = param[r * pstride]
        divide = ip[2] == 0
        half_away = ip[3] == 1
        qmin = np.float32(ip[4])
        qmax = np.float32(ip[5])
        for k in range(t, K, ROW_THREADS):
            g = k // gs
            q[r, g * gsp + (k - g * gs)] = _quantize_value(src[r, k], p, divide, half_away, qmin, qmax)


# ---------------------------------------------------------------------------------------
# device-resident weights
# ---------------------------------------------------------------------------------------
def _padded(k: int) -> int:
    return -(-k // KSTEP) * KSTEP


@dataclass(frozen=True, eq=False)
class CudaWeight:
    """int8 weights [N, K] on the device as uint32 int8x4 words [N, Kp / 4], K padded with
    zeros to Kp, a multiple of 32 (build once with ``prepack``)."""
    words: object
    N: int
    K: int

    def unpack(self) -> np.ndarray:
        """The int8 [N, K] weights, byte for byte."""
        return self.words.copy_to_host().view(np.int8)[:, :self.K].copy()

    def nbytes(self) -> int:
        return int(self.words.size) * 4


@dataclass(frozen=True, eq=False)
class CudaW4:
    """int4 weights on the device, 4 bits each: uint32 [N, G * gsp / 8]. Group g (gsp values,
    the group padded to a multiple of 32 with zeros; one group of K for output-row scales)
    holds value k of the group at word k // 8, low nibble of byte k % 8 for k % 8 < 4, high
    nibble of byte k % 8 - 4 otherwise."""
    words: object
    N: int
    K: int
    group_size: int | None
    G: int
    gsp: int

    def values(self) -> np.ndarray:
        """The int4 values as int8 [N, K], byte for byte."""
        w = self.words.copy_to_host().view(np.uint8).reshape(self.N, -1, 4)
        nib = np.concatenate([w & 0xF, w >> 4], axis=2).reshape(self.N, -1).astype(np.int16)
        vals = np.where(nib >= 8, nib - 16, nib).astype(np.int8)
        gs = self.K if self.group_size is None else self.group_size
        return _ungroup(vals, self.K, gs, self.gsp)

    def nbytes(self) -> int:
        return int(self.words.size) * 4


def _group_layout(v: np.ndarray, K: int, gs: int, gsp: int) -> np.ndarray:
    """[R, K] -> [R, G * gsp]: group g's values at g * gsp .. g * gsp + len - 1, zeros after."""
    G = -(-K // gs) if K else 0
    out = np.zeros((v.shape[0], G * gsp), v.dtype)
    for g in range(G):
        k0, k1 = g * gs, min(K, (g + 1) * gs)
        out[:, g * gsp:g * gsp + k1 - k0] = v[:, k0:k1]
    return out


def _ungroup(v: np.ndarray, K: int, gs: int, gsp: int) -> np.ndarray:
    out = np.empty((v.shape[0], K), v.dtype)
    for g in range(-(-K // gs) if K else 0):
        k0, k1 = g * gs, min(K, (g + 1) * gs)
        out[:, k0:k1] = v[:, g * gsp:g * gsp + k1 - k0]
    return out


def _to_device(arr):
    return cuda.to_device(np.ascontiguousarray(arr))


def prepack(w) -> CudaWeight:
    """int8 [N, K] -> CudaWeight on the device."""
    _require()
    ref.check_int_matrix(w, np.int8, "prepack: w")
    N, K = w.shape
    padded = np.zeros((N, max(_padded(K), KSTEP)), np.int8)
    padded[:, :K] = w
    return CudaWeight(_to_device(padded.view(np.uint32)), N, K)


def prepack_w4(w_packed, K, group_size=None) -> CudaW4:
    """pack_w4's uint8 [N, ceil(K/2)] -> CudaW4 (group_size: input-dimension groups, or None
    for output-row scales)."""
    _require()
    K = ref.check_packed_w4(w_packed, K, "prepack_w4")
    if group_size is None:
        gs, G = max(K, 1), 1
    else:
        G = ref.group_count(K, group_size, "prepack_w4")
        gs = int(group_size)
    gsp = max(_padded(gs), KSTEP)
    vals = _group_layout(unpack_w4(w_packed, K), K, gs, gsp) if K else \
        np.zeros((w_packed.shape[0], gsp), np.int8)
    N = vals.shape[0]
    nib = (vals.reshape(N, -1, 2, 4).astype(np.uint8) & 0xF)     # [N, words, lo/hi, byte]
    words = (nib[:, :, 0, :] | (nib[:, :, 1, :] << 4)).astype(np.uint8)
    return CudaW4(_to_device(np.ascontiguousarray(words).reshape(N, -1).view(np.uint32)), N, K,
                  group_size, G if K else 1, gsp)


# ---------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------
_DUMMIES: dict = {}


def _dummy(dtype, ndim):
    key = (np.dtype(dtype).str, ndim)
    if key not in _DUMMIES:
        _DUMMIES[key] = cuda.to_device(np.zeros((1,) * ndim, dtype))
    return _DUMMIES[key]


_COEFFS: list = []


def _coeffs():
    if not _COEFFS:
        _COEFFS.append(cuda.to_device(COEFFS))
    return _COEFFS[0]


class LinearLaunch:
    """One _linear_kernel launch with every argument already on the device: ``launch()`` runs
    the kernel alone (what validation/gpu_check.py times), ``result()`` copies the output back
    and finishes it (GELU's flagged elements; int32-bias overflow -> None)."""

    def __init__(self, a_words, M, N, G, gw, weight, mode, s_a=None, s_w=None, bias=None,
                 activation=None, q_bias=None):
        is_w4 = isinstance(weight, CudaW4)
        self.mode, self.gelu = mode, activation == "gelu_erf"
        self.out_i = cuda.device_array((M, N), np.int32) if mode == OUT_INT else _dummy(np.int32, 2)
        self.out_f = cuda.device_array((M, N), F32) if mode != OUT_INT else _dummy(F32, 2)
        self.unsure = cuda.to_device(np.zeros((M, N), np.uint8)) if self.gelu else _dummy(np.uint8, 2)
        self.err = cuda.to_device(np.zeros(1, np.int32))
        if mode == OUT_INT:
            sa, sa_stride, swT, b, has_b = _dummy(F32, 1), 0, _dummy(F32, 2), _dummy(F32, 1), 0
        else:
            sa_host, sa_stride = cpu._scales(s_a, M)
            sa = _to_device(sa_host)
            swT = _to_device(np.asarray(s_w, F32).reshape(N, -1).T)
            b, has_b = (_to_device(bias), 1) if bias is not None else (_dummy(F32, 1), 0)
        if mode == OUT_INT_BIAS:
            qb, qb_rows = (_to_device(q_bias.reshape(1, N)), 0) if q_bias.ndim == 1 else (_to_device(q_bias), 1)
        else:
            qb, qb_rows = _dummy(np.int32, 2), 0
        w8 = _dummy(np.uint32, 2) if is_w4 else weight.words
        w4 = weight.words if is_w4 else _dummy(np.uint32, 2)
        self.grid = (-(-N // BM), -(-M // BM))
        self.args = (a_words, w8, w4, is_w4, M, N, G, gw, mode, sa, sa_stride, swT, b, has_b, qb, qb_rows,
                     self.gelu, _coeffs(), self.out_i, self.out_f, self.unsure, self.err)

    def launch(self):
        _linear_kernel[self.grid, (TPB, TPB)](*self.args)

    def result(self):
        if self.mode == OUT_INT:
            return self.out_i.copy_to_host()
        y = self.out_f.copy_to_host()
        if self.mode == OUT_INT_BIAS and self.err.copy_to_host()[0]:
            return None
        if self.gelu:
            flags = self.unsure.copy_to_host()
            if flags.any():  # fast_erf.gelu_erf_float32's own fallback: scipy on the flagged elements
                idx = np.nonzero(flags)
                y[idx] = ref.gelu_erf_float32(y[idx])
        return y


def _launch_linear(*args, **kwargs):
    """Run _linear_kernel (LinearLaunch's arguments); the host result."""
    run = LinearLaunch(*args, **kwargs)
    run.launch()
    return run.result()


def _words(a_q: np.ndarray, K: int, gs: int, gsp: int):
    """int8 [M, K] -> uint32 words [M, G * gsp / 4] on the device (groups padded)."""
    return _to_device(_group_layout(a_q, K, gs, gsp).view(np.uint32))


def _as_weight(w, what):
    """(CudaWeight, (N, K)) for an int8 array or a CudaWeight."""
    if isinstance(w, CudaWeight):
        return w, (w.N, w.K)
    ref.check_int_matrix(w, np.int8, f"{what}: w")
    return prepack(w), w.shape


def _gemm(what, a, w, mode, s_a=None, s_w=None, bias=None, activation=None, q_bias=None):
    _require()
    weight, (N, K) = _as_weight(w, what)
    ref.check_int_matrix(a, np.int8, f"{what}: a")
    if a.shape[1] != K:
        raise ShapeError(f"{what}: a is [M, K] = {list(a.shape)} and w is [N, K] = {[N, K]}: K differs")
    M = a.shape[0]
    ref.check_k(M, K, N, I8_MAX_K, what)
    if mode != OUT_INT:
        s_a, s_w, bias = ref.check_epilogue(M, N, s_a, s_w, bias, activation, what)
    if mode == OUT_INT_BIAS:
        q_bias = ref.check_q_bias(q_bias, M, N, what)
    if M == 0 or N == 0 or K == 0:  # nothing to multiply: the reference's own arithmetic
        w_host = weight.unpack()
        if mode == OUT_INT:
            return ref.gemm_i8(a, w_host)
        if mode == OUT_INT_BIAS:
            return ref.linear_i8_int32_bias(a, s_a, w_host, s_w, q_bias)
        return ref.linear_i8(a, s_a, w_host, s_w, bias, activation)
    gsp = weight.words.shape[1] * 4
    y = _launch_linear(_words(a, K, max(K, 1), gsp), M, N, 1, gsp // 4, weight, mode, s_a, s_w, bias,
                       activation, q_bias)
    if y is None:
        total = ref.gemm_i8(a, weight.unpack()).astype(np.int64) + q_bias.astype(np.int64)
        raise OutOfRangeError(ref._bias_overflow_message(np.broadcast_to(total, (M, N)), what))
    return y


def gemm_i8(a, w) -> np.ndarray:
    """reference.gemm_i8 (int32 [M, N] = a @ w.T, exact); w int8 [N, K] or a CudaWeight."""
    return _gemm("gemm_i8", a, w, OUT_INT)


def linear_i8(a, s_a, w, s_w, bias=None, activation=None) -> np.ndarray:
    """reference.linear_i8, the epilogue (and GELU) in the GEMM kernel; w int8 [N, K] or a
    CudaWeight."""
    return _gemm("linear_i8", a, w, OUT_FLOAT, s_a, s_w, bias, activation)


def linear_i8_int32_bias(a, s_a, w, s_w, q_bias) -> np.ndarray:
    """reference.linear_i8_int32_bias (OutOfRangeError when acc + q_bias leaves int32)."""
    return _gemm("linear_i8_int32_bias", a, w, OUT_INT_BIAS, s_a, s_w, q_bias=q_bias)


def _w4(what, a, s_a, w_packed, K, s_w, group_size, bias, activation):
    _require()
    M, K, N, _, s_a, s_w, bias = ref.check_w4a8_call(what, a, s_a, w_packed, K, s_w, group_size, bias,
                                                     activation)
    if M == 0 or N == 0 or K == 0:  # nothing to multiply: the reference's own arithmetic
        packed = pack_w4(w_packed.values()) if isinstance(w_packed, CudaW4) else w_packed
        if group_size is None:
            return ref.linear_w4a8_rows(a, s_a, packed, K, s_w, bias, activation)
        return ref.linear_w4a8_groups(a, s_a, packed, K, s_w, group_size, bias, activation)
    weight = w_packed if isinstance(w_packed, CudaW4) else prepack_w4(w_packed, K, group_size)
    gs = K if group_size is None else int(group_size)
    return _launch_linear(_words(a, K, gs, weight.gsp), M, N, weight.G, weight.gsp // 4, weight,
                          OUT_FLOAT, s_a, s_w, bias, activation)


def linear_w4a8_rows(a, s_a, w_packed, K, s_w_rows, bias=None, activation=None):
    """reference.linear_w4a8_rows; w_packed is pack_w4's uint8 [N, ceil(K/2)] or a CudaW4 from
    prepack_w4(w_packed, K)."""
    return _w4("linear_w4a8_rows", a, s_a, w_packed, K, s_w_rows, None, bias, activation)


def linear_w4a8_groups(a, s_a, w_packed, K, s_w_groups, group_size, bias=None, activation=None):
    """reference.linear_w4a8_groups; w_packed is pack_w4's uint8 [N, ceil(K/2)] or a CudaW4 from
    prepack_w4(w_packed, K, group_size)."""
    return _w4("linear_w4a8_groups", a, s_a, w_packed, K, s_w_groups, group_size, bias, activation)


# ---------------------------------------------------------------------------------------
# quantizing activations
# ---------------------------------------------------------------------------------------
class _Rows:
    """One _rows_kernel launch over float32 rows x2 [M, K] (device arrays kept for the GEMM)."""

    def __init__(self, x2, spec_or_params, dynamic, check, gs=None, gsp=None, ln=None):
        M, K = x2.shape
        self.M, self.K = M, K
        self.gs = gs if gs is not None else max(K, 1)
        self.gsp = gsp if gsp is not None else max(K, 1)
        ncols = (-(-K // self.gs) if K else 0) * self.gsp if K else 0
        self.x = _to_device(x2)
        self.q = cuda.device_array((M, max(ncols, 1)), np.int8)
        self.bad = cuda.to_device(np.zeros(M, np.uint8))
        self.amax = cuda.device_array(M, F32)
        self.dynamic, self.check = dynamic, check
        self.fp, self.ip, self.param, self.pstride = spec_or_params
        self.y = cuda.device_array((M, K), F32) if ln is not None else _dummy(F32, 2)
        self.ln = ln
        self.step = cuda.device_array(M, F32)

    def run(self, do_quant):
        ln = self.ln
        gamma, beta, eps = (ln if ln is not None else (_dummy(F32, 1), _dummy(F32, 1), F32(0)))
        if self.M:
            _rows_kernel[self.M, ROW_THREADS](self.x, ln is not None, gamma, beta, eps, self.y,
                                              self.dynamic, self.check, do_quant, self.fp, self.ip,
                                              self.param, self.pstride, self.step, self.amax, self.q,
                                              self.gs, self.gsp, self.bad)

    def raise_nonfinite(self, src_host, name):
        bad = self.bad.copy_to_host()
        if bad.any():
            cpu._raise_nonfinite(src_host, bad, name)

    def codes(self) -> np.ndarray:
        """The int8 [M, K] codes on the host."""
        q = self.q.copy_to_host()
        return _ungroup(q, self.K, self.gs, self.gsp) if self.K else np.zeros((self.M, 0), np.int8)


def _given(param, mode, qmin, qmax, rounding, M):
    """(fp, ip, device param, stride) for given per-row / per-tensor params."""
    p, stride = cpu._scales(param, M)
    return (_to_device(cpu._NO_FP), _to_device(cpu._int_params(mode, rounding, qmin, qmax)),
            _to_device(p), stride)


def _dynamic(spec, M):
    fp, ip = cpu._spec_params(spec)
    return _to_device(fp), _to_device(ip), cuda.device_array(max(M, 1), F32), 1


def _quantize_rows_dynamic(x2, spec, name, gs=None, gsp=None, ln=None):
    """Per-token: one launch. Per-tensor: amax launch, cpu._params on the host (the same
    function), quantize launch. -> (_Rows with codes on the device, s_a host)."""
    token = spec.granularity == "token"
    fp, ip, param, pstride = _dynamic(spec, x2.shape[0])
    rows = _Rows(x2, (fp, ip, param, pstride), True, False, gs, gsp, ln)
    rows.run(do_quant=token)
    src_host = None
    if rows.bad.copy_to_host().any():
        src_host = rows.y.copy_to_host() if ln is not None else x2
        rows.raise_nonfinite(src_host, name)
    if token:
        return rows, rows.step.copy_to_host()[:rows.M]
    amax = rows.amax.copy_to_host()
    hfp, hip = cpu._spec_params(spec)
    p, s = cpu._params(F32(amax.max()) if rows.M else F32(0), hfp, hip)
    rows.param, rows.pstride = _to_device(np.array([p], F32)), 0
    rows.dynamic, rows.check = False, False
    if ln is not None:  # the second pass quantizes the LayerNorm output (rows.y stays it)
        rows.x, rows.ln = rows.y, None
    rows.run(do_quant=True)
    return rows, np.array(s, F32)


def quantize_rows(x, param, mode, qmin, qmax, rounding="half_even") -> np.ndarray:
    """reference.quantize_rows, one block per row."""
    _require()
    x = ref.check_rows(x, "quantize_rows: x")
    param = ref.check_row_param(param, x.shape[0], mode, qmin, qmax, rounding, "quantize_rows")
    x2 = np.ascontiguousarray(x)
    rows = _Rows(x2, _given(param, mode, int(qmin), int(qmax), rounding, x2.shape[0]), False, True)
    rows.run(do_quant=True)
    rows.raise_nonfinite(x2, "quantize_rows: x")
    return rows.codes()


def quantize_activation(x, qp: QParams):
    """reference.quantize_activation: (q, s_a), q = refquant.quant.quantize(x, qp) bit for bit."""
    _require()
    mode, param, rounding = ref.activation_params(qp)
    x2 = ref.as_rows(x, qp, "quantize_activation")
    spec = qp.spec
    p = param.reshape(-1) if spec.granularity == "token" else param.reshape(())
    rows = _Rows(x2, _given(p, mode, spec.qmin, spec.qmax, rounding, x2.shape[0]), False, True)
    rows.run(do_quant=True)
    rows.raise_nonfinite(x2, "quantize_activation: x")
    return rows.codes().reshape(x.shape), dequant_step(qp)


def _float_rows(x, what):
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise DTypeError(f"{what}: expected a float array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 1:
        raise ShapeError(f"{what}: expected at least 1 dimension")
    return np.ascontiguousarray(x.astype(F32, copy=False).reshape(ref.rows_of(x.shape), x.shape[-1]))


def quantize_dynamic(x, spec: QuantSpec):
    """reference.quantize_dynamic: per token in one launch, per tensor in two."""
    _require()
    ref.check_activation_spec(spec, "quantize_dynamic")
    x2 = _float_rows(x, "quantize_dynamic")
    rows, s = _quantize_rows_dynamic(x2, spec, "quantize_dynamic: x")
    q = rows.codes()
    return q.reshape(x.shape), (s.reshape(x.shape[:-1]) if spec.granularity == "token" else s)


def layer_norm_quantize_per_token(x, gamma, beta, eps, spec: QuantSpec):
    """reference.layer_norm_quantize_per_token: (y, q, s_a), LayerNorm, amax and quantization of
    a row in one block (per-tensor specs: a second launch)."""
    _require()
    ref.check_activation_spec(spec, "layer_norm_quantize_per_token")
    ref.check_layer_norm_args(x, gamma, beta, "layer_norm_quantize_per_token")
    x2 = np.ascontiguousarray(x.reshape(ref.rows_of(x.shape), x.shape[-1]))
    ln = (_to_device(gamma), _to_device(beta), F32(eps))
    rows, s = _quantize_rows_dynamic(x2, spec, "quantize_dynamic: x", ln=ln)
    y = rows.y.copy_to_host()
    s = s.reshape(x.shape[:-1]) if spec.granularity == "token" else s
    return y.reshape(x.shape), rows.codes().reshape(x.shape), s


def quantize_linear_i8(x, quant, w, s_w, bias=None, activation=None) -> np.ndarray:
    """reference.quantize_linear_i8: the row kernel writes the int8 codes straight into the
    GEMM's word layout on the device (they never come back to the host)."""
    _require()
    what = "quantize_linear_i8"
    weight, (N, K_w) = _as_weight(w, what)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise DTypeError(f"{what}: x must be a float32 array [M, K], got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    M, K = x.shape
    if K_w != K:
        raise ShapeError(f"{what}: x is [M, K] = {list(x.shape)} and w is [N, K] = {[N, K_w]}: K differs")
    ref.check_k(M, K, N, I8_MAX_K, what)
    if M == 0 or N == 0 or K == 0:
        q, s_a = quantize_dynamic(x, quant) if isinstance(quant, QuantSpec) else quantize_activation(x, quant)
        return ref.linear_i8(q, s_a, weight.unpack(), s_w, bias, activation)
    x2 = np.ascontiguousarray(x)
    gsp = weight.words.shape[1] * 4
    if isinstance(quant, QuantSpec):
        ref.check_activation_spec(quant, what)
        rows, s_a = _quantize_rows_dynamic(x2, quant, f"{what}: x", K, gsp)
        if quant.granularity != "token":
            s_a = np.float32(s_a)
    else:
        mode, param, rounding = ref.activation_params(quant, what)
        ref.as_rows(x2, quant, what)
        step = dequant_step(quant)
        s_a = step.reshape(-1) if step.ndim else step
        p = param.reshape(-1) if param.ndim else param
        rows = _Rows(x2, _given(p, mode, quant.spec.qmin, quant.spec.qmax, rounding, M), False, True, K, gsp)
        rows.run(do_quant=True)
        rows.raise_nonfinite(x2, f"{what}: x")
    s_a, s_w, bias = ref.check_epilogue(M, N, s_a, s_w, bias, activation, what)
    return _launch_linear(rows.q.view(np.uint32), M, N, 1, gsp // 4, weight, OUT_FLOAT, s_a, s_w, bias,
                          activation)


# ---------------------------------------------------------------------------------------
# PTX, for inspection (no GPU needed: only NVVM)
# ---------------------------------------------------------------------------------------
def _signatures():
    from numba import types as t
    u32, f32, i32 = t.Array(t.uint32, 2, "C"), t.Array(t.float32, 1, "C"), t.Array(t.int32, 2, "C")
    linear = (u32, u32, u32, t.boolean, t.int64, t.int64, t.int64, t.int64, t.int64, f32, t.int64,
              t.Array(t.float32, 2, "C"), f32, t.int64, i32, t.int64, t.boolean, t.Array(t.float64, 1, "C"),
              i32, t.Array(t.float32, 2, "C"), t.Array(t.uint8, 2, "C"), t.Array(t.int32, 1, "C"))
    f2 = t.Array(t.float32, 2, "C")
    rows = (f2, t.boolean, f32, f32, t.float32, f2, t.boolean, t.boolean, t.boolean, f32,
            t.Array(t.int64, 1, "C"), f32, t.int64, f32, f32, t.Array(t.int8, 2, "C"), t.int64, t.int64,
            t.Array(t.uint8, 1, "C"))
    return {"_linear_kernel": (_linear_kernel, linear), "_rows_kernel": (_rows_kernel, rows)}


_PTX_OP = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][a-z0-9_.]*)", re.M)


def ptx_ops(ptx: str) -> Counter:
    """{instruction: count} of a PTX text (guards stripped)."""
    return Counter(_PTX_OP.findall(ptx))


def contract_violations(ptx: str) -> Counter:
    """The float instructions the numeric contract forbids in a kernel's PTX: fused or
    contractible arithmetic (fma / mad, and add / sub / mul without an explicit rounding
    modifier, which ptxas may fuse into an FMA), flush-to-zero and approximate operations."""
    def forbidden(op):
        floating = ".f32" in op or ".f64" in op or ".f16" in op
        bare = op.split(".")[0] in ("add", "sub", "mul") and not {"rn", "rz", "rm", "rp"} & set(op.split("."))
        return floating and (op.startswith(("fma", "mad")) or bare or ".ftz" in op or ".approx" in op)
    return Counter({op: n for op, n in ptx_ops(ptx).items() if forbidden(op)})


_PTX_F32_IMMEDIATE = re.compile(r"\b0[fF]([0-9A-Fa-f]{8})\b")


def ptx_nan_immediates(ptx: str) -> Counter:
    """{immediate: count} of the float32 NaN constants in a PTX text (``0f7FC00000`` is the
    canonical NaN of contract rule 12; any other would be written by some store)."""
    bits = (int(h, 16) for h in _PTX_F32_IMMEDIATE.findall(ptx))
    return Counter(f"0f{b:08X}" for b in bits if b & 0x7F800000 == 0x7F800000 and b & 0x7FFFFF)


def kernel_ptx(cc=(9, 0)) -> dict:
    """{kernel name: PTX text} for compute capability ``cc``, compiled by NVVM exactly as a
    launch compiles them (the argument types the launchers pass). Needs numba-cuda and NVVM
    (pip install 'refquant[cuda]'), not a GPU; not available under the simulator."""
    if cuda is None or SIMULATED:
        raise ConfigError("kernel_ptx: needs numba-cuda's real CUDA target (not the simulator)")
    import contextlib
    import types as pytypes

    import numba.cuda.dispatcher as dispatcher
    patch = contextlib.nullcontext()
    if _UNAVAILABLE is not None:
        # numba-cuda asks the current device for its compute capability when it compiles a
        # device function, even under compile_ptx(cc=...); without a GPU, answer with cc.
        @contextlib.contextmanager
        def patch_device():
            saved = dispatcher.get_current_device
            dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=tuple(cc))
            try:
                yield
            finally:
                dispatcher.get_current_device = saved
        patch = patch_device()
    out = {}
    with patch:
        for name, (kernel, sig) in _signatures().items():
            from numba import types as t
            out[name] = cuda.compile_ptx(kernel.py_func, t.void(*sig), cc=tuple(cc))[0]
    return out
