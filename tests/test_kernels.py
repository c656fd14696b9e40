"""refquant.kernels: the Numba kernels (every path) against the NumPy reference, byte for byte,
and the reference against its own definitions (int64 matmul, refquant.quant, layer_norm_rows).

Float32 results are compared as bit patterns (np.array_equal on uint32 views), integers
exactly. Inputs are drawn by hypothesis as (seed, style) pairs and built with NumPy, so that
shapes can reach the kernels' tile edges (M = 1, 8, 32; K, N not multiples of 4 / 16 / 64)
without slow element-wise generation.
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refquant as rq
from refquant._numba import numba
from refquant.errors import ConfigError, DTypeError, NonFiniteError, OutOfRangeError, ShapeError
from refquant.floats import canonical_nan
from refquant.kernels import cpu, reference as ref
from refquant.nn.fast_erf import gelu_erf_float32
from refquant.nn.fused import layer_norm_rows
from refquant.testing import INT8_STYLES, int8_matrix

F32 = np.float32
FAST_PATHS = [p for p, ok in (("amx", cpu.HAVE_AMX), ("vnni", cpu.HAVE_VNNI)) if ok]
ALL_PATHS = FAST_PATHS + ["portable"]
# REFQUANT_KERNEL_EXAMPLES=2000 for a long run; 50 keeps the file at a few seconds warm
EXAMPLES = dict(max_examples=int(os.environ.get("REFQUANT_KERNEL_EXAMPLES", 50)), deadline=None)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf * 0 etc. in huge-scale cases

TOKEN = rq.dialect("deepspeed", granularity="token", dynamic=True)       # ZeroQuant activations
Q8BERT = rq.dialect("q8bert", dynamic=True)                              # per tensor, multiplier
MODELOPT = rq.dialect("modelopt", narrow=True)                           # static, given amax


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype == F32 and a.shape == b.shape and np.array_equal(a.view(np.uint32),
                                                                             b.view(np.uint32))


def scales(rng, n, style):
    """float32 scales: ordinary, tiny (products underflow to subnormals / zero), subnormal
    themselves, huge (products overflow to inf, and 0 * inf = NaN where acc = 0), powers of
    two, or a mixture."""
    if style == "tiny":
        v = rng.uniform(1, 2, n) * 2.0 ** rng.integers(-80, -60, n)
    elif style == "subnormal":
        v = rng.uniform(1, 2, n) * 2.0 ** rng.integers(-149, -127, n)
    elif style == "huge":
        v = rng.uniform(1, 2, n) * 2.0 ** rng.integers(55, 70, n)
    elif style == "pow2":
        v = 2.0 ** rng.integers(-20, 5, n)
    elif style == "mixed":
        v = rng.uniform(1, 2, n) * 2.0 ** rng.integers(-75, 70, n)
    else:
        v = rng.uniform(1e-4, 1e-1, n)
    return v.astype(F32)


shapes = st.tuples(st.sampled_from([1, 2, 3, 5, 8, 9, 17, 31, 32, 33, 40, 65, 70, 100]),  # M
                   st.sampled_from([1, 2, 3, 4, 5, 15, 63, 64, 65, 100, 130]),         # K
                   st.sampled_from([1, 3, 15, 16, 17, 31, 33, 47, 48, 49, 64, 70, 97]))  # N
seeds = st.integers(0, 2 ** 32 - 1)
int_styles = st.sampled_from(INT8_STYLES)
scale_styles = st.sampled_from(["normal", "tiny", "subnormal", "huge", "pow2", "mixed"])
bias_styles = st.sampled_from([None, "normal", "nonfinite"])

CANONICAL_NAN_BITS = 0x7FC00000
# NaNs that inputs and hardware hand a kernel: x86's default NaN (negative), a signaling NaN,
# a negative NaN with a payload, NVIDIA's default NaN
ODD_NANS = np.array([0xFFC00000, 0x7F800001, 0xFFC01234, 0x7FFFFFFF], np.uint32).view(F32)


def bias_vector(rng, n, style):
    """float32 [N] biases ("normal": six decades of magnitude), or None for style None / False.
    "nonfinite": about a third of them +-inf, NaNs of ODD_NANS or subnormals, so that an infinite
    product plus an infinite bias of the other sign makes inf - inf, and NaN biases carry their
    sign and payload into the epilogue."""
    if style is None or style is False:
        return None
    b = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(F32)
    if style == "nonfinite":
        odd = np.concatenate([np.array([np.inf, -np.inf, 1e-45, -3e-39], F32), ODD_NANS])
        pick = rng.random(n) < 0.35
        b[pick] = rng.choice(odd, int(pick.sum()))
    return b


def nan_bits_are_canonical(y) -> bool:
    """Every NaN of y has the bits 0x7FC00000 (numeric contract rule 12)."""
    y = np.asarray(y)
    return bool(np.all(y.view(np.uint32)[np.isnan(y)] == CANONICAL_NAN_BITS))


# ---------------------------------------------------------------------------------------
# drawn problems (tests/test_cuda.py builds the same cases for the CUDA kernels)
# ---------------------------------------------------------------------------------------
def linear_problem(shape, seed, style, sa_style, sw_style, per_token, bias, gelu):
    """(a, s_a, w, s_w, bias, activation) of one linear_i8 case; bias True (= "normal"), False,
    or a bias_vector style."""
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a, w = int8_matrix(rng, (M, K), style), int8_matrix(rng, (N, K), style)
    s_a = scales(rng, M, sa_style) if per_token else scales(rng, 1, sa_style)[0]
    s_w = scales(rng, N, sw_style)
    b = bias_vector(rng, N, "normal" if bias is True else bias)
    return a, s_a, w, s_w, b, ("gelu_erf" if gelu else None)


def int32_bias_problem(shape, seed, style, per_row, per_token, sa_style="normal", sw_style="mixed"):
    """(a, s_a, w, s_w, q_bias) of one linear_i8_int32_bias case (huge scales: s_a * s_w
    overflows, so acc + q_bias = 0 makes 0 * inf; per row, some q_bias cancel acc exactly)."""
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a, w = int8_matrix(rng, (M, K), style), int8_matrix(rng, (N, K), style)
    q_bias = rng.integers(-2 ** 24, 2 ** 24, (M, N) if per_row else N).astype(np.int32)
    if per_row:
        cancel = rng.random((M, N)) < 0.2
        q_bias[cancel] = -(a.astype(np.int64) @ w.astype(np.int64).T)[cancel]
    if per_token:
        s_a = scales(rng, M, sa_style)
    else:
        s_a = F32(0.02) if sa_style == "normal" else scales(rng, 1, sa_style)[0]
    s_w = scales(rng, N, sw_style)
    return a, s_a, w, s_w, q_bias


def w4_problem(shape, seed, style, extremes4, gelu, bias, per_token, group, sw_style="mixed"):
    """(a, s_a, w4 values, pack_w4 bytes, s_w ([N], or [N, G] with groups), bias, activation);
    bias True / False or a bias_vector style."""
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a = int8_matrix(rng, (M, K), style)
    w4 = (rng.choice(np.array([-8, 7], np.int8), (N, K)) if extremes4
          else rng.integers(-8, 8, (N, K), dtype=np.int8))
    s_a = scales(rng, M, "mixed") if per_token else F32(0.5)
    b = rng.standard_normal(N).astype(F32) if bias is True else bias_vector(rng, N, bias)
    if group is None:
        s_w = scales(rng, N, sw_style)
    else:
        G = -(-K // group)
        s_w = scales(rng, N * G, sw_style).reshape(N, G)
    return a, s_a, w4, ref.pack_w4(w4), s_w, b, ("gelu_erf" if gelu else None)


def layer_norm_problem(M, C, seed):
    """(x, gamma, beta): rows with a random offset and a scale over six decades."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((M, C)) * 10 ** rng.uniform(-3, 3) + rng.uniform(-5, 5)).astype(F32)
    gamma = rng.uniform(0.5, 2, C).astype(F32)
    beta = rng.standard_normal(C).astype(F32)
    return x, gamma, beta


def quantize_linear_problem(shape, seed, style, which, bias):
    """(x, quant, w, s_w, bias): quant is a dynamic spec (token, q8bert) or static QParams."""
    M, K, N = shape
    rng = np.random.default_rng(seed)
    x = activations(rng, M, K, style)
    w = int8_matrix(rng, (N, K), "uniform")
    s_w = scales(rng, N, "normal")
    b = rng.standard_normal(N).astype(F32) if bias else None
    quant = {"token": TOKEN, "q8bert": Q8BERT,
             "static": rq.qparams_from_amax(F32(np.abs(x).max() / 2 + 1e-3), MODELOPT)}[which]
    return x, quant, w, s_w, b


# ---------------------------------------------------------------------------------------
# int8 x int8
# ---------------------------------------------------------------------------------------
@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles)
def test_gemm_every_path_equals_int64_matmul(shape, seed, style):
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a, w = int8_matrix(rng, (M, K), style), int8_matrix(rng, (N, K), style)
    want = a.astype(np.int64) @ w.astype(np.int64).T
    got = ref.gemm_i8(a, w)
    assert got.dtype == np.int32 and np.array_equal(got, want)
    packed = cpu.prepack(w)
    assert np.array_equal(packed.unpack(), w) and packed.unpack().dtype == np.int8  # only copy kept
    for path in ALL_PATHS:
        assert np.array_equal(cpu.gemm_i8(a, packed, path=path), want), path
    assert np.array_equal(cpu.gemm_i8(a, w), want)  # unpacked weights, default path


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, sa_style=scale_styles, sw_style=scale_styles,
       per_token=st.booleans(), bias=st.booleans(), gelu=st.booleans())
def test_linear_i8(shape, seed, style, sa_style, sw_style, per_token, bias, gelu):
    a, s_a, w, s_w, b, act = linear_problem(shape, seed, style, sa_style, sw_style, per_token, bias, gelu)
    want = ref.linear_i8(a, s_a, w, s_w, b, act)
    # the definition, spelled out
    acc = (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)
    y = acc.astype(F32) * ((s_a[:, None] if per_token else s_a) * s_w[None, :])
    y = y + b if bias else y
    assert same_bits(want, canonical_nan(gelu_erf_float32(y) if gelu else y))
    packed = cpu.prepack(w)
    for path in ALL_PATHS:
        assert same_bits(cpu.linear_i8(a, s_a, packed, s_w, b, act, path=path), want), path


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, per_row=st.booleans(), per_token=st.booleans())
def test_linear_i8_int32_bias(shape, seed, style, per_row, per_token):
    a, s_a, w, s_w, q_bias = int32_bias_problem(shape, seed, style, per_row, per_token)
    want = ref.linear_i8_int32_bias(a, s_a, w, s_w, q_bias)
    total = a.astype(np.int64) @ w.astype(np.int64).T + q_bias
    assert same_bits(want, canonical_nan(total.astype(np.int32).astype(F32) *
                                         ((s_a[:, None] if per_token else s_a) * s_w[None, :])))
    packed = cpu.prepack(w)
    for path in ALL_PATHS:
        assert same_bits(cpu.linear_i8_int32_bias(a, s_a, packed, s_w, q_bias, path=path), want), path


@pytest.mark.parametrize("M", [1, 40])
def test_int32_bias_overflow_raises(M):
    K, N = 64, 20
    a = np.full((M, K), 127, np.int8)
    w = np.full((N, K), 127, np.int8)
    q_bias = np.zeros(N, np.int32)
    q_bias[7] = 2 ** 31 - 1 - 127 * 127 * K + 1  # one past the largest representable sum
    s = np.ones(N, F32)
    with pytest.raises(OutOfRangeError):
        ref.linear_i8_int32_bias(a, F32(1), w, s, q_bias)
    for path in ALL_PATHS:
        with pytest.raises(OutOfRangeError):
            cpu.linear_i8_int32_bias(a, F32(1), cpu.prepack(w), s, q_bias, path=path)
    q_bias[7] -= 1  # exactly int32 max: fine
    want = ref.linear_i8_int32_bias(a, F32(1), w, s, q_bias)
    assert want[0, 7] == F32(2 ** 31 - 1)
    for path in ALL_PATHS:
        assert same_bits(cpu.linear_i8_int32_bias(a, F32(1), cpu.prepack(w), s, q_bias, path=path), want)


def test_k_limit():
    """128 * 128 * K < 2^31: K = I8_MAX_K is exact even for all -128 (the worst case), one
    more raises; rule 8's 127 * 128 bound would wrap there."""
    K = ref.I8_MAX_K
    assert 128 * 128 * K < 2 ** 31 <= 128 * 128 * (K + 1)
    a = np.full((32, K), -128, np.int8)
    w = np.full((2, K), -128, np.int8)
    w[1, ::2] = 127
    want = a[:1].astype(np.int64) @ w.astype(np.int64).T
    assert want.max() == 2 ** 14 * K
    packed = cpu.prepack(w)
    for path in ALL_PATHS:
        got = cpu.gemm_i8(a[:1] if path == "portable" else a, packed, path=path)
        assert np.array_equal(got, np.broadcast_to(want, got.shape)), path
    big_a, big_w = np.zeros((1, K + 1), np.int8), np.zeros((3, K + 1), np.int8)
    for fn in (ref.gemm_i8, cpu.gemm_i8):
        with pytest.raises(OutOfRangeError, match="131071"):
            fn(big_a, big_w)
    with pytest.raises(OutOfRangeError):
        ref.linear_i8(big_a, F32(1), big_w, np.ones(3, F32))
    with pytest.raises(OutOfRangeError):
        cpu.linear_i8(big_a, F32(1), big_w, np.ones(3, F32))
    Kw = ref.W4_MAX_K + 1
    a4, p4 = np.zeros((1, Kw), np.int8), np.zeros((2, (Kw + 1) // 2), np.uint8)
    for fn in (ref.linear_w4a8_rows, cpu.linear_w4a8_rows):
        with pytest.raises(OutOfRangeError):
            fn(a4, F32(1), p4, Kw, np.ones(2, F32))


# ---------------------------------------------------------------------------------------
# int4 weights
# ---------------------------------------------------------------------------------------
@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, extremes4=st.booleans(), gelu=st.booleans(),
       bias=st.booleans(), per_token=st.booleans(),
       group=st.sampled_from([None, 1, 3, 4, 8, 9, 32, 64, 200]))
def test_w4a8(shape, seed, style, extremes4, gelu, bias, per_token, group):
    M, K, N = shape
    a, s_a, w4, packed, s_w, b, act = w4_problem(shape, seed, style, extremes4, gelu, bias, per_token, group)
    assert packed.shape == (N, (K + 1) // 2) and np.array_equal(ref.unpack_w4(packed, K), w4)
    assert np.array_equal(cpu.unpack_w4(packed, K), w4)
    if group is None:
        want = ref.linear_w4a8_rows(a, s_a, packed, K, s_w, b, act)
        assert same_bits(want, ref.linear_i8(a, s_a, w4, s_w, b, act))
        prepacked = cpu.prepack_w4(packed, K)
        assert np.array_equal(prepacked.values(), w4)  # the packed copy is the only one kept
        for path in ALL_PATHS:
            assert same_bits(cpu.linear_w4a8_rows(a, s_a, prepacked, K, s_w, b, act, path=path), want)
        assert same_bits(cpu.linear_w4a8_rows(a, s_a, packed, K, s_w, b, act), want)
        return
    G = s_w.shape[1]
    want = ref.linear_w4a8_groups(a, s_a, packed, K, s_w, group, b, act)
    y = None
    for g in range(G):  # the definition, spelled out
        ks = slice(g * group, min(K, (g + 1) * group))
        acc = (a[:, ks].astype(np.int64) @ w4[:, ks].astype(np.int64).T).astype(np.int32)
        p = acc.astype(F32) * ((s_a[:, None] if per_token else s_a) * s_w[None, :, g])
        y = p if y is None else y + p
    y = y + b if bias else y
    assert same_bits(want, canonical_nan(gelu_erf_float32(y) if gelu else y))
    prepacked = cpu.prepack_w4(packed, K, group)
    assert np.array_equal(prepacked.values(), w4)
    for path in ALL_PATHS:
        assert same_bits(cpu.linear_w4a8_groups(a, s_a, prepacked, K, s_w, group, b, act, path=path),
                         want), path
    assert same_bits(cpu.linear_w4a8_groups(a, s_a, packed, K, s_w, group, b, act), want)


def test_pack_w4_layout_and_errors():
    w = np.array([[1, -2, 7], [-8, 0, 3]], np.int8)
    assert np.array_equal(ref.pack_w4(w), np.array([[0xE1, 0x07], [0x08, 0x03]], np.uint8))
    with pytest.raises(OutOfRangeError):
        ref.pack_w4(np.array([[8]], np.int8))
    with pytest.raises(DTypeError):
        ref.pack_w4(np.zeros((1, 2), F32))
    with pytest.raises(ShapeError):
        ref.unpack_w4(np.zeros((2, 2), np.uint8), 5)
    packed = ref.pack_w4(w)
    with pytest.raises(ConfigError):  # a PackedW4 built for other groups
        cpu.linear_w4a8_groups(np.zeros((1, 3), np.int8), F32(1), cpu.prepack_w4(packed, 3), 3,
                               np.ones((2, 2), F32), 2)


# ---------------------------------------------------------------------------------------
# one NaN (numeric contract rule 12)
# ---------------------------------------------------------------------------------------
HUGE = F32(2.0 ** 70)  # s_a * s_w = 2^140: inf in float32


def nan_problem():
    """Arguments under which every float32 epilogue makes NaN in each way rule 12 covers:
    a [33, 6] (a zero row, a positive and a negative one, 11 times: enough rows for the AMX
    tiles, and one past them), w [9, 6] (a zero row; a row whose
    two input groups of 3 have sums of opposite signs), s_a = s_w = 2^70 so s_a * s_w = inf:
    acc = 0 gives 0 * inf, others +-inf; bias 0, -inf, +inf (inf - inf) and the ODD_NANS;
    GELU then also sees -inf (0.5 * -inf * (1 + erf) = -inf * 0) and NaN. Returns a dict."""
    a = np.tile(np.array([[0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [-1, -2, -3, -4, -5, -6]], np.int8), (11, 1))
    w = np.ones((9, 6), np.int8)
    w[1] = 0
    w[2] = [7, 7, 7, -8, -8, -8]
    bias = np.concatenate([np.array([0, 0, 0, -np.inf, np.inf], F32), ODD_NANS])
    x = a.astype(F32) * F32(100)  # per token: s_a = amax / 128 > 1, and s_w = 3e38
    q_bias = np.zeros((33, 9), np.int32)
    q_bias[:, 0] = np.tile([0, -21, 21], 11)  # acc + q_bias = 0 where acc != 0
    return dict(a=a, w=w, w4=ref.pack_w4(w), s_a=np.full(33, HUGE), s_w=np.full(9, HUGE),
                s_g=np.full((9, 2), HUGE), bias=bias, x=x, s_w_max=np.full(9, F32(3e38)), q_bias=q_bias)


def nan_outputs(mod, p, **path):
    """{case: float32 output} of every kernel of ``mod`` (reference, cpu, cuda) with a float32
    result, on nan_problem's arguments."""
    a, w, w4, K = p["a"], p["w"], p["w4"], p["a"].shape[1]
    out = {}
    for act in (None, "gelu_erf"):
        for bias in (None, p["bias"]):
            tag = f"{'bias' if bias is not None else 'no bias'}, {act}"
            out[f"linear_i8 {tag}"] = mod.linear_i8(a, p["s_a"], w, p["s_w"], bias, act, **path)
            out[f"linear_w4a8_rows {tag}"] = mod.linear_w4a8_rows(a, p["s_a"], w4, K, p["s_w"], bias, act, **path)
            out[f"linear_w4a8_groups {tag}"] = mod.linear_w4a8_groups(a, p["s_a"], w4, K, p["s_g"], 3, bias, act,
                                                                      **path)
            out[f"quantize_linear_i8 {tag}"] = mod.quantize_linear_i8(p["x"], TOKEN, w, p["s_w_max"], bias, act,
                                                                      **path)
    for q_bias in (p["q_bias"][0], p["q_bias"]):
        out[f"linear_i8_int32_bias {q_bias.shape}"] = mod.linear_i8_int32_bias(a, p["s_a"], w, p["s_w"], q_bias,
                                                                              **path)
    return out


def test_nan_problem_makes_the_hardware_nans_rule_12_replaces():
    """Without canonicalization x86 writes its default NaN 0xFFC00000 for 0 * inf, inf - inf and
    GELU(-inf), and keeps a NaN bias's sign and payload: the cases below are real tests."""
    p = nan_problem()
    with np.errstate(all="ignore"):
        raw = ref._exact_matmul(p["a"], p["w"]).astype(F32) * (p["s_a"][:, None] * p["s_w"][None, :])
        raw = raw + p["bias"]
    bits = set(raw.view(np.uint32)[np.isnan(raw)].tolist())
    assert {0x7FC01234 | 0x80000000, 0x7FFFFFFF} <= bits  # a bias NaN's payload and sign survive the add
    if os.uname().machine in ("x86_64", "AMD64"):
        assert 0xFFC00000 in bits and CANONICAL_NAN_BITS not in bits


@pytest.mark.parametrize("path", ["reference"] + ALL_PATHS)
def test_every_nan_a_kernel_writes_is_the_canonical_nan(path):
    p = nan_problem()
    mod, kw = (ref, {}) if path == "reference" else (cpu, {"path": path})
    outs = nan_outputs(mod, p, **kw)
    want = nan_outputs(ref, p) if path != "reference" else outs
    for case, y in outs.items():
        assert np.isnan(y).any(), case  # each case does make NaN
        assert nan_bits_are_canonical(y), (path, case, sorted({hex(v) for v in y.view(np.uint32)[np.isnan(y)]}))
        assert same_bits(y, want[case]), (path, case)


@pytest.mark.skipif(not cpu.HAVE_VNNI or cpu.HAVE_AMX, reason="needs AVX-512 VNNI and no AMX (with AMX the "
                    "amx path runs above)")
def test_amx_epilogue_stores_the_canonical_nan_where_amx_cannot_run(tmp_path):
    """Compiled for Sapphire Rapids (AMX), the VNNI kernel runs here with the canonical NaN and
    the AMX driver's LLVM IR has the same select at every float epilogue store: one per row and
    16-column block of each VNNI micro-kernel, plus the AMX row loop's two blocks."""
    import subprocess
    import sys
    code = """if True:
        import sys, warnings
        sys.path.insert(0, "tests")
        warnings.simplefilter("ignore")
        import numpy as np
        from refquant.kernels import _vnni, cpu
        from test_kernels import nan_bits_are_canonical, nan_outputs, nan_problem, ref, same_bits
        assert _vnni.AMX_COMPILES and cpu.HAVE_VNNI and not cpu.HAVE_AMX
        p = nan_problem()
        outs, want = nan_outputs(cpu, p, path="vnni"), nan_outputs(ref, p)
        assert all(nan_bits_are_canonical(y) and same_bits(y, want[c]) for c, y in outs.items())
        llvm = "".join(cpu._vnni_i8.inspect_llvm().values())
        stores = sum(_vnni.ROWS) * sum(range(1, cpu.NR + 1)) + 2
        print("tdpbusd" in llvm, llvm.count("fcmp uno <16 x float>") == stores)
    """
    features = ("+64bit,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,"
                "+lzcnt,+movbe,+cx16,+xsave,+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,+avx512vnni,"
                "+amx-tile,+amx-int8")
    env = {**os.environ, "NUMBA_CPU_NAME": "sapphirerapids", "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900,
                          cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert done.returncode == 0 and done.stdout.split() == ["True", "True"], done.stdout + done.stderr[-3000:]


# scales that overflow s_a * s_w half the time (NaN where acc = 0), or are subnormal
nan_scale_styles = st.sampled_from(["huge", "huge", "mixed", "subnormal", "normal"])


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, sa_style=nan_scale_styles, sw_style=nan_scale_styles,
       per_token=st.booleans(), bias=bias_styles, gelu=st.booleans(),
       group=st.sampled_from([None, 3, 32]))
def test_every_backend_writes_the_same_bytes_nan_included(shape, seed, style, sa_style, sw_style, per_token,
                                                          bias, gelu, group):
    """linear_i8, linear_i8_int32_bias and W4A8 with huge, tiny and subnormal scales and
    infinite, NaN and subnormal biases: every path gives the reference's bytes, NaN bits
    included, and every NaN is the canonical one."""
    a, s_a, w, s_w, b, act = linear_problem(shape, seed, style, sa_style, sw_style, per_token, bias, gelu)
    want = ref.linear_i8(a, s_a, w, s_w, b, act)
    assert nan_bits_are_canonical(want)
    M, K, N = shape
    qb_args = int32_bias_problem(shape, seed, style, True, per_token, sa_style, sw_style)
    want_qb = ref.linear_i8_int32_bias(*qb_args)
    a4, s_a4, _, p4, s_w4, b4, act4 = w4_problem(shape, seed, style, False, gelu, bias, per_token, group, sw_style)
    if group is None:
        want4 = ref.linear_w4a8_rows(a4, s_a4, p4, K, s_w4, b4, act4)
    else:
        want4 = ref.linear_w4a8_groups(a4, s_a4, p4, K, s_w4, group, b4, act4)
    assert nan_bits_are_canonical(want_qb) and nan_bits_are_canonical(want4)
    packed, packed4 = cpu.prepack(w), cpu.prepack_w4(p4, K, group)
    for path in ALL_PATHS:
        assert same_bits(cpu.linear_i8(a, s_a, packed, s_w, b, act, path=path), want), path
        assert same_bits(cpu.linear_i8_int32_bias(*qb_args, path=path), want_qb), path
        got4 = (cpu.linear_w4a8_rows(a4, s_a4, packed4, K, s_w4, b4, act4, path=path) if group is None else
                cpu.linear_w4a8_groups(a4, s_a4, packed4, K, s_w4, group, b4, act4, path=path))
        assert same_bits(got4, want4), path


# ---------------------------------------------------------------------------------------
# quantizing activations
# ---------------------------------------------------------------------------------------
def activations(rng, M, K, style):
    """float32 rows: normal values, rows whose values sit exactly on rounding ties, all-zero
    rows, and rows with a huge or tiny range."""
    x = (rng.standard_normal((M, K)) * 10 ** rng.uniform(-2, 2, (M, 1))).astype(F32)
    if style == "ties":
        # amax a power of two: deepspeed's step amax / 128 is then a power of two, and
        # (k + 0.5) steps are exact ties of x / step
        e = rng.integers(-10, 10, (M, 1))
        k = rng.integers(-128, 128, (M, K)) + 0.5
        x = (k * 2.0 ** (e - 7)).astype(F32)
        x[:, 0] = (2.0 ** e[:, 0]).astype(F32)
    elif style == "extreme":
        x *= F32(2.0 ** rng.integers(-100, 100))
    if M > 1:
        x[rng.random(M) < 0.2] = 0
    return x


act_styles = st.sampled_from(["normal", "ties", "extreme"])


@settings(**EXAMPLES)
@given(M=st.integers(1, 9), K=st.integers(1, 70), seed=seeds, style=act_styles)
def test_quantize_dynamic_equals_refquant_quant(M, K, seed, style):
    rng = np.random.default_rng(seed)
    x = activations(rng, M, K, style)
    for spec in (TOKEN, Q8BERT):
        qp = rq.choose_qparams(x, spec)
        want = rq.quantize(x, qp)
        q, s_a = ref.quantize_dynamic(x, spec)
        assert q.dtype == np.int8 and np.array_equal(q, want), spec.dialect
        assert same_bits(s_a, ref.dequant_step(qp))
        q2, s2 = cpu.quantize_dynamic(x, spec)
        assert np.array_equal(q2, want) and same_bits(s2, s_a), spec.dialect
    assert np.all(np.abs(ref.quantize_dynamic(x, Q8BERT)[0]) <= 127)


@settings(**EXAMPLES)
@given(M=st.integers(1, 9), K=st.integers(1, 70), seed=seeds, style=act_styles,
       amax=st.floats(2.0 ** -100, 1024.0, width=32))
def test_quantize_activation_static_modelopt(M, K, seed, style, amax):
    """Static per-tensor amax (often below max|x|: saturation at +-127)."""
    rng = np.random.default_rng(seed)
    x = activations(rng, M, K, style)
    qp = rq.qparams_from_amax(F32(amax), MODELOPT)
    want = rq.quantize(x, qp)
    q, s_a = ref.quantize_activation(x, qp)
    assert np.array_equal(q, want) and same_bits(s_a, ref.dequant_step(qp))
    q2, s2 = cpu.quantize_activation(x, qp)
    assert np.array_equal(q2, want) and same_bits(s2, s_a)
    # the step of a multiplier spec: float32(1 / m) (the integer path's definition)
    assert same_bits(s_a, np.asarray(F32(1) / qp.multiplier if qp.multiplier != 0 else F32(1)))


def test_quantize_activation_ties_and_saturation_by_hand():
    x = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0, 0.0]], F32)
    qp = rq.QParams(np.float32(1.0), 0, rq.QuantSpec(narrow=True))
    for mod in (ref, cpu):
        q, s = mod.quantize_activation(x, qp)
        assert q.tolist() == [[0, 2, 2, 0, -2, 127, -127, 0]] and s == F32(1)
        q, _ = mod.quantize_activation(x, rq.QParams(np.float32(1.0), 0, rq.QuantSpec(rounding="half_away")))
        assert q.tolist() == [[1, 2, 3, -1, -3, 127, -128, 0]]
    tok = np.array([[1.0, 0.5 / 128 * 3, -1.0], [0.0, 0.0, 0.0]], F32)  # deepspeed: +amax -> 127
    for mod in (ref, cpu):
        q, s = mod.quantize_dynamic(tok, TOKEN)
        assert q.tolist() == [[127, 2, -128], [0, 0, 0]] and s.tolist() == [1 / 128, 1.0]


@settings(**EXAMPLES)
@given(M=st.integers(1, 9), K=st.integers(1, 40), seed=seeds, per_row=st.booleans(),
       mode=st.sampled_from(ref.MODES), rounding=st.sampled_from(ref.ROUNDINGS),
       narrow=st.booleans())
def test_quantize_rows(M, K, seed, per_row, mode, rounding, narrow):
    rng = np.random.default_rng(seed)
    x = activations(rng, M, K, "normal")
    x.flat[::3] = np.round(x.flat[::3] * 4) / 4  # halves and quarters: ties for the params below
    param = (2.0 ** rng.integers(-3, 3, M)).astype(F32) if per_row else F32(0.5)
    qmin, qmax = (-127 if narrow else -128), 127
    want = ref.quantize_rows(x, param, mode, qmin, qmax, rounding)
    p = param[:, None] if per_row else param
    y = x / p if mode == "divide" else x * p
    assert np.array_equal(want, np.clip(rq.quant.round_values(y, rounding), qmin, qmax).astype(np.int8))
    assert np.array_equal(cpu.quantize_rows(x, param, mode, qmin, qmax, rounding), want)


@settings(**EXAMPLES)
@given(M=st.integers(1, 9), C=st.integers(1, 70), seed=seeds, eps=st.sampled_from([1e-5, 1e-12, 0.1]),
       spec=st.sampled_from([TOKEN, Q8BERT]))
def test_layer_norm_quantize_per_token(M, C, seed, eps, spec):
    x, gamma, beta = layer_norm_problem(M, C, seed)
    y0 = layer_norm_rows(x, gamma, beta, eps)[0]
    q0 = rq.quantize(y0, rq.choose_qparams(y0, spec))
    y, q, s = ref.layer_norm_quantize_per_token(x, gamma, beta, eps, spec)
    assert same_bits(y, y0) and np.array_equal(q, q0)
    y2, q2, s2 = cpu.layer_norm_quantize_per_token(x, gamma, beta, eps, spec)
    assert same_bits(y2, y) and np.array_equal(q2, q) and same_bits(s2, s)


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=act_styles, which=st.sampled_from(["token", "q8bert", "static"]),
       bias=st.booleans())
def test_quantize_linear_i8(shape, seed, style, which, bias):
    x, quant, w, s_w, b = quantize_linear_problem(shape, seed, style, which, bias)
    want = ref.quantize_linear_i8(x, quant, w, s_w, b)
    q, s_a = (ref.quantize_dynamic(x, quant) if which != "static" else ref.quantize_activation(x, quant))
    assert same_bits(want, ref.linear_i8(q, s_a, w, s_w, b))
    packed = cpu.prepack(w)
    for path in ALL_PATHS:
        assert same_bits(cpu.quantize_linear_i8(x, quant, packed, s_w, b, path=path), want), path


def test_nonfinite_inputs_raise():
    x = np.ones((40, 8), F32)
    x[33, 5] = np.nan
    w = np.ones((4, 8), np.int8)
    for mod in (ref, cpu):
        with pytest.raises(NonFiniteError):
            mod.quantize_dynamic(x, TOKEN)
        with pytest.raises(NonFiniteError):
            mod.quantize_rows(x, F32(1), "divide", -128, 127)
        with pytest.raises(NonFiniteError):
            mod.quantize_activation(x, rq.qparams_from_amax(F32(1), MODELOPT))
        with pytest.raises(NonFiniteError):
            mod.layer_norm_quantize_per_token(np.where(np.isnan(x), np.inf, x).astype(F32),
                                              np.ones(8, F32), np.zeros(8, F32), 1e-5, TOKEN)
    for quant in (TOKEN, Q8BERT, rq.qparams_from_amax(F32(1), MODELOPT)):
        with pytest.raises(NonFiniteError):
            ref.quantize_linear_i8(x, quant, w, np.ones(4, F32))
        for path in ALL_PATHS:
            with pytest.raises(NonFiniteError):
                cpu.quantize_linear_i8(x, quant, cpu.prepack(w), np.ones(4, F32), path=path)


def test_argument_errors():
    a, w = np.zeros((2, 5), np.int8), np.zeros((3, 5), np.int8)
    for mod in (ref, cpu):
        with pytest.raises(DTypeError):
            mod.gemm_i8(a.astype(np.int16), w)
        with pytest.raises(ShapeError):
            mod.gemm_i8(a, np.zeros((3, 4), np.int8))
        with pytest.raises(DTypeError):  # float64 scales are not rounded behind the caller's back
            mod.linear_i8(a, np.ones(2), w, np.ones(3, F32))
        with pytest.raises(ShapeError):
            mod.linear_i8(a, np.ones(3, F32), w, np.ones(3, F32))
        with pytest.raises(ConfigError):
            mod.linear_i8(a, F32(1), w, np.ones(3, F32), activation="relu")
        with pytest.raises(ConfigError):  # affine: a zero point needs a correction term
            mod.quantize_dynamic(np.ones((2, 5), F32), rq.dialect("onnx"))
        with pytest.raises(ConfigError):
            mod.quantize_dynamic(np.ones((2, 5), F32), rq.dialect("torch", granularity="channel", axis=0))
        with pytest.raises(ConfigError):
            mod.quantize_rows(np.ones((2, 5), F32), F32(0), "divide", -128, 127)
    with pytest.raises(ConfigError):
        cpu.gemm_i8(a, w, path="cuda")


def test_thread_counts_and_work_splits_agree():
    """One part or several, rows split between threads (M large) or columns (M small)."""
    rng = np.random.default_rng(7)
    before = numba.get_num_threads()
    for M, K, N in [(300, 70, 45), (70, 33, 100), (3, 64, 200)]:
        a, w = int8_matrix(rng, (M, K), "uniform"), int8_matrix(rng, (N, K), "uniform")
        x = activations(rng, M, K, "normal")
        s_w = scales(rng, N, "normal")
        packed = cpu.prepack(w)
        want_g = ref.gemm_i8(a, w)
        want_l = ref.quantize_linear_i8(x, TOKEN, w, s_w)
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            try:
                for path in ALL_PATHS:
                    assert np.array_equal(cpu.gemm_i8(a, packed, path=path), want_g), (M, path, threads)
                    assert same_bits(cpu.quantize_linear_i8(x, TOKEN, packed, s_w, path=path), want_l)
            finally:
                numba.set_num_threads(before)


def test_paths_available():
    if not cpu.HAVE_VNNI:
        pytest.skip("this CPU has no AVX-512 VNNI: only the portable path is checked")
    assert cpu.DEFAULT_PATH in ("amx", "vnni")
    if not cpu.HAVE_AMX:
        pytest.skip("no AMX-INT8 (or no Linux tile-data permission): the amx path is not checked")
    assert cpu.DEFAULT_PATH == "amx"
