"""Q8BERT-style quantization-aware training of a BERT encoder with a classification head.

The classifier: the encoder's last hidden state, mean-pooled over real tokens (as
sentence-transformers), then a linear head to the classes; loss = cross-entropy. Training
updates every parameter (embeddings, LayerNorms, blocks, head) with AdamW, gradients by hand
(refquant.nn.backward, refquant.train.blocks).

With ``qat=True`` the forward is Q8BERT's (IntelLabs nlp-architect QuantizedLinear): each
GEMM's weight fake-quantized per tensor at 127/max|W| every step, each GEMM's input
fake-quantized with an EMA of its max|x| (decay ``ema_decay``, filled with the first batch's max
at ``start_step``; plain float before it), the word and position embeddings fake-quantized too
(as the recipe's integer model quantizes them); every
rounding passed straight through (identity). The trained EMA thresholds are the static input
ranges at inference: ``quantized(...)`` builds the integer model (recipe "q8bert": int8 per-tensor
weights, static inputs, int32 bias) with them, no calibration.
"""
from __future__ import annotations

import time

import numpy as np

from weights_io.errors import ConfigError, NonFiniteError, TrainingError

from ..calib import make_observer
from ..nn import embedding_forward, layer_norm_forward, linear_forward
from ..nn.backward import embedding_backward, layer_norm_backward, linear_backward
from ..quant import choose_qparams, fake_quant, qparams_from_amax
from ..quantized import quantize_model, resolve_recipe
from .blocks import BERT_SITES, SiteLinear, bert_block_backward, bert_block_forward, block_params
from .optim import AdamW

EMB = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
       "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")


class EmaSite(SiteLinear):
    """A Q8BERT QuantizedLinear: weights at 127/max per tensor, inputs at the EMA threshold."""

    def __init__(self, rule, name: str, ema_decay: float, start_step: int):
        super().__init__(rule.weight, rule.activation)
        self.observer = make_observer("ema", name=name, decay=ema_decay)
        self.rule, self.start_step, self.step, self.training = rule, start_step, 0, True

    def forward(self, x, w, b):
        if self.training:
            self.step += 1
            if self.step <= self.start_step:  # warm-up: plain float, no range yet
                y, cache = linear_forward(x, w, b)
                return y, (cache, x, None, w, None)
            self.observer.update(x)  # nlp-architect updates the EMA, then takes the scale
        self.input_qp = qparams_from_amax(np.float32(self.observer.amax()), self.rule.activation)
        return super().forward(x, w, b)

    def amax(self):
        return float(self.observer.amax()) if self.observer.batches else None


class Classifier:
    """A BERT encoder (parameters copied from ``model``) + mean pooling + a linear head."""

    def __init__(self, model, classes: int, seed: int = 0, qat: bool = False, ema_decay: float = 0.9999,
                 start_step: int = 0, dtype=np.float32):
        if model.family != "bert":
            raise ConfigError(f"Classifier: a BERT-family encoder is needed, got {model.family}")
        self.model, cfg = model, model.config
        self.activation = model.activation.differentiable("QAT" if qat else "fine-tuning")  # the model's own
        self.heads, self.eps, self.layers = cfg.num_attention_heads, cfg.layer_norm_eps, cfg.num_hidden_layers
        self.params = {n: np.array(model.w(n), dtype) for n in EMB}
        for k in range(self.layers):
            self.params.update({f"encoder.layer.{k}.{n}": v for n, v in block_params(model, k, dtype).items()})
        rng = np.random.default_rng(seed)
        C = cfg.hidden_size
        self.params["head.weight"] = (rng.standard_normal((classes, C)) * 0.02).astype(dtype)
        self.params["head.bias"] = np.zeros(classes, dtype)
        self.qat, self.sites, self.emb_spec, self.emb_tables = qat, {}, None, ()
        if qat:
            rec = resolve_recipe(model, "q8bert")
            plan = rec.plan(model)
            self.emb_spec = rec.embeddings  # Q8BERT quantizes the word and position tables
            self.emb_tables = tuple(EMB[("word", "position", "token_type").index(t)] for t in rec.embedding_tables)
            for k in range(self.layers):
                self.sites[k] = {s: EmaSite(plan[f"encoder.layer.{k}.{s}"], f"encoder.layer.{k}.{s}", ema_decay,
                                            start_step) for s in BERT_SITES}

    def block(self, k):
        p = f"encoder.layer.{k}."
        return {n[len(p):]: v for n, v in self.params.items() if n.startswith(p)}

    def train(self, on: bool) -> None:
        for sites in self.sites.values():
            for s in sites.values():
                s.training = on

    def forward(self, batch: dict):
        P = self.params
        ids = np.asarray(batch["input_ids"])
        types = np.asarray(batch.get("token_type_ids", np.zeros_like(ids)))
        mask = np.asarray(batch["attention_mask"])
        tables = {n: P[n] for n in EMB[:3]}
        for n in self.emb_tables:  # fake-quantized as the integer model's tables (straight through)
            tables[n] = fake_quant(tables[n], choose_qparams(tables[n], self.emb_spec))
        T = ids.shape[1]
        e = embedding_forward(ids, tables[EMB[0]])[0] + tables[EMB[1]][:T] + embedding_forward(types, tables[EMB[2]])[0]
        h, ln = layer_norm_forward(e, P[EMB[3]], P[EMB[4]], self.eps)
        caches = []
        for k in range(self.layers):
            h, c = bert_block_forward(self.block(k), h, mask, self.heads, self.eps, self.sites.get(k),
                                      activation=self.activation)
            caches.append(c)
        m = mask[..., None].astype(h.dtype)
        count = np.maximum(m.sum(axis=1), 1e-9)
        pooled = (h * m).sum(axis=1) / count
        logits, head = linear_forward(pooled, P["head.weight"], P["head.bias"])
        return logits, (ids, types, T, ln, caches, m, count, head)

    def backward(self, dlogits, cache) -> dict:
        ids, types, T, ln, caches, m, count, head = cache
        g = {}
        dpooled, g["head.weight"], g["head.bias"] = linear_backward(dlogits, head)
        dh = (dpooled / count)[:, None, :] * m
        for k in reversed(range(self.layers)):
            dh, gk = bert_block_backward(dh, caches[k])
            g.update({f"encoder.layer.{k}.{n}": v for n, v in gk.items()})
        de, g[EMB[3]], g[EMB[4]] = layer_norm_backward(dh, ln)
        g[EMB[0]] = embedding_backward(de, (ids, self.params[EMB[0]].shape))  # straight through
        g[EMB[1]] = np.zeros_like(self.params[EMB[1]])
        g[EMB[1]][:T] = de.sum(axis=0)
        g[EMB[2]] = embedding_backward(de, (types, self.params[EMB[2]].shape))
        return g

    def predict(self, batches) -> np.ndarray:
        self.train(False)
        out = np.concatenate([np.argmax(self.forward(b)[0], axis=-1) for b in batches])
        self.train(True)
        return out

    def trained_model(self):
        """The encoder with the trained weights (a float Model; the head is ``params['head.*']``)."""
        return self.model.with_weights({n: v for n, v in self.params.items() if not n.startswith("head.")})

    def input_ranges(self) -> dict:
        """{site: EMA amax} of the trained thresholds (QAT only)."""
        return {f"encoder.layer.{k}.{s}": site.amax() for k, sites in self.sites.items() for s, site in sites.items()}


def cross_entropy(logits, labels):
    """(mean loss, dL/dlogits)."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    n = len(labels)
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1
    return float(-logp[np.arange(n), labels].mean()), (grad / n).astype(logits.dtype)


def fit(clf: Classifier, batches: list, labels: list, steps: int, lr: float = 5e-5, weight_decay: float = 0.01,
        progress: bool = True) -> list:
    """AdamW for ``steps`` steps over the batches (cycled); returns the loss per step."""
    from tqdm import tqdm
    if not (isinstance(steps, int) and steps > 0):
        raise ConfigError(f"fit: steps must be a positive integer, got {steps!r}")
    opt = AdamW(clf.params, lr=lr, weight_decay=weight_decay)
    losses = []
    bar = tqdm(range(steps), desc="QAT" if clf.qat else "fine-tune", leave=False, disable=None if progress else True)
    for step in bar:
        j = step % len(batches)
        try:
            logits, cache = clf.forward(batches[j])
            loss, dlogits = cross_entropy(logits, labels[j])
        except NonFiniteError:
            loss = float("nan")
        if not np.isfinite(loss):
            raise TrainingError(f"training: the loss became {loss} at step {step}; the parameters are those "
                                "after the step before")
        opt.step(clf.backward(dlogits, cache))
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
    return losses


def quantized(clf: Classifier):
    """The integer model of a QAT-trained classifier: recipe q8bert on the trained weights, the
    static input ranges taken from the training EMAs (no calibration)."""
    return quantize_model(clf.trained_model(), "q8bert", amax=clf.input_ranges(), progress=False)


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t
