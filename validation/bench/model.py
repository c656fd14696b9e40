"""Whole-model speed of refquant's integer path: all-MiniLM-L6-v2, batch 8 x 128 of real text.

Side by side in one process (round-robin, medians of ROUNDS rounds after warm-up):
  - refquant float32 forward (the reference the integer path must beat),
  - refquant zeroquant-w8a8 with backend="numba" (real int8 GEMMs, per-token dynamic int8
    activations) and backend="numpy" (the integer reference kernels, for scale),
  - ONNX Runtime's dynamic int8 export of the same checkpoint (torch.onnx.export +
    onnxruntime.quantization.quantize_dynamic, QInt8 weights; intra-op threads 2, no spinning),
    when torch, transformers and onnxruntime are installed.
Also prints the bytes the W8A8 model holds for its weights against the float32 model's.
Run: OPENBLAS_THREAD_TIMEOUT=4 python validation/bench/model.py   (writes validation/results/model_bench.txt)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VALIDATION = os.path.dirname(HERE)
sys.path.insert(0, VALIDATION)
sys.path.insert(0, HERE)
from textdata import need_minilm, need_wiki_sentences  # noqa: E402
from forward import real_batch  # noqa: E402

import refquant as rq  # noqa: E402

ROUNDS = 9
RESULT = os.path.join(VALIDATION, "results", "model_bench.txt")
_lines: list[str] = []


def out(line=""):
    print(line, flush=True)
    _lines.append(line)


def bench(fns: dict, rounds=ROUNDS, warmup=2):
    times = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(warmup):
            f()
    names = list(fns)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}, {k: float(np.min(v)) for k, v in times.items()}


def ort_session(model_dir):
    """ONNX Runtime dynamic int8 of the checkpoint, or None (with the reason printed)."""
    try:
        import onnxruntime as ort
        import torch
        import transformers
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        out(f"ONNX Runtime comparison skipped: {e}")
        return None
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, types):
            return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    tmp = tempfile.mkdtemp()
    f32, i8 = os.path.join(tmp, "minilm.onnx"), os.path.join(tmp, "minilm_int8.onnx")
    ids = torch.ones((8, 128), dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(LastHidden(hf), (ids, torch.ones_like(ids), torch.zeros_like(ids)), f32, input_names=names,
                      output_names=["last_hidden_state"], dynamic_axes={k: {0: "b", 1: "t"} for k in names},
                      opset_version=17, dynamo=False)
    quantize_dynamic(f32, i8, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(i8, so, providers=["CPUExecutionProvider"]), ort.__version__


def weight_bytes_float(m) -> int:
    return sum(4 * int(np.prod(s)) for s in m.expected_shapes().values())


def weight_bytes_quantized(qm) -> int:
    """QuantizedModel.resident_weight_bytes: each quantized site's one integer copy (after a
    numba forward: the prepacked one) and scales, the int8 embedding tables, float32 for the rest."""
    return qm.resident_weight_bytes()


def main() -> int:
    model_dir = need_minilm()
    sentences = need_wiki_sentences(256)
    m = rq.load(model_dir)
    b = real_batch(m, sentences, 8)
    qm = rq.quantize_model(m, "zeroquant-w8a8")
    args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
    fns = {"refquant float32": lambda: m.forward(*args),
           "refquant w8a8 numba": lambda: qm.forward(*args, backend="numba"),
           "refquant w8a8 numpy": lambda: qm.forward(*args, backend="numpy")}
    ref_int = qm.forward(*args, backend="numpy")
    same = np.array_equal(qm.forward(*args, backend="numba").view(np.uint32), ref_int.view(np.uint32))
    ort_info = ort_session(str(model_dir))
    if ort_info is not None:
        sess, ort_version = ort_info
        feed = dict(zip(["input_ids", "attention_mask", "token_type_ids"], args))
        fns["onnxruntime dynamic int8"] = lambda: sess.run(None, feed)
    out(f"all-MiniLM-L6-v2, batch 8 x 128 real text; 2 threads; refquant {rq.__version__}"
        + (f"; onnxruntime {ort_version}" if ort_info else ""))
    out(f"backend numba and numpy outputs identical bytes: {same}")
    med, low = bench(fns)
    base = med["refquant float32"]
    for k in fns:
        extra = f"   {base / med[k]:.2f}x refquant float32"
        if "onnxruntime dynamic int8" in med and k != "onnxruntime dynamic int8":
            extra += f", {med['onnxruntime dynamic int8'] / med[k]:.2f}x ORT int8"
        out(f"{k:26s} median {med[k] * 1e3:8.1f} ms  min {low[k] * 1e3:8.1f} ms{extra}")
    qm.forward(*args, backend="numba")
    fb, qb = weight_bytes_float(m), weight_bytes_quantized(qm)
    out(f"weights held: float32 {fb / 2**20:.1f} MiB, zeroquant-w8a8 integer path {qb / 2**20:.1f} MiB "
        f"({qb / fb:.2f}x; target <= 0.35x)")
    with open(RESULT, "w") as f:
        f.write("\n".join(_lines) + "\n")
    print(f"written to {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
