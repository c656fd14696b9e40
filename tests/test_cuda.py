"""refquant.kernels.cuda against the NumPy reference, byte for byte.

Under Numba's CUDA simulator (conftest.py sets NUMBA_ENABLE_CUDASIM=1 unless told otherwise)
the kernels run as Python: the same indexing, tiling, group order and reductions as on a GPU,
with 4 x 4-thread GEMM blocks and 8-thread rows so that hypothesis stays affordable (one test
runs the GPU's launch shapes in a subprocess). The roundings a real GPU would change (FMA
contraction) are checked on the PTX NVVM generates, without a GPU. Every test here skips,
saying why, when numba's CUDA target is unavailable.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refquant as rq
from refquant.errors import ConfigError, DTypeError, NonFiniteError, OutOfRangeError, ShapeError
from refquant.kernels import cuda as kc, reference as ref
from refquant.testing import INT8_STYLES, assert_bitexact, int8_matrix
from test_kernels import (MODELOPT, Q8BERT, TOKEN, activations, act_styles, int32_bias_problem, layer_norm_problem,
                          linear_problem, quantize_linear_problem, same_bits, scale_styles, scales, w4_problem)
from test_kernels import bias_styles, nan_bits_are_canonical, nan_outputs, nan_problem, nan_scale_styles

F32 = np.float32
EXAMPLES = dict(max_examples=int(os.environ.get("REFQUANT_CUDA_EXAMPLES", 20)), deadline=None)
pytestmark = [pytest.mark.skipif(not kc.available(), reason=f"CUDA kernels unavailable: {kc.unavailable_reason()}"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

# shapes around the simulator's 16 x 16 tiles and the 32-value K step
shapes = st.tuples(st.sampled_from([1, 2, 5, 16, 17]),          # M
                   st.sampled_from([1, 3, 4, 5, 31, 32, 33, 70]),  # K
                   st.sampled_from([1, 3, 16, 17, 33]))           # N
seeds = st.integers(0, 2 ** 32 - 1)
int_styles = st.sampled_from(INT8_STYLES)


# ---------------------------------------------------------------------------------------
# GEMMs
# ---------------------------------------------------------------------------------------
@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles)
def test_gemm_i8(shape, seed, style):
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a, w = int8_matrix(rng, (M, K), style), int8_matrix(rng, (N, K), style)
    want = ref.gemm_i8(a, w)
    got = kc.gemm_i8(a, w)
    assert got.dtype == np.int32 and np.array_equal(got, want)
    packed = kc.prepack(w)
    assert np.array_equal(packed.unpack(), w)
    assert np.array_equal(kc.gemm_i8(a, packed), want)


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, sa_style=scale_styles, sw_style=scale_styles,
       per_token=st.booleans(), bias=st.booleans(), gelu=st.booleans())
def test_linear_i8(shape, seed, style, sa_style, sw_style, per_token, bias, gelu):
    a, s_a, w, s_w, b, act = linear_problem(shape, seed, style, sa_style, sw_style, per_token, bias, gelu)
    assert same_bits(kc.linear_i8(a, s_a, kc.prepack(w), s_w, b, act), ref.linear_i8(a, s_a, w, s_w, b, act))


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, per_row=st.booleans(), per_token=st.booleans())
def test_linear_i8_int32_bias(shape, seed, style, per_row, per_token):
    a, s_a, w, s_w, q_bias = int32_bias_problem(shape, seed, style, per_row, per_token)
    assert same_bits(kc.linear_i8_int32_bias(a, s_a, w, s_w, q_bias),
                     ref.linear_i8_int32_bias(a, s_a, w, s_w, q_bias))


def test_int32_bias_overflow_raises_naming_the_element():
    a = np.full((3, 4), -128, np.int8)
    w = np.full((2, 4), -128, np.int8)
    q_bias = np.array([0, 2 ** 31 - 1], np.int32)
    with pytest.raises(OutOfRangeError, match=r"at \[0, 1\]"):
        kc.linear_i8_int32_bias(a, F32(1), w, np.ones(2, F32), q_bias)


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, extremes4=st.booleans(), gelu=st.booleans(),
       bias=st.booleans(), per_token=st.booleans(), group=st.sampled_from([None, 1, 3, 8, 9, 32, 33, 200]))
def test_w4a8(shape, seed, style, extremes4, gelu, bias, per_token, group):
    M, K, N = shape
    a, s_a, w4, packed, s_w, b, act = w4_problem(shape, seed, style, extremes4, gelu, bias, per_token, group)
    device = kc.prepack_w4(packed, K, group)
    assert np.array_equal(device.values(), w4)  # 4 bits per weight on the device, byte for byte back
    assert device.nbytes() <= N * (-(-K // (group or K)) * (-(-(group or K) // 32) * 32)) // 2
    if group is None:
        want = ref.linear_w4a8_rows(a, s_a, packed, K, s_w, b, act)
        assert same_bits(kc.linear_w4a8_rows(a, s_a, device, K, s_w, b, act), want)
        assert same_bits(kc.linear_w4a8_rows(a, s_a, packed, K, s_w, b, act), want)
        return
    want = ref.linear_w4a8_groups(a, s_a, packed, K, s_w, group, b, act)
    assert same_bits(kc.linear_w4a8_groups(a, s_a, device, K, s_w, group, b, act), want)


def test_every_nan_the_cuda_kernels_write_is_the_canonical_nan():
    """0 * inf, inf - inf, GELU(-inf) and NaN biases of any sign and payload: 0x7FC00000 on the
    device (whose own invalid operations make 0x7FFFFFFF) as on the CPU, and the reference's
    bytes everywhere."""
    p = nan_problem()
    got, want = nan_outputs(kc, p), nan_outputs(ref, p)
    for case, y in got.items():
        assert np.isnan(y).any() and nan_bits_are_canonical(y), (case, sorted({hex(v) for v in y.view(np.uint32)[np.isnan(y)]}))
        assert same_bits(y, want[case]), case


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=int_styles, sa_style=nan_scale_styles, sw_style=nan_scale_styles,
       per_token=st.booleans(), bias=bias_styles, gelu=st.booleans(), group=st.sampled_from([None, 3, 32]))
def test_nan_included_the_cuda_bytes_are_the_references(shape, seed, style, sa_style, sw_style, per_token, bias,
                                                       gelu, group):
    """test_kernels' cross-path property on the CUDA kernels: huge / subnormal scales, inf and
    NaN biases, GELU; byte equality with the reference, NaN bits included."""
    M, K, N = shape
    a, s_a, w, s_w, b, act = linear_problem(shape, seed, style, sa_style, sw_style, per_token, bias, gelu)
    assert same_bits(kc.linear_i8(a, s_a, w, s_w, b, act), ref.linear_i8(a, s_a, w, s_w, b, act))
    qb_args = int32_bias_problem(shape, seed, style, True, per_token, sa_style, sw_style)
    assert same_bits(kc.linear_i8_int32_bias(*qb_args), ref.linear_i8_int32_bias(*qb_args))
    a4, s_a4, _, p4, s_w4, b4, act4 = w4_problem(shape, seed, style, False, gelu, bias, per_token, group, sw_style)
    if group is None:
        assert same_bits(kc.linear_w4a8_rows(a4, s_a4, p4, K, s_w4, b4, act4),
                         ref.linear_w4a8_rows(a4, s_a4, p4, K, s_w4, b4, act4))
    else:
        assert same_bits(kc.linear_w4a8_groups(a4, s_a4, p4, K, s_w4, group, b4, act4),
                         ref.linear_w4a8_groups(a4, s_a4, p4, K, s_w4, group, b4, act4))


def test_w4_prepacked_for_other_groups_is_refused():
    packed = ref.pack_w4(np.array([[1, -2, 7], [-8, 0, 3]], np.int8))
    with pytest.raises(ConfigError, match="group_size"):
        kc.linear_w4a8_groups(np.zeros((1, 3), np.int8), F32(1), kc.prepack_w4(packed, 3), 3,
                              np.ones((2, 2), F32), 2)


def test_gelu_elements_the_polynomial_cannot_decide_are_recomputed_with_scipy():
    """fast_erf flags about 24 per million pre-activations whose float32 GELU the polynomial
    cannot decide; find some, feed them through the epilogue (acc = 1, s_a = v, s_w = 1, so
    y = v exactly) and check the kernel's flag-and-recompute path gives scipy's bits."""
    from refquant.nn import fast_erf
    rng = np.random.default_rng(3)
    v = rng.uniform(-4.5, 4.5, 2_000_000).astype(F32)
    out, unsure = np.empty_like(v), np.empty(v.size, np.uint8)
    fast_erf._gelu_kernel(v, out, unsure, fast_erf.COEFFS, fast_erf.INV_SQRT2)
    hard = v[unsure.view(bool)][:6]
    assert hard.size >= 3
    vals = np.concatenate([hard, np.array([0.0, -0.0, 1.0, -3.0, 5.0], F32)])
    M = vals.size
    a, w = np.ones((M, 1), np.int8), np.ones((1, 1), np.int8)
    got = kc.linear_i8(a, vals, w, np.ones(1, F32), activation="gelu_erf")
    assert same_bits(got, ref.linear_i8(a, vals, w, np.ones(1, F32), activation="gelu_erf"))
    assert same_bits(got[:, 0], fast_erf.gelu_erf_float32(vals))


# ---------------------------------------------------------------------------------------
# quantizing activations
# ---------------------------------------------------------------------------------------
DYNAMIC_SPECS = [TOKEN, Q8BERT, rq.dialect("torch", granularity="token", dynamic=True),
                 rq.dialect("compressed_tensors", granularity="token", dynamic=True),
                 rq.dialect("modelopt", narrow=True, dynamic=True)]


@settings(**EXAMPLES)
@given(M=st.integers(1, 9), K=st.integers(1, 40), seed=seeds, style=act_styles,
       spec=st.sampled_from(DYNAMIC_SPECS))
def test_quantize_dynamic(M, K, seed, style, spec):
    x = activations(np.random.default_rng(seed), M, K, style)
    q, s = kc.quantize_dynamic(x, spec)
    q0, s0 = ref.quantize_dynamic(x, spec)
    assert np.array_equal(q, q0) and q.dtype == np.int8 and same_bits(np.asarray(s), np.asarray(s0))


@settings(**EXAMPLES)
@given(M=st.integers(1, 9), K=st.integers(1, 40), seed=seeds, style=act_styles,
       amax=st.floats(1e-3, 1e3), per_token=st.booleans())
def test_quantize_activation_static(M, K, seed, style, amax, per_token):
    rng = np.random.default_rng(seed)
    x = activations(rng, M, K, style)
    if per_token:
        qp = rq.choose_qparams(x, rq.dialect("deepspeed", granularity="token", dynamic=True))
    else:
        qp = rq.qparams_from_amax(F32(amax), MODELOPT)
    q, s = kc.quantize_activation(x, qp)
    q0, s0 = ref.quantize_activation(x, qp)
    assert np.array_equal(q, q0) and same_bits(np.asarray(s), np.asarray(s0))


@settings(**EXAMPLES)
@given(M=st.integers(1, 9), K=st.integers(1, 40), seed=seeds, per_row=st.booleans(),
       mode=st.sampled_from(["divide", "multiply"]), rounding=st.sampled_from(["half_even", "half_away"]),
       narrow=st.booleans())
def test_quantize_rows(M, K, seed, per_row, mode, rounding, narrow):
    rng = np.random.default_rng(seed)
    x = activations(rng, M, K, "ties")
    n = M if per_row else 1
    param = rng.uniform(0.01, 4, n).astype(F32)
    if mode == "divide":  # steps that make x / p land on ties
        param = (2.0 ** rng.integers(-12, 4, n)).astype(F32)
    param = param if per_row else param[0]
    qmin = -127 if narrow else -128
    assert np.array_equal(kc.quantize_rows(x, param, mode, qmin, 127, rounding),
                          ref.quantize_rows(x, param, mode, qmin, 127, rounding))


@settings(**EXAMPLES)
@given(M=st.integers(1, 6), C=st.integers(1, 70), seed=seeds, eps=st.sampled_from([1e-5, 1e-12, 0.1]),
       spec=st.sampled_from([TOKEN, Q8BERT]))
def test_layer_norm_quantize_per_token(M, C, seed, eps, spec):
    x, gamma, beta = layer_norm_problem(M, C, seed)
    y, q, s = kc.layer_norm_quantize_per_token(x, gamma, beta, eps, spec)
    y0, q0, s0 = ref.layer_norm_quantize_per_token(x, gamma, beta, eps, spec)
    assert same_bits(y, y0) and np.array_equal(q, q0) and same_bits(np.asarray(s), np.asarray(s0))


@settings(**EXAMPLES)
@given(shape=shapes, seed=seeds, style=act_styles, which=st.sampled_from(["token", "q8bert", "static"]),
       bias=st.booleans(), gelu=st.booleans())
def test_quantize_linear_i8(shape, seed, style, which, bias, gelu):
    x, quant, w, s_w, b = quantize_linear_problem(shape, seed, style, which, bias)
    act = "gelu_erf" if gelu else None
    assert same_bits(kc.quantize_linear_i8(x, quant, kc.prepack(w), s_w, b, act),
                     ref.quantize_linear_i8(x, quant, w, s_w, b, act))


def test_nonfinite_inputs_raise_naming_the_element():
    x = np.ones((5, 8), F32)
    x[3, 5] = np.nan
    w = np.ones((4, 8), np.int8)
    with pytest.raises(NonFiniteError, match=r"\(3, 5\)"):
        kc.quantize_dynamic(x, TOKEN)
    with pytest.raises(NonFiniteError, match=r"\(3, 5\)"):
        kc.quantize_rows(x, F32(1), "divide", -128, 127)
    with pytest.raises(NonFiniteError):
        kc.layer_norm_quantize_per_token(np.where(np.isnan(x), np.inf, x).astype(F32),
                                         np.ones(8, F32), np.zeros(8, F32), 1e-5, TOKEN)
    for quant in (TOKEN, Q8BERT, rq.qparams_from_amax(F32(1), MODELOPT)):
        with pytest.raises(NonFiniteError, match=r"\(3, 5\)"):
            kc.quantize_linear_i8(x, quant, w, np.ones(4, F32))


def test_argument_errors_and_empty_inputs():
    a, w = np.zeros((2, 5), np.int8), np.zeros((3, 5), np.int8)
    with pytest.raises(DTypeError):
        kc.gemm_i8(a.astype(np.int16), w)
    with pytest.raises(ShapeError):
        kc.gemm_i8(a, np.zeros((3, 4), np.int8))
    with pytest.raises(DTypeError):
        kc.linear_i8(a, np.ones(2), w, np.ones(3, F32))
    with pytest.raises(ConfigError):
        kc.linear_i8(a, F32(1), w, np.ones(3, F32), activation="relu")
    with pytest.raises(ConfigError):
        kc.quantize_dynamic(np.ones((2, 5), F32), rq.dialect("onnx"))
    with pytest.raises(OutOfRangeError):
        kc.gemm_i8(np.zeros((1, ref.I8_MAX_K + 1), np.int8), np.zeros((1, ref.I8_MAX_K + 1), np.int8))
    for M, K, N in [(0, 5, 3), (2, 0, 3), (2, 5, 0)]:
        a, w = np.ones((M, K), np.int8), np.ones((N, K), np.int8)
        assert np.array_equal(kc.gemm_i8(a, w), ref.gemm_i8(a, w))
        s_a, s_w = np.full(M, 0.5, F32), np.full(N, 2.0, F32)
        assert same_bits(kc.linear_i8(a, s_a, w, s_w, np.ones(N, F32), "gelu_erf"),
                         ref.linear_i8(a, s_a, w, s_w, np.ones(N, F32), "gelu_erf"))
        assert same_bits(kc.linear_w4a8_groups(a, s_a, ref.pack_w4(w), K, np.ones((N, max(-(-K // 2), 0)), F32), 2),
                         ref.linear_w4a8_groups(a, s_a, ref.pack_w4(w), K, np.ones((N, max(-(-K // 2), 0)), F32), 2))


# ---------------------------------------------------------------------------------------
# one dispatch point, and whole models
# ---------------------------------------------------------------------------------------
def test_the_dispatch_point_gives_the_same_bytes_on_every_backend():
    rng = np.random.default_rng(1)
    x = activations(rng, 6, 37, "normal")
    w = int8_matrix(rng, (19, 37), "uniform")
    s_w = scales(rng, 19, "normal")
    outs = [rq.kernels.quantize_linear_i8(x, TOKEN, w, s_w, activation="gelu_erf", backend=b)
            for b in rq.kernels.BACKENDS]
    assert all(same_bits(o, outs[0]) for o in outs[1:])
    with pytest.raises(ConfigError, match="unknown kernel backend"):
        rq.kernels.gemm_i8(np.zeros((1, 1), np.int8), np.zeros((1, 1), np.int8), backend="tpu")


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def tiny_model(request, tmp_path_factory):
    from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint
    make = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}[request.param]
    return rq.load(make(tmp_path_factory.mktemp(request.param))[0])


@pytest.mark.parametrize("recipe", rq.RECIPES)
def test_whole_model_cuda_backend_equals_numpy(tiny_model, recipe):
    from test_recipes import GROUPS, batches
    model, family = tiny_model, tiny_model.family
    qm = rq.quantize_model(model, recipe, calib=batches(model), num_groups=GROUPS[family], progress=False)
    ids = batches(model, 1, seed=21)[0]
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    want = qm.forward(ids, mask, backend="numpy")
    assert same_bits(qm.forward(ids, mask, backend="cuda"), want)


# ---------------------------------------------------------------------------------------
# the same bytes every time (issue 14)
# ---------------------------------------------------------------------------------------
@pytest.fixture
def preempted_shared_allocation(monkeypatch):
    """Under the simulator, make every shared-memory allocation sleep (yield the GIL) so that
    the other threads of the block run in the middle of it: the interleaving that, a few times
    in a hundred forwards, gave threads of one block different "shared" arrays (_cudasim). The
    np.empty of the module that implements FakeCUDAShared.array is slowed (numba's, or the
    replacement's), not numpy's own: numba cannot compile a function that calls a patched np.empty."""
    if not kc.SIMULATED:
        return
    import time

    from numba.cuda.simulator import kernelapi
    module = sys.modules[kernelapi.FakeCUDAShared.array.__module__]

    class SlowAllocation:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def empty(*args, **kwargs):
            if isinstance(sys._getframe(1).f_locals.get("self"), kernelapi.FakeCUDAShared):
                time.sleep(0.002)
            return np.empty(*args, **kwargs)
    monkeypatch.setattr(module, "np", SlowAllocation())


def test_shared_memory_is_one_array_per_block_when_threads_are_preempted(preempted_shared_allocation):
    """Every kernel's shared arrays (the row reduction, LayerNorm statistics, the GEMM tiles) with
    each thread preempted inside the allocation: the reference's bytes."""
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((3, 40)) * rng.uniform(0.1, 10, (3, 1))).astype(F32)
    gamma, beta = rng.uniform(0.5, 2, 40).astype(F32), rng.standard_normal(40).astype(F32)
    a, w = int8_matrix(rng, (17, 40), "uniform"), int8_matrix(rng, (18, 40), "uniform")
    s_a, s_w, b = scales(rng, 17, "normal"), scales(rng, 18, "normal"), rng.standard_normal(18).astype(F32)
    for name, got, want in [
            ("quantize_dynamic", kc.quantize_dynamic(x, TOKEN), ref.quantize_dynamic(x, TOKEN)),
            ("layer_norm_quantize_per_token", kc.layer_norm_quantize_per_token(x, gamma, beta, 1e-5, TOKEN),
             ref.layer_norm_quantize_per_token(x, gamma, beta, 1e-5, TOKEN)),
            ("linear_i8", (kc.linear_i8(a, s_a, w, s_w, b, "gelu_erf"),), (ref.linear_i8(a, s_a, w, s_w, b, "gelu_erf"),))]:
        assert len(got) == len(want)
        for g, v in zip(got, want):
            assert_bitexact(g, v, name)


def test_models_and_recipes_in_turn_give_the_same_bytes_every_time(tmp_path, preempted_shared_allocation):
    """Three models and six recipes in turn, twice, each cuda forward compared with numpy's bytes (the
    simulator's threads preempted inside every shared-memory allocation)."""
    from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint
    from test_recipes import GROUPS, batches
    make = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}
    models = {family: rq.load(build(tmp_path / family)[0]) for family, build in make.items()}
    runs = []
    for family, recipe in [("llama", "nvidia-ptq-max"), ("gpt2", "zeroquant-w4a8"), ("bert", "q8bert"),
                           ("gpt2", "nvidia-ptq-percentile"), ("llama", "zeroquant-w8a8"), ("bert", "q8bert-dq")]:
        model = models[family]
        qm = rq.quantize_model(model, recipe, calib=batches(model), num_groups=GROUPS[family], progress=False)
        ids = batches(model, 1, seed=21)[0]
        mask = np.ones_like(ids)
        mask[1, 4:] = 0
        runs.append((qm, ids, mask, qm.forward(ids, mask, backend="numpy")))
    for i in range(2 * len(runs)):  # each pair twice, the others in between
        qm, ids, mask, want = runs[i % len(runs)]
        assert same_bits(qm.forward(ids, mask, backend="cuda"), want), (i, qm)


# ---------------------------------------------------------------------------------------
# the GPU's launch shapes, the PTX, and a clean refusal
# ---------------------------------------------------------------------------------------
def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=os.path.dirname(__file__), timeout=600)


@pytest.mark.skipif(not kc.SIMULATED, reason="the simulator's launch shapes are only smaller under the simulator")
def test_gpu_launch_shapes_in_the_simulator():
    """64 x 64 tiles of 16 x 16 threads and 128-thread rows (what a GPU runs), across tile,
    K-step and group edges."""
    done = _run("""
        import numpy as np
        import refquant as rq
        from refquant.kernels import cuda as kc, reference as ref
        assert kc.TPB == 16 and kc.ROW_THREADS == 128, (kc.TPB, kc.ROW_THREADS)
        same = lambda a, b: np.array_equal(a.view(np.uint32), b.view(np.uint32))
        rng = np.random.default_rng(0)
        M, K, N = 65, 70, 66
        a = rng.integers(-128, 128, (M, K), dtype=np.int8)
        w = rng.integers(-128, 128, (N, K), dtype=np.int8)
        s_a = rng.uniform(1e-3, 1, M).astype(np.float32); s_w = rng.uniform(1e-3, 1, N).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        assert same(kc.linear_i8(a, s_a, w, s_w, b, "gelu_erf"), ref.linear_i8(a, s_a, w, s_w, b, "gelu_erf"))
        w4 = rng.integers(-8, 8, (N, K), dtype=np.int8); p = ref.pack_w4(w4)
        s_g = rng.uniform(1e-3, 1, (N, 3)).astype(np.float32)
        assert same(kc.linear_w4a8_groups(a, s_a, p, K, s_g, 24, b), ref.linear_w4a8_groups(a, s_a, p, K, s_g, 24, b))
        x = rng.standard_normal((3, 300)).astype(np.float32)
        g, be = rng.uniform(0.5, 2, 300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
        spec = rq.dialect("deepspeed", granularity="token", dynamic=True)
        out, want = kc.layer_norm_quantize_per_token(x, g, be, 1e-5, spec), ref.layer_norm_quantize_per_token(x, g, be, 1e-5, spec)
        assert same(out[0], want[0]) and np.array_equal(out[1], want[1]) and same(out[2], want[2])
        print("ok")
    """, NUMBA_ENABLE_CUDASIM="1", REFQUANT_CUDASIM_FULL_TILES="1")
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def _nvvm_available() -> bool:
    done = _run("""
        from numba import cuda
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        cuda.compile_ptx(lambda x: None, "void(int32)", cc=(8, 0))
    """, NUMBA_ENABLE_CUDASIM="0")
    return done.returncode == 0


def test_ptx_uses_dp4a_and_no_fma():
    """NVVM contracts a * b + c into an FMA unless each operation is an explicitly rounded
    call, and ptxas may fuse float add / mul that carry no rounding modifier; compile both
    kernels for sm_80 and sm_90 (no GPU needed) and look."""
    if not _nvvm_available():
        pytest.skip("NVVM is not installed (pip install 'refquant[cuda]' brings it)")
    done = _run("""
        import json
        from refquant.kernels import cuda as kc
        out = {}
        for cc in [(8, 0), (9, 0)]:
            for name, ptx in kc.kernel_ptx(cc).items():
                out[f"{name}@{cc[0]}{cc[1]}"] = [dict(kc.ptx_ops(ptx)), dict(kc.contract_violations(ptx))]
        # the rule itself catches what it must
        bad = "fma.rn.f32 %f1, %f2, %f3, %f4;\\nadd.f32 %f1, %f2, %f3;\\nmul.ftz.f32 %f1, %f2, %f3;\\n"
        out["rule"] = [{}, dict(kc.contract_violations(bad.replace("\\n", "\\n    ")))]
        print(json.dumps(out))
    """, NUMBA_ENABLE_CUDASIM="0")
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result.pop("rule")[1]) == {"fma.rn.f32", "add.f32", "mul.ftz.f32"}
    for kernel, (ops, violations) in result.items():
        assert violations == {}, (kernel, violations)
    for cc in ("80", "90"):
        linear, rows = result[f"_linear_kernel@{cc}"][0], result[f"_rows_kernel@{cc}"][0]
        assert linear.get("dp4a.s32.s32", 0) >= 16
        assert linear.get("mul.rn.f32", 0) and linear.get("add.rn.f32", 0) and linear.get("mul.rn.f64", 0)
        assert rows.get("add.rn.f64", 0) and rows.get("mul.rn.f64", 0) and rows.get("sqrt.rn.f32", 0)


def test_ptx_builds_the_canonical_nan_from_its_bits():
    """Contract rule 12 on the device: every float32 store of both kernels selects the NaN
    0x7FC00000 (``0f7FC00000``: a GPU's own invalid operations write 0x7FFFFFFF), and no other
    NaN immediate is in the PTX."""
    if not _nvvm_available():
        pytest.skip("NVVM is not installed (pip install 'refquant[cuda]' brings it)")
    done = _run("""
        import json
        from refquant.kernels import cuda as kc
        out = {name: [dict(kc.ptx_nan_immediates(ptx)), ptx.count("selp.f32")]
               for name, ptx in kc.kernel_ptx((9, 0)).items()}
        out["rule"] = dict(kc.ptx_nan_immediates("mov.f32 %f1, 0f7FFFFFFF; mov.f32 %f2, 0f7F800000; "
                                                 "selp.f32 %f3, 0f7FC00000, %f4, %p1; mov.f32 %f5, 0fFFC00000;"))
        print(json.dumps(out))
    """, NUMBA_ENABLE_CUDASIM="0")
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("rule") == {"0f7FFFFFFF": 1, "0f7FC00000": 1, "0fFFC00000": 1}  # inf is no NaN
    for kernel, (nans, selects) in result.items():
        assert set(nans) == {"0f7FC00000"} and selects >= nans["0f7FC00000"] > 0, (kernel, nans, selects)


# a subprocess's last step: one cuda launch, printing the backend's refusal (one sentence)
_PRINT_CUDA_REFUSAL = """
import numpy as np
import refquant as rq
try:
    rq.kernels.gemm_i8(np.zeros((1, 1), np.int8), np.zeros((1, 1), np.int8), backend="cuda")
except rq.ConfigError as e:
    print("refused:", e)
"""


def test_without_a_gpu_the_backend_refuses_in_one_clear_sentence():
    done = _run("""
        from refquant.kernels import cuda as kc
        if kc.available():
            print("GPU")
        else:
            exec(REFUSAL)
    """.replace("REFUSAL", repr(_PRINT_CUDA_REFUSAL)), NUMBA_ENABLE_CUDASIM="0")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip()
    if out == "GPU":
        pytest.skip("this machine has a GPU")
    assert out.startswith("refused: backend 'cuda': ") and "\n" not in out


def test_numpy_without_row_stack_is_refused_in_one_sentence():
    """numpy 2.5 removed np.row_stack, which numba-cuda <= 0.30.4 still names when its CUDA target
    loads (pyproject's cuda and test extras keep numpy < 2.5). Simulated here by removing it from
    numpy 2.4 before anything imports it: the backend says why, in one sentence, not a traceback."""
    done = _run("""
        import numpy as np
        np.__dict__.pop("row_stack", None)
        if "row_stack" in np.__all__:
            np.__all__.remove("row_stack")
        try:
            from numba.cuda.np import arrayobj
            print("loads")
        except AttributeError:
            exec(REFUSAL)
    """.replace("REFUSAL", repr(_PRINT_CUDA_REFUSAL)), NUMBA_ENABLE_CUDASIM="0")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip()
    if out == "loads":
        pytest.skip("this numba-cuda loads without np.row_stack")
    assert out.startswith("refused: backend 'cuda': numba-cuda ") and "numpy<2.5" in out and "\n" not in out


def test_gpu_check_script():
    """validation/gpu_check.py: its small-shape simulator run passes; without a GPU (and
    without the simulator) it says so in one line and exits 2."""
    script = os.path.join(os.path.dirname(__file__), "..", "validation", "gpu_check.py")
    done = subprocess.run([sys.executable, script, "--simulator"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("all identical"), done.stdout[-2000:] + done.stderr[-2000:]
    assert "MISMATCH" not in done.stdout
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    if done.returncode != 2 and "compute capability" in done.stdout:
        pytest.skip("this machine has a GPU")
    assert done.returncode == 2 and done.stderr.startswith("gpu_check: no GPU") and done.stderr.count("\n") == 1
    done = subprocess.run([sys.executable, script, "--sanitize"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, check=False)  # --sanitize: the real GPU
    if done.returncode != 2 and "compute-sanitizer" in done.stdout:
        pytest.skip("this machine has a GPU")
    assert done.returncode == 2 and done.stderr.startswith("gpu_check: no GPU") and done.stderr.count("\n") == 1


@pytest.mark.parametrize("racecheck, memcheck, failures", [
    ("RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)", "ERROR SUMMARY: 0 errors", 0),
    ("RACECHECK SUMMARY: 3 hazards displayed (0 errors, 3 warnings)", "ERROR SUMMARY: 0 errors", 1),
    ("RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)", "ERROR SUMMARY: 2 errors", 1),
    ("", "ERROR SUMMARY: 0 errors", 1)])  # no summary: the sanitizer did not report, nothing is proven
def test_gpu_check_sanitize_fails_on_any_hazard_or_error(tmp_path, monkeypatch, racecheck, memcheck, failures):
    """gpu_check --sanitize's verdict, with a stand-in compute-sanitizer on PATH that prints the
    real tool's summary lines (the real one needs a GPU)."""
    fake = tmp_path / "compute-sanitizer"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "========= COMPUTE-SANITIZER"
        if [ "$2" = racecheck ]; then echo "========= {racecheck}"; else echo "========= {memcheck}"; fi
        """))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "validation"))
    import gpu_check
    assert gpu_check.find_sanitizer() == str(fake)
    assert gpu_check.sanitize() == failures
    assert gpu_check.sanitizer_verdict("========= ERROR SUMMARY: 0 errors\n", 99)[0] is False  # its --error-exitcode


def test_validate_cli_golden_dump_from_the_cuda_backend_equals_numba(tmp_path):
    """python -m refquant.validate --backend cuda writes golden tensors that --compare finds
    identical, tensor for tensor, to the numba backend's run."""
    from test_models_small import bert_checkpoint
    path, _ = bert_checkpoint(tmp_path / "bert")
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 60, size=(2, 6)))
    common = [str(path), "--ids", str(tmp_path / "ids.npy"), "--recipe", "nvidia-ptq-max", "--recipe", "q8bert-dq"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "refquant.validate", *common, *args], capture_output=True,
                              text=True, timeout=900, cwd=os.path.join(os.path.dirname(__file__), ".."))
    r = cli("--backend", "cuda", "--dump", str(tmp_path / "cuda.st"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("--backend", "numba", "--compare", str(tmp_path / "cuda.st"))
    assert r.returncode == 0 and "0 beyond tolerance" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
