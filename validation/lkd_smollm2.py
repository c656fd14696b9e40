"""ZeroQuant LKD on SmolLM2-135M-Instruct with zeroquant-w4a8 (issue 7's targets): the share of
the perplexity gap between W4/8-A8 and float that distillation recovers, on Wikipedia tokens
never used for distillation, with real and with random distillation data; peak memory.

Distillation data: Wikipedia tokens 0..4095 as 64 sequences of 64 (real), or 64 sequences of 64
uniformly random token ids. Evaluation: perplexity on tokens 8192..10239 (window 512, stride
256). recovered = (ppl_noLKD - ppl_LKD) / (ppl_noLKD - ppl_float). The model is loaded with
stream=True, so that only the block being distilled and the distilled copies are resident.

Run: /work/venv/bin/python validation/lkd_smollm2.py [--steps 32] [--lr 1e-4]
(needs the converted checkpoint: python validation/import_smollm2.py). Results:
validation/results/lkd_smollm2.txt; exit status 1 when real-data LKD recovers < 50 %.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import refquant as rq  # noqa: E402
from refquant.train.lkd import lkd, random_batches  # noqa: E402
from textdata import SMOLLM2_DIR, need_smollm2, need_wiki_text  # noqa: E402

RECIPE = "zeroquant-w4a8"


def vm_hwm() -> int:
    """Peak resident set size so far, bytes (Linux VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--memory-only", action="store_true", help="(child) LKD on real text only; print peak RSS")
    args = ap.parse_args()
    need_smollm2()
    text = need_wiki_text(80000)
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)
    m = rq.load(SMOLLM2_DIR, stream=True)
    size = sum(os.path.getsize(SMOLLM2_DIR / f) for f in os.listdir(SMOLLM2_DIR) if f.endswith(".safetensors"))
    ids = m.encode(text)["input_ids"][0]
    real = [{"input_ids": ids[i:i + 512].reshape(8, 64), "attention_mask": np.ones((8, 64), np.int64)}
            for i in range(0, 4096, 512)]
    if args.memory_only:  # what LKD itself holds: no evaluation models, no perplexity logits
        before = vm_hwm()
        lkd(m, RECIPE, real, steps=args.steps, lr=args.lr, progress=False)
        print(f"{before} {vm_hwm()}")
        return 0
    rand = random_batches(m, 64, 64, batch_size=8, seed=0)
    held_out = ids[8192:8192 + 2048]
    kw = dict(window=512, stride=256)
    ppl_f = rq.analysis.perplexity(m, held_out, **kw)
    ppl_0 = rq.analysis.perplexity(rq.quantize_model(m, RECIPE, progress=False), held_out, **kw)
    out(f"LKD on SmolLM2-135M-Instruct, recipe {RECIPE}: {args.steps} Adam steps per block at lr {args.lr}, "
        f"batches of 8 x 64 tokens; perplexity on 2048 held-out Wikipedia tokens (window 512, stride 256)")
    out(f"  {'model':34s} {'perplexity':>10s} {'vs float':>9s} {'recovered':>10s} {'LKD s':>7s} {'s/block':>8s}")
    out(f"  {'float32':34s} {ppl_f:10.3f}")
    out(f"  {'W4/8A8, no LKD':34s} {ppl_0:10.3f} {(ppl_0 - ppl_f) / ppl_f:+9.2%}")
    recovered = {}
    for name, data in (("W4/8A8 + LKD, real text (4096 tok)", real), ("W4/8A8 + LKD, random ids (4096)", rand)):
        t = time.perf_counter()
        distilled, report = lkd(m, RECIPE, data, steps=args.steps, lr=args.lr)
        secs = time.perf_counter() - t
        ppl = rq.analysis.perplexity(rq.quantize_model(distilled, RECIPE, progress=False), held_out, **kw)
        recovered[name] = (ppl_0 - ppl) / (ppl_0 - ppl_f)
        out(f"  {name:34s} {ppl:10.3f} {(ppl - ppl_f) / ppl_f:+9.2%} {recovered[name]:10.1%} {secs:7.0f} "
            f"{secs / len(report):8.1f}")
        del distilled
    child = subprocess.run([sys.executable, __file__, "--memory-only", "--steps", str(args.steps), "--lr", str(args.lr)],
                           capture_output=True, text=True, check=True)
    start, peak = (int(v) for v in child.stdout.split()[-2:])
    out(f"peak resident memory of LKD alone (a fresh process: load with stream=True, data, LKD on real text): "
        f"{peak / 2**20:.0f} MiB = {peak / size:.2f}x the float checkpoint ({size / 2**20:.0f} MiB), of which "
        f"{start / 2**20:.0f} MiB before LKD (interpreter, NumPy, Numba, tokenizer, data); target < 2x")
    whole = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out(f"(this whole script, with perplexity evaluation of four models, peaked at {whole / 2**20:.0f} MiB)")
    ok = recovered["W4/8A8 + LKD, real text (4096 tok)"] >= 0.5 and peak < 2 * size
    out(f"targets (real-data LKD recovers >= 50 % of the perplexity gap; memory < 2x): {'met' if ok else 'MISSED'}")
    (HERE / "results" / "lkd_smollm2.txt").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
