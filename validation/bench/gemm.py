"""int8 GEMM speed: refquant.kernels.cpu against NumPy float32, ONNX Runtime and PyTorch.

Shapes M x K x N (activations [M, K], weights [N, K]): BERT-base / MiniLM-sized layers at 128
and 2048 tokens, one 256-token layer, and two decode shapes (M = 1, 8) of a 7B-class model.
Competitors, measured side by side in one process (each round calls every competitor once, the
order rotating from round to round; the median of ROUNDS rounds is printed, after WARMUP calls):

  rq int8 amx       refquant.kernels.cpu.gemm_i8 on prepacked weights, int32 out, path "amx"
                    (AMX TDPBUSD tiles; M < 32 runs the VNNI kernel); only where AMX is usable
  rq int8 vnni      the same, path "vnni" (AVX-512 VNNI vpdpbusd micro-kernels)
  rq int8 portable  the same, path "portable" (plain int32 loops; PORTABLE_ROUNDS rounds)
  rq q+gemm+epi     cpu.quantize_linear_i8, default path: per-token dynamic quantization
                    (ZeroQuant's rq.dialect("deepspeed", granularity="token", dynamic=True)) +
                    int8 GEMM + float32 epilogue (per-token x per-channel scales, + bias),
                    float32 out
  numpy fp32        x @ w.T in float32 (OpenBLAS)
  ort MatMulInteger ONNX Runtime MatMulInteger, uint8 activations (zero point 128) x int8 weights
                    [K, N] (its fast path), int32 out
  ort dynamic       DynamicQuantizeLinear + MatMulInteger + Cast + Mul (per-channel weight scales)
                    + Add bias: the graph onnxruntime.quantization.quantize_dynamic writes; ORT's
                    optimizer fuses it (DynamicQuantizeMatMul / MatMulIntegerToFloat)
  torch dyn Linear  torch.ao.nn.quantized.dynamic.Linear (qint8 per-channel weights, default
                    quantized engine), float32 out

GOP/s = 2 M N K / time. Ratios: refquant's default int8 GEMM (amx where usable, else vnni)
vs NumPy fp32 and vs ORT MatMulInteger; the quantize + GEMM + epilogue path vs ORT's dynamic
path and vs PyTorch's dynamic Linear.

Threads: the script runs itself once per thread count (2, then 1) in a fresh subprocess whose
environment fixes every runtime's pool: NUMBA_NUM_THREADS (refquant's kernels cut their work
into numba.get_num_threads() parts), OPENBLAS/OMP/MKL_NUM_THREADS, ORT intra_op_num_threads,
torch.set_num_threads. Idle pools must not spin on 2 cores (the next competitor would lose a
core): OPENBLAS_THREAD_TIMEOUT=4, OMP_WAIT_POLICY=PASSIVE, ORT session.intra_op.allow_spinning=0.

Before timing, each shape checks that every path gives identical int32 results (and identical
float32 bytes for the quantize + GEMM + epilogue path), that ORT's MatMulInteger gives the same
int32 results, and for the smaller shapes that they equal an int64 NumPy matmul.

Everything printed is written to validation/results/gemm_bench.txt.
Run: /work/venv/bin/python validation/bench/gemm.py [--rounds 9]
"""
from __future__ import annotations

import argparse
import os
import warnings
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULT = os.path.join(ROOT, "validation", "results", "gemm_bench.txt")

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (2048, 768, 3072),
          (256, 384, 1536), (1, 4096, 4096), (8, 4096, 11008)]
ROUNDS = 9
WARMUP = 2
PORTABLE_ROUNDS = 3
THREADS = (2, 1)


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["OPENBLAS_THREAD_TIMEOUT"] = "4"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------------------------
# one thread count (runs in the subprocess)
# ---------------------------------------------------------------------------------------------
def _ort_sessions(M, K, N, w, w_scale, bias, threads):
    """(MatMulInteger session, dynamic-quantization session) or (None, None)."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None, None
    wt = np.ascontiguousarray(w.T)  # [K, N]

    def session(graph):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    mmi = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])], "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [M, K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [M, N])],
        [numpy_helper.from_array(wt, "B"), numpy_helper.from_array(np.array(128, np.uint8), "a_zp")])
    dyn = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["X"], ["Xq", "Xs", "Xzp"]),
         helper.make_node("MatMulInteger", ["Xq", "B", "Xzp"], ["Yi"]),
         helper.make_node("Cast", ["Yi"], ["Yf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["Xs", "Ws"], ["S"]),
         helper.make_node("Mul", ["Yf", "S"], ["Ys"]),
         helper.make_node("Add", ["Ys", "bias"], ["Y"])], "dyn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [M, N])],
        [numpy_helper.from_array(wt, "B"), numpy_helper.from_array(w_scale, "Ws"),
         numpy_helper.from_array(bias, "bias")])
    return session(mmi), session(dyn)


def _torch_linear(K, N, w, w_scale, bias, threads):
    try:
        import numpy as np
        import torch
    except ImportError:
        return None, None
    torch.set_num_threads(threads)
    lin = torch.ao.nn.quantized.dynamic.Linear(K, N, dtype=torch.qint8)
    wq = torch.quantize_per_channel(torch.from_numpy(w.astype(np.float32) * w_scale[:, None]),
                                    torch.from_numpy(w_scale.astype(np.float64)),
                                    torch.zeros(N, dtype=torch.int64), 0, torch.qint8)
    lin.set_weight_bias(wq, torch.from_numpy(bias))
    return lin, torch


def worker(threads: int, rounds: int) -> None:
    import numpy as np

    import refquant as rq
    from refquant._numba import numba
    from refquant.kernels import cpu

    numba.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # torch's quantized-tensor deprecation
    spec = rq.dialect("deepspeed", granularity="token", dynamic=True)
    say = lambda s="": print(s, flush=True)  # noqa: E731
    try:
        import onnxruntime as ort
        ort_version = ort.__version__
    except ImportError:
        ort_version = "not installed"
    try:
        import torch
        torch_version = f"{torch.__version__} (quantized engine {torch.backends.quantized.engine})"
    except ImportError:
        torch_version = "not installed"
    env = " ".join(f"{v}={os.environ.get(v)}" for v in (
        "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
        "OPENBLAS_THREAD_TIMEOUT"))
    say(f"## {threads} thread{'s' if threads > 1 else ''}: {env}")
    say(f"refquant path: {cpu.DEFAULT_PATH} (AVX-512 VNNI: {cpu.HAVE_VNNI}); numba {numba.__version__} "
        f"threading layer {numba.config.THREADING_LAYER} (kernels use refquant.kernels._pool); "
        f"numpy {np.__version__}; onnxruntime {ort_version}; torch {torch_version}")
    say(f"medians of {rounds} rounds (portable: {min(rounds, PORTABLE_ROUNDS)}), GOP/s = 2MNK/t")
    say()
    fast = [p for p, ok in (("amx", cpu.HAVE_AMX), ("vnni", cpu.HAVE_VNNI)) if ok]
    names = [f"rq int8 {p}" for p in fast] + [
        "rq int8 portable", "rq q+gemm+epi", "numpy fp32", "ort MatMulInteger", "ort dynamic",
        "torch dyn Linear"]
    best = names[0]
    header = f"{'M x K x N':>16} " + " ".join(f"{n:>17}" for n in names)
    say(header)
    summary = []
    for M, K, N in SHAPES:
        rng = np.random.default_rng(M * 7 + K * 3 + N)
        x = rng.standard_normal((M, K)).astype(np.float32)
        a = rng.integers(-128, 128, (M, K), dtype=np.int8)
        w = rng.integers(-127, 128, (N, K), dtype=np.int8)
        w_scale = (rng.random(N).astype(np.float32) + np.float32(0.5)) * np.float32(0.01)
        bias = rng.standard_normal(N).astype(np.float32)
        wf = w.astype(np.float32) * w_scale[:, None]
        a_u8 = (a.astype(np.int16) + 128).astype(np.uint8)
        pw = cpu.prepack(w)
        # exactness first
        g_port = cpu.gemm_i8(a, w, path="portable")
        for path in fast:
            assert np.array_equal(cpu.gemm_i8(a, pw, path=path), g_port), (M, K, N, path)
        if M * N * K <= 2 ** 28:
            assert np.array_equal(g_port, (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32))
        y_port = cpu.quantize_linear_i8(x, spec, w, w_scale, bias, path="portable")
        for path in fast:
            y = cpu.quantize_linear_i8(x, spec, pw, w_scale, bias, path=path)
            assert np.array_equal(y.view(np.uint32), y_port.view(np.uint32)), (M, K, N, path)

        fns = {f"rq int8 {p}": (lambda p=p: cpu.gemm_i8(a, pw, path=p)) for p in fast}
        fns.update({
            "rq int8 portable": lambda: cpu.gemm_i8(a, w, path="portable"),
            "rq q+gemm+epi": lambda: cpu.quantize_linear_i8(x, spec, pw, w_scale, bias),
            "numpy fp32": lambda: np.matmul(x, wf.T),
        })
        s_mmi, s_dyn = _ort_sessions(M, K, N, w, w_scale, bias, threads)
        if s_mmi is not None:
            assert np.array_equal(s_mmi.run(None, {"A": a_u8})[0], g_port)
            fns["ort MatMulInteger"] = lambda: s_mmi.run(None, {"A": a_u8})
            fns["ort dynamic"] = lambda: s_dyn.run(None, {"X": x})
        lin, torch = _torch_linear(K, N, w, w_scale, bias, threads)
        if lin is not None:
            xt = torch.from_numpy(x)

            def torch_call():
                with torch.no_grad():
                    return lin(xt)
            fns["torch dyn Linear"] = torch_call
        times = {k: [] for k in fns}
        for f in fns.values():
            for _ in range(WARMUP):
                f()
        order = list(fns)
        for r in range(rounds):
            k = r % len(order)
            for name in order[k:] + order[:k]:
                if name == "rq int8 portable" and len(times[name]) >= PORTABLE_ROUNDS:
                    continue
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
        ops = 2.0 * M * N * K
        gops = {k: ops / float(np.median(v)) / 1e9 for k, v in times.items()}
        say(f"{f'{M}x{K}x{N}':>16} " + " ".join(
            f"{gops[n]:>17.0f}" if n in gops else f"{'-':>17}" for n in names))
        summary.append(((M, K, N), gops))
    say()
    say(f"ratios (same rounds), int8 = {best}:  int8 / numpy fp32   int8 / ort MatMulInteger   "
        "q+gemm+epi / ort dynamic   q+gemm+epi / torch dyn")
    for (M, K, N), g in summary:
        def ratio(p, q):
            return f"{g[p] / g[q]:.2f}x" if p in g and q in g else "-"
        say(f"{f'{M}x{K}x{N}':>16}   {' ' * len(best)}{ratio(best, 'numpy fp32'):>18}   "
            f"{ratio(best, 'ort MatMulInteger'):>24}   {ratio('rq q+gemm+epi', 'ort dynamic'):>24}"
            f"   {ratio('rq q+gemm+epi', 'torch dyn Linear'):>20}")
    say()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=None, help="(internal) measure one thread count")
    args = parser.parse_args()
    if args.threads is not None:
        worker(args.threads, args.rounds)
        return
    lines = ["# int8 GEMM benchmark (validation/bench/gemm.py)",
             f"# {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, "
             f"python {platform.python_version()}", ""]
    for line in lines:
        print(line)
    for threads in THREADS:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--threads", str(threads),
                               "--rounds", str(args.rounds)], env=_env(threads), capture_output=True,
                              text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"the {threads}-thread run failed (exit {proc.returncode})")
        lines += proc.stdout.rstrip("\n").split("\n") + [""]
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print(f"written to {os.path.relpath(RESULT, ROOT)}")


if __name__ == "__main__":
    main()
