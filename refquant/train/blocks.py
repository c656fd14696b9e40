"""Transformer blocks as forward/backward pairs over an explicit parameter dict (llm.c style), for
training: layer-by-layer distillation (lkd) and quantization-aware training (qat).

``params`` maps a block's own names ("attention.self.query.weight", ...: the model's names
without the "encoder.layer.{i}." prefix) to float arrays. Every GEMM goes through a
``SiteLinear``: plain float, or fake-quantized weights and inputs with a straight-through
backward (the student of LKD, the model under QAT). The FFN activation is an
``refquant.nn.activations.Activation``: ``Block`` passes the model's own (``model.activation``,
picked from its config by the same table the model's forward uses). The float forward equals
the model's own block bit for bit; the backward gives d(input) and a gradient per parameter;
both are checked, per activation, in tests/test_blocks.py (finite differences in float64).
"""
from __future__ import annotations

import numpy as np

from ..nn import attention_forward, layer_norm_forward, linear_forward, rms_norm_forward, rope_forward, rope_tables
from ..nn.activations import Activation
from ..nn.backward import attention_backward, layer_norm_backward, linear_backward, rms_norm_backward, rope_backward
from ..quant import choose_qparams, fake_quant
from .ste import fake_quant_backward

BERT_SITES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense")
BERT_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")
GPT2_SITES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
GPT2_NORMS = ("ln_1", "ln_2")
LLAMA_SITES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")
LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")
PREFIX = {"bert": "encoder.layer.{}.", "gpt2": "h.{}.", "llama": "layers.{}."}


def block_params(model, i: int, dtype=np.float32) -> dict:
    """Block i's parameters by block-local name, copied (the float master weights training
    updates): every site's weight (and bias where the family has one) and norm weights."""
    p = PREFIX[model.family].format(i)
    names = [n[len(p):] for n in model.expected_shapes() if n.startswith(p)]
    return {n: np.array(model.w(p + n), dtype=dtype) for n in names}


class SiteLinear:
    """y = x @ W.T + b at one GEMM site, optionally fake-quantized: W by ``weight_spec`` (qparams
    chosen from W at every forward, as DeepSpeed's quantize_weight_in_forward), x by
    ``input_spec`` (dynamic: per call; static: the given ``input_qp``). Gradients pass the
    rounding straight through by ``ste_rule`` ("identity": Q8BERT, ZeroQuant)."""

    def __init__(self, weight_spec=None, input_spec=None, input_qp=None, ste_rule: str = "identity"):
        self.weight_spec, self.input_spec, self.input_qp, self.ste_rule = weight_spec, input_spec, input_qp, ste_rule

    def forward(self, x, w, b):
        xq, qx = x, None
        if self.input_spec is not None:
            qx = choose_qparams(x.reshape(-1, x.shape[-1]), self.input_spec) if self.input_spec.dynamic \
                else self.input_qp
            xq = fake_quant(x.reshape(-1, x.shape[-1]), qx).reshape(x.shape).astype(x.dtype)
        wq, qw = w, None
        if self.weight_spec is not None:
            qw = choose_qparams(w, self.weight_spec)
            wq = fake_quant(w, qw).astype(w.dtype)
        y, cache = linear_forward(xq, wq, b)
        return y, (cache, x, qx, w, qw)

    def backward(self, dy, cache):
        lin_cache, x, qx, w, qw = cache
        dxq, dwq, db = linear_backward(dy, lin_cache)
        dx = dxq if qx is None else fake_quant_backward(
            dxq.reshape(-1, x.shape[-1]), x.reshape(-1, x.shape[-1]), qx, self.ste_rule).reshape(x.shape)
        dw = dwq if qw is None else fake_quant_backward(dwq, w, qw, self.ste_rule)
        return dx, dw, db


FLOAT = SiteLinear()


def _linears(params, sites, lin, grads):
    """(linear, linear_back) closures over one block's parameters (forward), site table, caches
    ``lin`` and gradients ``grads`` (backward); a site without a bias gets no bias gradient."""
    def linear(site, inp):
        b = params.get(site + ".bias")
        y, cache = sites.get(site, FLOAT).forward(inp, params[site + ".weight"], b)
        lin[site] = (cache, b is not None)
        return y

    def linear_back(site, d):
        cache, has_bias = lin[site]
        dx, grads[site + ".weight"], db = sites.get(site, FLOAT).backward(d, cache)
        if has_bias:
            grads[site + ".bias"] = db
        return dx
    return linear, linear_back


def _heads(t, B, T, n, D):  # [B, T, n*D] -> contiguous [B, n, T, D]
    return np.ascontiguousarray(t.reshape(B, T, n, D).transpose(0, 2, 1, 3))


def _merge(t):  # [B, n, T, D] -> [B, T, n*D]
    B, n, T, D = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, T, n * D)


def bert_block_forward(params: dict, x, mask, heads: int, eps: float, sites=None, *, activation: Activation):
    """BERT's post-LN block: LN(x + attn(x)), then LN(h + ffn(h)) with ffn = dense(act(dense(h))).
    ``sites`` {site: SiteLinear} (default: float everywhere); ``activation`` the model's (no
    default: a block must not assume one). Returns (y, cache)."""
    sites, lin = sites or {}, {}
    linear, _ = _linears(params, sites, lin, {})
    B, T, C = x.shape
    q, k, v = (_heads(linear(f"attention.self.{s}", x), B, T, heads, C // heads) for s in ("query", "key", "value"))
    ctx, att = attention_forward(q, k, v, key_mask=mask)
    a = linear("attention.output.dense", _merge(ctx))
    h, ln1 = layer_norm_forward(x + a, params["attention.output.LayerNorm.weight"],
                                params["attention.output.LayerNorm.bias"], eps)
    f, act = activation.forward(linear("intermediate.dense", h))
    y, ln2 = layer_norm_forward(h + linear("output.dense", f), params["output.LayerNorm.weight"],
                                params["output.LayerNorm.bias"], eps)
    return y, (lin, att, ln1, (activation, act), ln2, sites, (B, T, C, heads))


def bert_block_backward(dy, cache):
    """(dx, {param: gradient}) of bert_block_forward."""
    lin, att, ln1, act, ln2, sites, (B, T, C, heads) = cache
    g = {}
    _, linear_back = _linears(None, sites, lin, g)
    dsum2, g["output.LayerNorm.weight"], g["output.LayerNorm.bias"] = layer_norm_backward(dy, ln2)
    df = linear_back("output.dense", dsum2)
    activation, act = act
    dh = dsum2 + linear_back("intermediate.dense", activation.backward(df, act)[0])
    dsum1, g["attention.output.LayerNorm.weight"], g["attention.output.LayerNorm.bias"] = layer_norm_backward(dh, ln1)
    dq, dk, dv = attention_backward(_heads(linear_back("attention.output.dense", dsum1), B, T, heads, C // heads), att)
    dx = dsum1
    for s, d in (("query", dq), ("key", dk), ("value", dv)):
        dx = dx + linear_back(f"attention.self.{s}", _merge(d))
    return dx, g


def gpt2_block_forward(params: dict, x, mask, heads: int, eps: float, activation: Activation, sites=None):
    """GPT-2's pre-LN block: x + attn(LN1(x)) (causal), then + mlp(LN2(.)). Returns (y, cache)."""
    sites, lin = sites or {}, {}
    linear, _ = _linears(params, sites, lin, {})
    B, T, C = x.shape
    h1, ln1 = layer_norm_forward(x, params["ln_1.weight"], params["ln_1.bias"], eps)
    q, k, v = (_heads(t, B, T, heads, C // heads) for t in np.split(linear("attn.c_attn", h1), 3, axis=-1))
    ctx, att = attention_forward(q, k, v, key_mask=mask, causal=True)
    x2 = x + linear("attn.c_proj", _merge(ctx))
    h2, ln2 = layer_norm_forward(x2, params["ln_2.weight"], params["ln_2.bias"], eps)
    f, act = activation.forward(linear("mlp.c_fc", h2))
    y = x2 + linear("mlp.c_proj", f)
    return y, (lin, att, ln1, ln2, act, activation, sites)


def gpt2_block_backward(dy, cache):
    lin, att, ln1, ln2, act, activation, sites = cache
    g = {}
    _, linear_back = _linears(None, sites, lin, g)
    dh2 = linear_back("mlp.c_fc", activation.backward(linear_back("mlp.c_proj", dy), act)[0])
    dx2n, g["ln_2.weight"], g["ln_2.bias"] = layer_norm_backward(dh2, ln2)
    dx2 = dy + dx2n
    dctx = linear_back("attn.c_proj", dx2)
    B, T, C = dctx.shape
    dq, dk, dv = attention_backward(_heads(dctx, B, T, att[0].shape[1], C // att[0].shape[1]), att)
    dh1 = linear_back("attn.c_attn", np.concatenate([_merge(dq), _merge(dk), _merge(dv)], axis=-1))
    dxn, g["ln_1.weight"], g["ln_1.bias"] = layer_norm_backward(dh1, ln1)
    return dx2 + dxn, g


def llama_block_forward(params: dict, x, mask, heads: int, kv_heads: int, head_dim: int, eps: float,
                        rope_theta: float, sites=None, *, activation: Activation):
    """Llama's block: x + attn(RMSNorm(x)) with RoPE on q and k, causal, grouped-query; then
    + down(act(gate(.)) * up(.)) on RMSNorm (act: silu). Returns (y, cache)."""
    sites, lin = sites or {}, {}
    linear, _ = _linears(params, sites, lin, {})
    B, T, _ = x.shape
    cos, sin = (t.astype(x.dtype) for t in rope_tables(np.arange(T), head_dim, rope_theta))
    h1, n1 = rms_norm_forward(x, params["input_layernorm.weight"], eps)
    q, r_q = rope_forward(_heads(linear("self_attn.q_proj", h1), B, T, heads, head_dim), cos, sin)
    k, r_k = rope_forward(_heads(linear("self_attn.k_proj", h1), B, T, kv_heads, head_dim), cos, sin)
    v = _heads(linear("self_attn.v_proj", h1), B, T, kv_heads, head_dim)
    ctx, att = attention_forward(np.ascontiguousarray(q), np.ascontiguousarray(k), v, key_mask=mask, causal=True)
    x2 = x + linear("self_attn.o_proj", _merge(ctx))
    h2, n2 = rms_norm_forward(x2, params["post_attention_layernorm.weight"], eps)
    s, sc = activation.forward(linear("mlp.gate_proj", h2))
    u = linear("mlp.up_proj", h2)
    y = x2 + linear("mlp.down_proj", s * u)
    return y, (lin, att, r_q, r_k, n1, n2, s, (activation, sc), u, sites)


def llama_block_backward(dy, cache):
    lin, att, r_q, r_k, n1, n2, s, sc, u, sites = cache
    g = {}
    _, linear_back = _linears(None, sites, lin, g)
    dp = linear_back("mlp.down_proj", dy)
    activation, sc = sc
    dh2 = linear_back("mlp.gate_proj", activation.backward(dp * u, sc)[0]) + linear_back("mlp.up_proj", dp * s)
    dx2n, g["post_attention_layernorm.weight"] = rms_norm_backward(dh2, n2)
    dx2 = dy + dx2n
    dctx = linear_back("self_attn.o_proj", dx2)
    B, T, _ = dctx.shape
    H, D = att[0].shape[1], att[0].shape[3]
    dq, dk, dv = attention_backward(_heads(dctx, B, T, H, D), att)
    dh1 = (linear_back("self_attn.q_proj", _merge(rope_backward(dq, r_q)))
           + linear_back("self_attn.k_proj", _merge(rope_backward(dk, r_k)))
           + linear_back("self_attn.v_proj", _merge(dv)))
    dxn, g["input_layernorm.weight"] = rms_norm_backward(dh1, n1)
    return dx2 + dxn, g


class Block:
    """A family's block as (params, forward, backward, teacher) for training code, with the
    model's own activation (``model.activation``)."""

    def __init__(self, model):
        self.model, self.family, c = model, model.family, model.config
        act = model.activation
        if self.family == "bert":
            self.sites = BERT_SITES
            self._fwd = lambda p, x, m, s: bert_block_forward(p, x, m, c.num_attention_heads, c.layer_norm_eps, s,
                                                              activation=act)
            self._bwd = bert_block_backward
        elif self.family == "gpt2":
            self.sites = GPT2_SITES
            self._fwd = lambda p, x, m, s: gpt2_block_forward(p, x, m, c.n_head, c.layer_norm_epsilon, act, s)
            self._bwd = gpt2_block_backward
        else:
            self.sites = LLAMA_SITES
            self._fwd = lambda p, x, m, s: llama_block_forward(p, x, m, c.num_attention_heads, c.num_key_value_heads,
                                                               c.head_dim, c.rms_norm_eps, c.rope_theta, s,
                                                               activation=act)
            self._bwd = llama_block_backward

    @property
    def count(self) -> int:
        c = self.model.config
        return c.num_hidden_layers if self.family != "gpt2" else c.n_layer

    def prefix(self, i: int) -> str:
        return PREFIX[self.family].format(i)

    def params(self, i: int) -> dict:
        return block_params(self.model, i)

    def forward(self, params, x, mask, sites=None):
        return self._fwd(params, x, mask, sites)

    def backward(self, dy, cache):
        return self._bwd(dy, cache)

    def embed(self, batch: dict):
        """The hidden state before block 0 (the float model's embeddings)."""
        m, ids = self.model, np.asarray(batch["input_ids"])
        if self.family == "bert":
            return m.embed(ids, np.asarray(batch.get("token_type_ids", np.zeros_like(ids))))
        if self.family == "gpt2":
            from ..nn import embedding_forward
            return embedding_forward(ids, m.w("wte.weight"))[0] + m.w("wpe.weight")[:ids.shape[1]]
        from ..nn import embedding_forward
        return embedding_forward(ids, m.w("embed_tokens.weight"))[0]

    def teacher(self, i: int, x, mask):
        """The float model's own block i."""
        if self.family == "llama":
            c = self.model.config
            cos, sin = rope_tables(np.arange(x.shape[1]), c.head_dim, c.rope_theta)
            return self.model.block(i, x, mask, cos, sin)
        return self.model.block(i, x, mask)
