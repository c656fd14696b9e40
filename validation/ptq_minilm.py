"""Post-training quantization of all-MiniLM-L6-v2 with every recipe, on real text.

Calibration: the first 64 sentences of gensim's Wikipedia excerpt (validation/textdata.py),
in batches of 16. Evaluation: the next 256 sentences (never seen in calibration): sentence
embeddings (sentence-transformers' mean pooling) of the quantized model against float32,
cosine mean and min; the two embedding tasks of docs/data.md (Lee 2005 document similarity,
Pearson; WordSim-353, Spearman) with their relative change from float; the fraction of
activation codes at qmin/qmax (static and dynamic inputs, over the evaluation run); the time
to quantize (calibration included) and to embed the evaluation set.

Then sensitivity analysis (NVIDIA section 5.1) for nvidia-ptq-max: one site quantized at a
time, scored by mean embedding cosine on sentences 320..383; the partial recipe leaving the
3 most sensitive sites float is evaluated on the 256 evaluation sentences beside the full one.

Target (issue 4): zeroquant-w8a8 mean cosine >= 0.995; the best W8A8 recipe within 1 %
relative of float on both tasks. For comparison, docs/data.md quotes ONNX Runtime's dynamic
int8 at mean cosine 0.967 (min 0.951) and PyTorch's at 0.949 (min 0.919) on this model.
Exit 1 when a target is missed or the partial recipe does not beat the full one.
Run: python validation/ptq_minilm.py [--out FILE]   (default validation/results/ptq_minilm.txt)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from textdata import need_minilm, need_wiki_sentences  # noqa: E402

import refquant as rq  # noqa: E402
from refquant.sensitivity import sensitivity  # noqa: E402

RESULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ptq_minilm.txt")
W8A8 = ("nvidia-ptq-max", "nvidia-ptq-entropy", "nvidia-ptq-percentile", "nvidia-ptq-mse", "q8bert-dq",
        "q8bert", "zeroquant-w8a8")
_lines: list[str] = []


def out(line=""):
    print(line, flush=True)
    _lines.append(line)


def batches(model, texts, size=16):
    return [model.encode(texts[i:i + size]) for i in range(0, len(texts), size)]


def saturation(qm) -> float:
    sat = sum(v[0] for v in qm.saturation.values())
    total = sum(v[1] for v in qm.saturation.values())
    return sat / total if total else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=RESULT, help="where to write the table")
    args = ap.parse_args()
    path = need_minilm()
    sentences = need_wiki_sentences(384)
    calib_text, eval_text, sens_text = sentences[:64], sentences[64:320], sentences[320:384]
    m = rq.load(path)
    calib = batches(m, calib_text)
    embed_ref = rq.analysis.sentence_embedder(m)
    ref = embed_ref(eval_text)
    lee_f, ws_f = rq.analysis.lee2005_pearson(embed_ref), rq.analysis.wordsim353_spearman(embed_ref)
    out(f"all-MiniLM-L6-v2 PTQ: calibration 64 Wikipedia sentences, evaluation 256 others; refquant {rq.__version__}; "
        "quantized models run their default backend (numba: the real integer path; fake-quant for "
        "weight-only recipes' float GEMMs)")
    out(f"float32: Lee-2005 Pearson {lee_f:.4f}, WordSim-353 Spearman {ws_f:.4f}")
    out(f"{'recipe':29s} {'cos mean':>9s} {'cos min':>8s} {'Lee':>7s} {'rel':>7s} {'WS353':>7s} {'rel':>7s} "
        f"{'sat':>8s} {'quant s':>7s} {'eval s':>6s}")
    rows = {}
    for name in rq.RECIPES + ("nvidia-ptq-percentile+gelu10",):
        base, _, extra = name.partition("+")
        t0 = time.time()
        qm = rq.quantize_model(m, base, calib=calib, gelu10=extra == "gelu10")
        t1 = time.time()
        qm.saturation = {}
        embed = rq.analysis.sentence_embedder(qm)
        cos = rq.analysis.cosine(ref, embed(eval_text))
        t2 = time.time()
        sat = saturation(qm)
        qm.saturation = None
        lee, ws = rq.analysis.lee2005_pearson(embed), rq.analysis.wordsim353_spearman(embed)
        rows[name] = (cos.mean(), lee, ws)
        sat_text = "-" if np.isnan(sat) else f"{sat:.2e}"
        out(f"{name:29s} {cos.mean():9.5f} {cos.min():8.5f} {lee:7.4f} {(lee - lee_f) / lee_f:+7.2%} {ws:7.4f} "
            f"{(ws - ws_f) / ws_f:+7.2%} {sat_text:>8s} {t1 - t0:7.1f} {t2 - t1:6.1f}")
    zq = rows["zeroquant-w8a8"][0]
    out(f"zeroquant-w8a8 mean cosine {zq:.5f} (target >= 0.995: {'met' if zq >= 0.995 else 'NOT met'})")
    best = max(W8A8, key=lambda n: rows[n][0])
    _, lee, ws = rows[best]
    within = abs(lee - lee_f) / lee_f <= 0.01 and abs(ws - ws_f) / ws_f <= 0.01
    out(f"best W8A8 recipe by cosine: {best}; Lee {(lee - lee_f) / lee_f:+.2%}, WordSim {(ws - ws_f) / ws_f:+.2%} "
        f"(target within 1 %: {'met' if within else 'NOT met'})")
    out("quoted from docs/data.md, not run here: ONNX Runtime dynamic int8 cosine 0.967 (min 0.951), "
        "PyTorch dynamic int8 0.949 (min 0.919)")

    out()
    t0 = time.time()
    report = sensitivity(m, "nvidia-ptq-max", batches(m, sens_text), calib=calib)
    out(report.table(top=8))
    out(f"(sensitivity over {len(report.ranking)} sites in {time.time() - t0:.0f} s)")
    full = rq.analysis.sentence_embedder(report.quantized)
    partial = rq.analysis.sentence_embedder(report.partial_model(3))
    c_full, c_part = rq.analysis.cosine(ref, full(eval_text)), rq.analysis.cosine(ref, partial(eval_text))
    out(f"nvidia-ptq-max on the 256 evaluation sentences: all sites quantized cosine {c_full.mean():.5f} "
        f"(min {c_full.min():.5f}); 3 most sensitive left float {c_part.mean():.5f} (min {c_part.min():.5f})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(_lines) + "\n")
    print(f"written to {args.out}")
    return 0 if zq >= 0.995 and within and c_part.mean() > c_full.mean() else 1


if __name__ == "__main__":
    sys.exit(main())
