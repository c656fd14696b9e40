"""Forward-pass speed and memory of refquant's float32 BERT on all-MiniLM-L6-v2.

Speed: batch 8 x 128 tokens and batch 1 x 128 of real text (sentences of gensim's Wikipedia
excerpt, validation/textdata.py, joined and cut to 128 tokens with [SEP] last; two
rows of the 8 are single sentences padded to 128), refquant float32 vs PyTorch float32
(transformers AutoModel, eval, no_grad, torch.set_num_threads(2); NumPy's OpenBLAS at 2 threads
too) on the same inputs, measured side by side in one process: 2 warm-up calls each, then
ROUNDS rounds, each timing both (the order alternates per round); the median of each is
printed with the ratio refquant / torch. Without torch only refquant's absolute times are
printed.

Memory: a fresh subprocess WITHOUT torch imports refquant, loads MiniLM, runs one 8 x 128
batch, and reports its peak RSS (VmHWM and ru_maxrss) next to the checkpoint file size and an
estimate of the activations.

If refquant is slower than 1.3x torch on 8 x 128, that subprocess also times refquant alone
(no torch threads in the process) and profiles its forward (cProfile); the time per op is printed.
The machine may be shared: the round-robin keeps both sides under the same load, and the
minimum of the rounds is printed beside the median.

Everything printed is also written to validation/results/forward_bench.txt.
Run: /work/venv/bin/python validation/bench/forward.py
"""
from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
# OpenBLAS's idle workers spin for ~2^28 cycles after each GEMM and take the cores that
# refquant's Numba passes (GELU, layer norm, softmax) need next; 2^4 lets them sleep at once.
# It must be set before NumPy loads OpenBLAS; the README recommends it (printed below).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VALIDATION = os.path.dirname(HERE)
RESULT = os.path.join(VALIDATION, "results", "forward_bench.txt")
sys.path.insert(0, VALIDATION)

from textdata import need_minilm, need_wiki_sentences  # noqa: E402

ROUNDS = 11
WARMUP = 2
T = 128
SLOW = 1.3

_lines: list[str] = []


def out(line: str = "") -> None:
    print(line, flush=True)
    _lines.append(line)


def real_batch(m, sentences, batch=8, width=T):
    """[batch, width] ids / mask / types of real text: rows of consecutive sentences joined and
    cut to ``width`` tokens ([SEP] kept last), except rows 3 and 6: one sentence, padded."""
    tok = m.tokenizer
    sep = tok.token_to_id("[SEP]")
    ids = np.zeros((batch, width), np.int64)
    mask = np.zeros((batch, width), np.int64)
    k = 0
    for row in range(batch):
        if row in (3, 6):
            text = sentences[k]
            k += 1
        else:
            text = ""
            while len(tok.encode(text).ids) < width + 8:
                text += " " + sentences[k]
                k += 1
        e = tok.encode(text.strip()).ids
        if len(e) > width:
            e = e[:width - 1] + [sep]
        ids[row, :len(e)] = e
        mask[row, :len(e)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def bench(fns: dict, rounds=ROUNDS, warmup=WARMUP) -> dict:
    """Median seconds of each callable, timed round-robin (order alternating per round)."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in times.items()}, {name: float(min(v)) for name, v in times.items()}


PROBE = r"""
import cProfile, io, json, os, pstats, resource, sys, time
import numpy as np
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
base = status("VmRSS")
import refquant as rq
imported = status("VmRSS")
m = rq.load(sys.argv[1])
loaded = status("VmRSS")
b = {k: np.asarray(v) for k, v in json.loads(sys.argv[2]).items()}
run = lambda: m.forward(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
t = time.perf_counter()
h = run()
first = time.perf_counter() - t
after = status("VmRSS")
res = {"base": base, "imported": imported, "loaded": loaded, "after": after, "hwm": status("VmHWM"),
       "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
       "torch_imported": "torch" in sys.modules, "first_s": first, "out_shape": list(h.shape)}
if sys.argv[3] != "0":  # timing alone (no torch in the process) and a cProfile of forward
    run()
    times = []
    for _ in range(int(sys.argv[3])):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    res["alone_median_s"], res["alone_min_s"] = float(np.median(times)), float(min(times))
    reps = 3
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        run()
    prof.disable()
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        name = f"{os.path.basename(file)}:{line}({func})" if file != "~" else func
        rows.append([tt / reps, ct / reps, nc // reps, name])
    rows.sort(reverse=True)
    res["profile"] = rows[:16]
    res["profile_total_s"] = sum(r[0] for r in rows) / 1
print(json.dumps(res))
"""


def activation_estimate(cfg, B, T_):
    """Bytes of the largest set of float32 activations alive at once in one encoder layer
    (attention: q, k, v, scores, probabilities; FFN: hidden in, intermediate, gelu temporaries),
    a rough figure: NumPy temporaries of one expression come and go."""
    C, I, H = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    f = 4
    hidden = B * T_ * C * f
    scores = B * H * T_ * T_ * f
    inter = B * T_ * I * f
    attention = 2 * hidden + 3 * hidden + 3 * scores   # x, residual, q/k/v, scores/where/exp+probs
    ffn = 2 * hidden + 4 * inter                        # x, residual, intermediate + gelu temporaries
    return max(attention, ffn), {"hidden": hidden, "scores": scores, "intermediate": inter}


def main() -> int:
    t_start = time.perf_counter()
    model_dir = str(need_minilm())
    sentences = need_wiki_sentences(256)
    import refquant as rq
    m = rq.load(model_dir)
    b8 = real_batch(m, sentences, 8)
    b1 = {k: v[:1] for k, v in b8.items()}
    try:
        import torch
        import transformers
    except ImportError:
        torch = None
    out(f"refquant forward bench: all-MiniLM-L6-v2 float32, {platform.machine()} {os.cpu_count()} CPUs, "
        f"numpy {np.__version__} (OpenBLAS threads {os.environ.get('OPENBLAS_NUM_THREADS')}, OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')})"
        + (f", torch {torch.__version__} (2 threads), transformers {transformers.__version__}"
           if torch else ", no torch"))
    out(f"inputs: real text (gensim enwiki excerpt); 8 x {T}: real tokens per row "
        f"{b8['attention_mask'].sum(1).tolist()}; 1 x {T}: {int(b1['attention_mask'].sum())} real tokens; "
        f"{ROUNDS} rounds after {WARMUP} warm-up calls, median")

    def rq_fn(b):
        return lambda: m.forward(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])

    ratios = {}
    if torch is not None:
        torch.set_num_threads(2)
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        hf = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        impl = hf.config._attn_implementation

        def torch_fn(b):
            tb = {k: torch.from_numpy(v) for k, v in b.items()}

            def run():
                with torch.no_grad():
                    return hf(**tb).last_hidden_state
            return run

        out(f"torch attention implementation: {impl}")
        for label, b in (("8 x 128", b8), ("1 x 128", b1)):
            got = rq_fn(b)()
            with torch.no_grad():
                want = torch_fn(b)().numpy()
            keep = b["attention_mask"].astype(bool)
            rel = np.abs(got - want)[keep].max() / np.abs(want[keep]).max()
            res, low = bench({"refquant": rq_fn(b), "torch": torch_fn(b)})
            ratios[label] = res["refquant"] / res["torch"]
            tokens = b["input_ids"].size
            out(f"{label}: refquant {res['refquant'] * 1e3:7.1f} ms   torch {res['torch'] * 1e3:7.1f} ms   "
                f"ratio refquant/torch {ratios[label]:.2f}   (min of rounds: {low['refquant'] * 1e3:.1f} vs "
                f"{low['torch'] * 1e3:.1f} ms, ratio {low['refquant'] / low['torch']:.2f}; "
                f"{tokens / res['refquant']:.0f} vs {tokens / res['torch']:.0f} tokens/s; "
                f"outputs agree to {rel:.1e} relative)")
    else:
        for label, b in (("8 x 128", b8), ("1 x 128", b1)):
            res, low = bench({"refquant": rq_fn(b)})
            out(f"{label}: refquant {res['refquant'] * 1e3:7.1f} ms median, {low['refquant'] * 1e3:.1f} ms min "
                f"(torch not installed: no ratio)")

    # -- peak memory, fresh process without torch ------------------------------------------------
    slow = bool(ratios) and ratios["8 x 128"] > SLOW
    proc = subprocess.run([sys.executable, "-c", PROBE, model_dir, json.dumps({k: v.tolist() for k, v in b8.items()}),
                           str(ROUNDS if slow or not ratios else 0)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        out(f"memory probe failed: {proc.stderr.strip()[-2000:]}")
        return 1
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    size = os.path.getsize(os.path.join(model_dir, "model.safetensors"))
    act, parts = activation_estimate(m.config, 8, T)
    MB = 1 / 2**20
    out(f"peak RSS (fresh process, torch imported: {mem['torch_imported']}; load + one 8 x {T} forward): "
        f"VmHWM {mem['hwm'] * MB:.0f} MiB (ru_maxrss {mem['ru_maxrss'] * MB:.0f} MiB: on Linux it keeps the parent's "
        f"peak across fork + exec, so VmHWM is the figure)")
    out(f"  RSS: interpreter + numpy {mem['base'] * MB:.0f} MiB -> "
        f"after import refquant {mem['imported'] * MB:.0f} MiB "
        f"-> after rq.load {mem['loaded'] * MB:.0f} MiB -> after forward {mem['after'] * MB:.0f} MiB")
    out(f"  checkpoint model.safetensors {size * MB:.1f} MiB (float32, memory-mapped: pages read count in RSS); "
        f"activation estimate for 8 x {T}: ~{act * MB:.0f} MiB at the widest point "
        f"(hidden {parts['hidden'] * MB:.1f} MiB, scores {parts['scores'] * MB:.1f} MiB, "
        f"intermediate {parts['intermediate'] * MB:.1f} MiB per tensor)")
    read = sum(4 * int(np.prod(shape)) for name, shape in m.expected_shapes().items()
               if name.startswith("encoder.") or "LayerNorm" in name)
    rows = 4 * m.config.hidden_size * (len(np.unique(b8["input_ids"])) + T + 1)
    out(f"  the forward reads {read * MB:.1f} MiB of layer weights + {rows * MB:.1f} MiB of embedding rows "
        f"(memory-mapped pages); peak - after load = {(mem['hwm'] - mem['loaded']) * MB:.0f} MiB = those pages "
        f"+ activations and NumPy temporaries + BLAS work buffers; peak - (import + whole checkpoint) = "
        f"{(mem['hwm'] - mem['imported'] - size) * MB:.0f} MiB")

    # -- refquant alone, and where its time goes when slow -----------------------------------------
    if "alone_median_s" in mem:
        out(f"8 x {T} refquant alone in that torch-free process: median {mem['alone_median_s'] * 1e3:.1f} ms, "
            f"min {mem['alone_min_s'] * 1e3:.1f} ms (first call {mem['first_s'] * 1e3:.0f} ms)")
    if slow:
        out(f"refquant is {ratios['8 x 128']:.2f}x torch on 8 x {T} (> {SLOW}): cProfile of m.forward in the "
            f"torch-free process, per call (sum of tottime {mem['profile_total_s'] * 1e3:.0f} ms under the profiler):")
        out(f"  {'tottime ms':>10s} {'cumtime ms':>10s} {'calls':>6s}  function")
        for tt, ct, nc, name in mem["profile"][:14]:
            out(f"  {tt * 1e3:10.1f} {ct * 1e3:10.1f} {nc:6d}  {name}")
    out(f"(bench time {time.perf_counter() - t_start:.0f} s)")
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        f.write("\n".join(_lines) + "\n")
    print(f"written to {os.path.relpath(RESULT, os.path.dirname(VALIDATION))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
