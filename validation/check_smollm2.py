"""refquant's Llama forward on the real SmolLM2-135M-Instruct, against transformers.

Needs the converted checkpoint (python validation/import_smollm2.py writes it to
~/.cache/refquant/smollm2-135m-instruct) and, for the comparison, torch + transformers.
Prints: logits max|diff| / max|ref| on real text (with a padded batch), perplexity on
Wikipedia text by refquant and by transformers over the same windows, and refquant's greedy
completion of "The capital of France is". Writes validation/results/smollm2.txt.
Exit 1 if the logits differ by more than 1e-5 x max|ref| or the completion lacks "Paris".
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from textdata import SMOLLM2_DIR, need_smollm2, need_wiki_text  # noqa: E402

import refquant as rq  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(SMOLLM2_DIR))
    ap.add_argument("--tokens", type=int, default=1024, help="tokens of Wikipedia text for perplexity")
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    need_smollm2(args.checkpoint)
    text = need_wiki_text()
    lines, failed = [], False

    def say(msg):
        print(msg)
        lines.append(msg)

    t0 = time.perf_counter()
    model = rq.load(args.checkpoint)
    say(f"refquant: {model} loaded in {time.perf_counter() - t0:.2f} s")
    ids = model.encode(text)["input_ids"][0][: args.tokens]

    t0 = time.perf_counter()
    ppl = rq.analysis.perplexity(model, ids, window=args.window)
    say(f"perplexity, {ids.size} Wikipedia tokens, window {args.window}, stride {args.window // 2}: "
        f"refquant {ppl:.4f} [{time.perf_counter() - t0:.1f} s]")
    t0 = time.perf_counter()
    completion = rq.analysis.greedy_generate(model, "The capital of France is", max_new_tokens=6)
    say(f"greedy: {completion!r} [{time.perf_counter() - t0:.1f} s]")
    if "Paris" not in completion:
        say("FAIL: the completion does not contain 'Paris'")
        failed = True

    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError as e:
        say(f"transformers comparison skipped ({e})")
    else:
        torch.set_num_threads(2)
        hf = LlamaForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
        batch = model.encode([text[:600], text[700:1000], "The capital of France is"])
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(batch["input_ids"]),
                     attention_mask=torch.from_numpy(batch["attention_mask"])).logits.numpy()
        got = model.forward(batch["input_ids"], batch["attention_mask"])
        real = batch["attention_mask"].astype(bool)
        rel = float(np.abs(got - ref)[real].max() / np.abs(ref[real]).max())
        say(f"logits vs transformers (3 texts, padded to {batch['input_ids'].shape[1]} tokens, real "
            f"positions): max|diff| / max|ref| = {rel:.2e}; argmax agreement "
            f"{float(np.mean(got.argmax(-1)[real] == ref.argmax(-1)[real])):.4f}")
        if rel > 1e-5:
            say("FAIL: logits differ by more than 1e-5 x max|ref|")
            failed = True
        nll, count = 0.0, 0
        with torch.no_grad():  # the same windows as rq.analysis.perplexity
            prev_end = 0
            for begin in range(0, ids.size, args.window // 2):
                end = min(begin + args.window, ids.size)
                chunk = torch.from_numpy(ids[begin:end][None])
                logp = torch.log_softmax(hf(input_ids=chunk).logits[0].double(), -1).numpy()
                first = max(prev_end - begin, 1)
                targets = np.arange(first, end - begin)
                nll -= float(logp[targets - 1, ids[begin:end][targets]].sum())
                count += targets.size
                prev_end = end
                if end == ids.size:
                    break
        say(f"perplexity by transformers over the same windows: {float(np.exp(nll / count)):.4f}")
    out = HERE / "results" / "smollm2.txt"
    out.write_text("# python validation/check_smollm2.py\n" + "\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
