"""Post-training quantization of SmolLM2-135M-Instruct: perplexity on held-out Wikipedia text.

Text: gensim's Wikipedia excerpt (validation/textdata.py), tokenized with the checkpoint's
tokenizer. Calibration: tokens 0..1023 as 8 sequences of 128. Evaluation: perplexity on
tokens 2048..2048+TOKENS (never seen in calibration), sliding window 512, stride 256, for
float32, zeroquant-w8a8 (64 row groups, DeepSpeed's GPT-2 default; and with BERT's 48),
every nvidia-ptq-* recipe and the weight-only baselines, plus the
top-1 agreement and KL of next-token distributions to float on the first window.
Note (docs/data.md): SmolLM2's float weights come from a Q4_1 GGUF (4-bit, blocks of 32 along
the input), so they sit on a 4-bit grid; no recipe here uses that grid exactly.
Then sensitivity analysis of zeroquant-w8a8 (one site quantized at a time, scored by the
next-token KL to float on tokens 1024..1279) and its partial versions with the 3 and 6 most
sensitive sites left float.
Target (issue 4): zeroquant-w8a8 within +3 % of float perplexity.
Needs the converted checkpoint: python validation/import_smollm2.py
Run: python validation/ptq_smollm2.py   (writes validation/results/ptq_smollm2.txt)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from textdata import SMOLLM2_DIR, need_smollm2, need_wiki_text  # noqa: E402

import refquant as rq  # noqa: E402

PARTIAL = 6
RECIPES = ("zeroquant-w8a8", "zeroquant-w8a8/48", "nvidia-ptq-max", "nvidia-ptq-entropy", "nvidia-ptq-percentile", "nvidia-ptq-mse",
           "w8a16-channel", "zeroquant-w4a16", "w4a16-g128")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(SMOLLM2_DIR))
    ap.add_argument("--tokens", type=int, default=2048, help="held-out tokens for perplexity")
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    need_smollm2(args.checkpoint)
    text = need_wiki_text(60000)
    lines = []

    def say(msg=""):
        print(msg, flush=True)
        lines.append(msg)

    m = rq.load(args.checkpoint)
    ids = m.encode(text)["input_ids"][0]
    if ids.size < 2048 + args.tokens:
        print(f"error: the Wikipedia text gave only {ids.size} tokens", file=sys.stderr)
        return 2
    calib = [ids[i:i + 128][None] for i in range(0, 1024, 128)]
    held_out = ids[2048:2048 + args.tokens]
    kw = dict(window=args.window, stride=args.window // 2)
    t0 = time.time()
    ppl_f = rq.analysis.perplexity(m, held_out, **kw)
    first = held_out[:args.window][None]
    logits_f = m.forward(first)
    say(f"SmolLM2-135M-Instruct PTQ: calibration 8 x 128 Wikipedia tokens; perplexity on {args.tokens} held-out "
        f"tokens (window {args.window}, stride {args.window // 2}); refquant {rq.__version__}; quantized models on "
        "backend numba (the real integer path)")
    say(f"{'model':24s} {'perplexity':>10s} {'vs float':>9s} {'top-1 agree':>11s} {'KL nats':>8s} {'time s':>7s}")
    say(f"{'float32':24s} {ppl_f:10.3f} {'':>9s} {'':>11s} {'':>8s} {time.time() - t0:7.1f}")
    result = {}
    for name in RECIPES:
        t0 = time.time()
        base, _, groups = name.partition("/")  # "/48": BERT's group count, for comparison
        qm = rq.quantize_model(m, base, calib=calib, **({"num_groups": int(groups)} if groups else {}))
        ppl = rq.analysis.perplexity(qm, held_out, **kw)
        logits = qm.forward(first)
        agree = rq.analysis.top1_agreement(logits_f, logits)
        kl = rq.analysis.logit_kl(logits_f, logits)
        result[name] = ppl
        say(f"{name:24s} {ppl:10.3f} {(ppl - ppl_f) / ppl_f:+9.2%} {agree:11.4f} {kl:8.4f} {time.time() - t0:7.1f}")
    zq = (result["zeroquant-w8a8"] - ppl_f) / ppl_f
    say(f"zeroquant-w8a8 perplexity {zq:+.2%} vs float (target <= +3 %: {'met' if zq <= 0.03 else 'NOT met'})")
    t0 = time.time()
    sens_data = [ids[1024:1024 + 256][None]]  # neither calibration nor evaluation text
    report = rq.analysis.sensitivity(m, "zeroquant-w8a8", sens_data)
    say(report.table(top=PARTIAL))
    for k in (PARTIAL // 2, PARTIAL):
        ppl = rq.analysis.perplexity(report.partial_model(k), held_out, **kw)
        say(f"zeroquant-w8a8 with the {k} most sensitive of {len(report.ranking)} sites left float: perplexity "
            f"{ppl:.3f} ({(ppl - ppl_f) / ppl_f:+.2%} vs float)")
    say(f"(sensitivity scored by minus the mean next-token KL to float on tokens 1024..1279; {time.time() - t0:.0f} s)")
    out = HERE / "results" / "ptq_smollm2.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
