"""Conformance: refquant's float models (rq.load) vs transformers (PyTorch float32, CPU).

Random-initialised checkpoints (fixed seed, weights drawn with a larger std than the default
and randomized LayerNorm / RMSNorm gains and biases, so that the outputs are not trivially small)
are written with ``save_pretrained(dir, safe_serialization=True)`` into a temporary directory and
read back with ``rq.load``:

  BERT   BertModel, hidden_act gelu: hidden 60 / 5 heads, 64 / 4, 96 / 3 heads; 1-3 layers;
         vocab 100-1000; with and without the pooler (add_pooling_layer). Compared: the last
         hidden state at every position, padded ones included (padded *query* rows attend to
         the real keys in both transformers paths, so they are well defined and compared too).
  GPT-2  GPT2LMHeadModel, activation gelu_new, n_head 3 and 5, tied head (plus one untied).
         Compared: logits at the non-padded positions.
  Llama  LlamaForCausalLM, GQA ratios 1, 3 and 4 (12/12, 9/3, 8/2 heads/kv heads), tied and
         untied heads, rope_theta 10000 and 100000, head_dim default. Compared: logits at the
         non-padded positions.

Inputs: random token ids, a batch of 3 with right padding (rows of length T, T-3, T-7; pad id
at the padded positions, attention_mask zeros there) and a batch of 2 without any mask.
transformers runs each batch twice, with attn_implementation "eager" and "sdpa", in eval mode.

Each Llama checkpoint is also read with its config.json rewritten in transformers 4.x's layout
(top-level ``rope_theta`` instead of 5.x's ``rope_parameters: {rope_theta, rope_type}``), the
padded batch compared again: this separates config reading from the numerics.

Metric: max|refquant - transformers| / max|transformers| over the compared positions; a case
passes when it is <= 1e-5 for both attention implementations. Also checked per model:
``model.sites()`` lists exactly the Linear modules of the HF model (GPT-2's Conv1D count as
Linear), names without the base prefix (bert./transformer./model.), in module order.

Prints one line per case and the final line ``models: N passed, M failed``; exit 1 on any failure.
Run: /work/venv/bin/python validation/conformance/check_models.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.set_threads()

import numpy as np  # noqa: E402

import refquant as rq  # noqa: E402

TOL = 1e-5
SEED = 20260822
T = 17  # tokens per row of the test batches

# (family, label, config kwargs, extra) -- extra: pooler (BERT), tie (decoders)
CASES = [
    ("bert", dict(vocab_size=500, hidden_size=60, num_attention_heads=5, num_hidden_layers=2,
                  intermediate_size=120), dict(pooler=True)),
    ("bert", dict(vocab_size=1000, hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                  intermediate_size=256), dict(pooler=False)),
    ("bert", dict(vocab_size=100, hidden_size=96, num_attention_heads=3, num_hidden_layers=1,
                  intermediate_size=80, type_vocab_size=3), dict(pooler=False)),
    ("gpt2", dict(vocab_size=300, n_embd=48, n_head=3, n_layer=2), dict(tie=True)),
    ("gpt2", dict(vocab_size=700, n_embd=80, n_head=5, n_layer=3, n_inner=144), dict(tie=True)),
    ("gpt2", dict(vocab_size=200, n_embd=60, n_head=5, n_layer=1), dict(tie=False)),
    ("llama", dict(vocab_size=400, hidden_size=96, num_attention_heads=12, num_key_value_heads=12,
                   intermediate_size=160, num_hidden_layers=2, rope_theta=10000.0), dict(tie=False)),
    ("llama", dict(vocab_size=300, hidden_size=144, num_attention_heads=9, num_key_value_heads=3,
                   intermediate_size=200, num_hidden_layers=2, rope_theta=100000.0), dict(tie=True)),
    ("llama", dict(vocab_size=512, hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                   intermediate_size=176, num_hidden_layers=3, rope_theta=10000.0), dict(tie=True)),
    ("llama", dict(vocab_size=256, hidden_size=128, num_attention_heads=8, num_key_value_heads=2,
                   intermediate_size=96, num_hidden_layers=1, rope_theta=100000.0), dict(tie=False)),
]


def build_hf(family, kw, extra, seed):
    """A transformers model (eval, float32) with larger-than-default random weights."""
    import torch
    import transformers as tr
    torch.manual_seed(seed)
    if family == "bert":
        cfg = tr.BertConfig(hidden_act="gelu", max_position_embeddings=64, initializer_range=0.15,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
        model = tr.BertModel(cfg, add_pooling_layer=extra["pooler"])
    elif family == "gpt2":
        cfg = tr.GPT2Config(activation_function="gelu_new", n_positions=64, initializer_range=0.15,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            tie_word_embeddings=extra["tie"], **kw)
        model = tr.GPT2LMHeadModel(cfg)
    else:
        cfg = tr.LlamaConfig(max_position_embeddings=64, initializer_range=0.15, hidden_act="silu",
                             tie_word_embeddings=extra["tie"], **kw)
        model = tr.LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.split(".")[-2] in ("ln_1", "ln_2", "ln_f"):
                # LayerNorm / RMSNorm: gain around 1, bias around 0
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model.float().eval()


def hf_sites(model, family):
    """Names of the HF model's Linear (and GPT-2 Conv1D) modules without the base prefix."""
    import torch
    from transformers.pytorch_utils import Conv1D
    prefix = {"bert": "bert.", "gpt2": "transformer.", "llama": "model."}[family]
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, Conv1D)):
            out.append(name[len(prefix):] if name.startswith(prefix) else name)
    return out


def make_batches(rng, vocab, pad_id, family):
    """(label, ids, mask or None, token_type_ids or None, real-position mask)."""
    lengths = [T, T - 3, T - 7]
    ids = rng.integers(0, vocab, size=(3, T)).astype(np.int64)
    mask = np.zeros((3, T), np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids[mask == 0] = pad_id
    ids2 = rng.integers(0, vocab, size=(2, T - 4)).astype(np.int64)
    types = types2 = None
    if family == "bert":
        types = (rng.random((3, T)) < 0.4).astype(np.int64) * mask
        types2 = (rng.random((2, T - 4)) < 0.4).astype(np.int64)
    return [("padded", ids, mask, types), ("no mask", ids2, None, types2)]


def run_hf(model, impl, ids, mask, types):
    import torch
    model.set_attn_implementation(impl)
    kw = {"input_ids": torch.from_numpy(ids)}
    if mask is not None:
        kw["attention_mask"] = torch.from_numpy(mask)
    if types is not None:
        kw["token_type_ids"] = torch.from_numpy(types)
    with torch.no_grad():
        out = model(**kw)
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") and out.last_hidden_state is not None
            else out.logits).float().numpy()


def rope_diagnostic(path, m):
    """What RoPE base config.json gives and what refquant read (transformers >= 5 writes
    ``rope_parameters: {rope_theta, rope_type}`` instead of top-level ``rope_theta``)."""
    import json
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    on_disk = raw.get("rope_theta", (raw.get("rope_parameters") or {}).get("rope_theta"))
    where = "rope_theta" if "rope_theta" in raw else "rope_parameters.rope_theta"
    return (f"diagnostic: config.json {where}={on_disk}, refquant config.rope_theta={m.config.rope_theta}"
            + ("  <- refquant read the wrong RoPE base" if on_disk != m.config.rope_theta else ""))


def legacy_llama_config(path, dest):
    """A copy of checkpoint ``path`` whose config.json has ``rope_theta`` at the top level (as
    transformers 4.x wrote it) instead of ``rope_parameters``; None if it already had it."""
    import json
    import shutil
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    params = raw.pop("rope_parameters", None)
    if not params or "rope_theta" in raw:
        return None
    raw["rope_theta"] = params["rope_theta"]
    if params.get("rope_type", "default") != "default":
        raw["rope_scaling"] = params
    os.makedirs(dest)
    shutil.copy(os.path.join(path, "model.safetensors"), dest)
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(raw, f)
    return dest


def summary(family, kw, extra):
    if family == "bert":
        return (f"C={kw['hidden_size']} H={kw['num_attention_heads']} L={kw['num_hidden_layers']} "
                f"I={kw['intermediate_size']} V={kw['vocab_size']} pooler={'yes' if extra['pooler'] else 'no'}")
    if family == "gpt2":
        return (f"C={kw['n_embd']} H={kw['n_head']} L={kw['n_layer']} V={kw['vocab_size']} "
                f"head={'tied' if extra['tie'] else 'untied'}")
    return (f"C={kw['hidden_size']} H={kw['num_attention_heads']}/kv{kw['num_key_value_heads']} "
            f"L={kw['num_hidden_layers']} I={kw['intermediate_size']} V={kw['vocab_size']} "
            f"theta={kw['rope_theta']:g} head={'tied' if extra['tie'] else 'untied'}")


def main() -> int:
    warnings.filterwarnings("ignore")
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"[models] SKIPPED: {C.missing_package(e.name, e)}\nmodels: 0 passed, 0 failed, SKIPPED")
        return C.skipped_exit_code()
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t0 = time.perf_counter()
    passed = failed = 0
    worst = {}
    print(f"refquant float models vs transformers {transformers.__version__} / torch {torch.__version__} "
          f"(float32, CPU); metric max|diff|/max|ref|, tolerance {TOL:g}")
    with tempfile.TemporaryDirectory(prefix="rq_models_") as tmp:
        for k, (family, kw, extra) in enumerate(CASES):
            seed = SEED + k
            hf = build_hf(family, kw, extra, seed)
            path = os.path.join(tmp, f"case{k}_{family}")
            hf.save_pretrained(path, safe_serialization=True)
            desc = f"{family:5s} {summary(family, kw, extra)}"
            try:
                m = rq.load(path)
            except rq.RefquantError as e:
                print(f"FAIL  {desc}: rq.load raised {type(e).__name__}: {e}")
                failed += 1
                continue
            # GEMM sites == Linear modules of the HF model
            want = hf_sites(hf, family)
            got = list(m.sites())
            if got == want:
                print(f"ok    {desc} | sites: {len(got)} == HF Linear modules")
                passed += 1
            else:
                failed += 1
                print(f"FAIL  {desc} | sites differ: only refquant {sorted(set(got) - set(want))}, "
                      f"only HF {sorted(set(want) - set(got))}, order equal as sets: {set(got) == set(want)}")
            rng = np.random.default_rng(seed)
            vocab = kw["vocab_size"]
            pad_id = hf.config.pad_token_id if getattr(hf.config, "pad_token_id", None) is not None else 0
            for label, ids, mask, types in make_batches(rng, vocab, pad_id, family):
                if family == "bert":
                    ours = m.forward(ids, attention_mask=mask, token_type_ids=types)
                    keep = np.ones(ids.shape, bool)   # every position, padded ones too
                else:
                    ours = m.forward(ids, attention_mask=mask)
                    keep = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
                metrics = {}
                for impl in ("eager", "sdpa"):
                    ref = run_hf(hf, impl, ids, mask, types)
                    if ref.shape != ours.shape:
                        metrics[impl] = float("inf")
                        continue
                    r, o = ref[keep], ours[keep]
                    metrics[impl] = float(np.max(np.abs(o - r)) / np.max(np.abs(r)))
                ok = all(v <= TOL for v in metrics.values()) and ours.dtype == np.float32
                passed += ok
                failed += not ok
                worst[family] = max(worst.get(family, 0.0), *metrics.values())
                where = "all positions" if family == "bert" else ("real positions" if mask is not None else "all")
                print(f"{'ok  ' if ok else 'FAIL'}  {desc} | {label:7s} B={ids.shape[0]} T={ids.shape[1]} "
                      f"({where}): eager {metrics['eager']:.2e}  sdpa {metrics['sdpa']:.2e}  "
                      f"max|ref| {np.max(np.abs(ref[keep])):.3g}")
                if not ok and family == "llama":
                    print("      " + rope_diagnostic(path, m))
            if family == "llama":  # the same checkpoint, config.json in transformers 4.x's layout
                legacy = legacy_llama_config(path, os.path.join(tmp, f"case{k}_legacy"))
                if legacy is not None:
                    label, ids, mask, _ = make_batches(np.random.default_rng(seed), vocab, pad_id, family)[0]
                    ours = rq.load(legacy).forward(ids, attention_mask=mask)
                    keep = mask.astype(bool)
                    metrics = {}
                    for impl in ("eager", "sdpa"):
                        ref = run_hf(hf, impl, ids, mask, None)[keep]
                        metrics[impl] = float(np.max(np.abs(ours[keep] - ref)) / np.max(np.abs(ref)))
                    ok = all(v <= TOL for v in metrics.values())
                    passed += ok
                    failed += not ok
                    print(f"{'ok  ' if ok else 'FAIL'}  {desc} | {label:7s} B={ids.shape[0]} T={ids.shape[1]} "
                          f"(real positions), config.json with top-level rope_theta (transformers 4.x layout): "
                          f"eager {metrics['eager']:.2e}  sdpa {metrics['sdpa']:.2e}")
    print("worst metric per family: " + ", ".join(f"{f} {v:.2e}" for f, v in worst.items()))
    print(f"time {time.perf_counter() - t0:.1f} s")
    print(f"models: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
