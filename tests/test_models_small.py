"""The three families on tiny random checkpoints written here (no torch): structure,
causality, padding, grouped-query attention, perplexity windows, bad input.
Agreement with transformers is checked by validation/conformance/check_models.py."""
import json

import numpy as np
import pytest

import refquant as rq
from weights_io import write_safetensors

F32 = np.float32


def write(tmp_path, config, tensors):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_safetensors(tmp_path / "model.safetensors", tensors)
    return tmp_path


def rnd(rng, *shape, scale=0.2):
    return (rng.standard_normal(shape) * scale).astype(F32)


def llama_checkpoint(tmp_path, heads=6, kv_heads=2, tied=False, layers=2, seed=0, hidden=24, intermediate=40,
                     head_dim=4):
    rng = np.random.default_rng(seed)
    C, I, V, D = hidden, intermediate, 50, head_dim
    cfg = dict(model_type="llama", vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv_heads, rms_norm_eps=1e-6, rope_theta=10000.0,
               max_position_embeddings=64, tie_word_embeddings=tied, hidden_act="silu", head_dim=D)
    t = {"model.embed_tokens.weight": rnd(rng, V, C, scale=1.0), "model.norm.weight": 1 + rnd(rng, C)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = rnd(rng, heads * D, C)
        t[p + "self_attn.k_proj.weight"] = rnd(rng, kv_heads * D, C)
        t[p + "self_attn.v_proj.weight"] = rnd(rng, kv_heads * D, C)
        t[p + "self_attn.o_proj.weight"] = rnd(rng, C, heads * D)
        t[p + "mlp.gate_proj.weight"] = rnd(rng, I, C)
        t[p + "mlp.up_proj.weight"] = rnd(rng, I, C)
        t[p + "mlp.down_proj.weight"] = rnd(rng, C, I)
        t[p + "input_layernorm.weight"] = 1 + rnd(rng, C)
        t[p + "post_attention_layernorm.weight"] = 1 + rnd(rng, C)
    if not tied:
        t["lm_head.weight"] = rnd(rng, V, C)
    return write(tmp_path, cfg, t), t


def gpt2_checkpoint(tmp_path, seed=0, n_embd=15, n_head=3, activation="gelu_new"):
    rng = np.random.default_rng(seed)
    C, V, L, H = n_embd, 40, 2, n_head
    cfg = dict(model_type="gpt2", vocab_size=V, n_positions=32, n_embd=C, n_layer=L, n_head=H,
               activation_function=activation, layer_norm_epsilon=1e-5)
    t = {"wte.weight": rnd(rng, V, C, scale=1.0), "wpe.weight": rnd(rng, 32, C),
         "ln_f.weight": 1 + rnd(rng, C), "ln_f.bias": rnd(rng, C)}
    for i in range(L):  # Conv1D weights are stored [in, out]
        p = f"h.{i}."
        for name, (n_in, n_out) in {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C),
                                    "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}.items():
            t[p + name + ".weight"] = rnd(rng, n_in, n_out)
            t[p + name + ".bias"] = rnd(rng, n_out)
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"] = 1 + rnd(rng, C)
            t[p + ln + ".bias"] = rnd(rng, C)
        t[p + "attn.bias"] = np.tril(np.ones((1, 1, 32, 32), F32))  # a buffer: ignored
    return write(tmp_path, cfg, t), t


def bert_checkpoint(tmp_path, seed=0, pooler=True, hidden=20, intermediate=36, heads=5, activation="gelu"):
    rng = np.random.default_rng(seed)
    C, I, V, L, H = hidden, intermediate, 60, 2, heads
    cfg = dict(model_type="bert", vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H,
               intermediate_size=I, hidden_act=activation, max_position_embeddings=40, type_vocab_size=2,
               layer_norm_eps=1e-12)
    t = {"embeddings.word_embeddings.weight": rnd(rng, V, C, scale=1.0),
         "embeddings.position_embeddings.weight": rnd(rng, 40, C),
         "embeddings.token_type_embeddings.weight": rnd(rng, 2, C),
         "embeddings.LayerNorm.weight": 1 + rnd(rng, C), "embeddings.LayerNorm.bias": rnd(rng, C),
         "embeddings.position_ids": np.arange(40, dtype=np.int64)[None]}
    for i in range(L):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (C, C), "attention.self.key": (C, C),
                             "attention.self.value": (C, C), "attention.output.dense": (C, C),
                             "intermediate.dense": (I, C), "output.dense": (C, I)}.items():
            t[p + name + ".weight"] = rnd(rng, o, n)
            t[p + name + ".bias"] = rnd(rng, o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = 1 + rnd(rng, C)
            t[p + ln + ".bias"] = rnd(rng, C)
    if pooler:
        t["pooler.dense.weight"] = rnd(rng, C, C)
        t["pooler.dense.bias"] = rnd(rng, C)
    return write(tmp_path, cfg, t), t


@pytest.fixture(params=["bert", "gpt2", "llama"])
def model(request, tmp_path):
    make = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}[request.param]
    path, _ = make(tmp_path / request.param)
    return rq.load(path)


def test_sites_are_the_linears_with_weights_out_by_in(model):
    sites = model.sites()
    assert len(sites) == len(set(sites))
    for site in sites:
        if site == "lm_head":
            continue
        w = model.w(site + ".weight")
        assert w.ndim == 2 and w.dtype == F32
    expected = {"bert": 2 * 6 + 1, "gpt2": 2 * 4 + 1, "llama": 2 * 7 + 1}[model.family]
    assert len(sites) == expected


def test_decoders_are_causal_and_padding_does_not_leak(model):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, model.vocab_size, (1, 9))
    out = model.forward(ids)
    changed = ids.copy()
    changed[0, 6:] = (changed[0, 6:] + 1) % model.vocab_size
    out2 = model.forward(changed)
    if model.family != "bert":  # causal: positions before the change are unaffected
        assert np.array_equal(out[0, :6], out2[0, :6])
    # right padding: a padded row equals the same row alone, at its real positions
    batch = np.stack([ids[0], np.concatenate([ids[0, :5], np.zeros(4, np.int64)])])
    mask = np.array([[1] * 9, [1] * 5 + [0] * 4])
    padded = model.forward(batch, attention_mask=mask)
    alone = model.forward(ids[:, :5])
    assert np.allclose(padded[1, :5], alone[0], rtol=1e-5, atol=1e-5 * np.abs(alone).max())
    assert np.allclose(padded[0], out[0], rtol=1e-5, atol=1e-5 * np.abs(out).max())


def test_grouped_query_attention_equals_multi_head_with_repeated_kv(tmp_path):
    gqa_path, t = llama_checkpoint(tmp_path / "gqa", heads=6, kv_heads=2)
    mha = dict(t)
    for i in range(2):  # query head h uses kv head h // 3: repeat each kv head's rows 3 times
        for proj in ("k_proj", "v_proj"):
            w = t[f"model.layers.{i}.self_attn.{proj}.weight"].reshape(2, 4, -1)
            mha[f"model.layers.{i}.self_attn.{proj}.weight"] = np.repeat(w, 3, axis=0).reshape(24, -1)
    cfg = json.loads((gqa_path / "config.json").read_text())
    cfg["num_key_value_heads"] = 6
    mha_path = write(tmp_path / "mha", cfg, mha)
    ids = np.random.default_rng(2).integers(0, 50, (2, 7))
    a = rq.load(gqa_path).forward(ids)
    b = rq.load(mha_path).forward(ids)
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_tied_head_uses_the_embedding(tmp_path):
    path, t = llama_checkpoint(tmp_path / "tied", tied=True)
    m = rq.load(path)
    assert m.head_weight == "embed_tokens.weight" and "lm_head" in m.sites()
    h = np.ones((1, 1, 24), F32)
    assert np.allclose(m.linear("lm_head", h), h @ t["model.embed_tokens.weight"].T)


def test_perplexity_windows_score_every_token_once(tmp_path):
    path, _ = llama_checkpoint(tmp_path / "ppl")
    m = rq.load(path)
    ids = np.random.default_rng(3).integers(0, 50, 40)
    logp = rq.analysis.log_softmax(m.forward(ids[None])[0])
    want = float(np.exp(-np.mean(logp[np.arange(39), ids[1:]])))
    assert np.isclose(rq.analysis.perplexity(m, ids, window=64), want, rtol=1e-9)
    # shorter windows see less context, but every token is still scored exactly once
    windowed = rq.analysis.perplexity(m, ids, window=16, stride=8)
    assert np.isfinite(windowed) and windowed > 1
    with pytest.raises(rq.ShapeError):
        rq.analysis.perplexity(m, ids, window=16, stride=32)
    with pytest.raises(rq.ConfigError):
        rq.analysis.perplexity(rq.load(bert_checkpoint(tmp_path / "b")[0]), ids)


def test_bert_pooler_and_token_types(tmp_path):
    m = rq.load(bert_checkpoint(tmp_path / "bert")[0])
    ids = np.array([[2, 5, 7, 3]])
    h0 = m.forward(ids)
    h1 = m.forward(ids, token_type_ids=np.array([[0, 0, 1, 1]]))
    assert not np.allclose(h0, h1)
    assert m.pooled(h0).shape == (1, 20)
    nopool = rq.load(bert_checkpoint(tmp_path / "bert2", pooler=False)[0])
    assert "pooler.dense" not in nopool.sites()
    with pytest.raises(rq.ConfigError, match="no pooler"):
        nopool.pooled(h0)


def test_bad_inputs_name_what_is_wrong(model, tmp_path):
    with pytest.raises(rq.OutOfRangeError, match=f"token id {model.vocab_size} is outside"):
        model.forward(np.array([[1, model.vocab_size]]))
    with pytest.raises(rq.OutOfRangeError, match="token id -1"):
        model.forward(np.array([[-1, 2]]))
    with pytest.raises(rq.ShapeError, match="exceed max_position_embeddings"):
        model.forward(np.zeros((1, model.max_positions + 1), np.int64))
    with pytest.raises(rq.ShapeError, match="attention_mask: shape"):
        model.forward(np.zeros((2, 3), np.int64), attention_mask=np.ones((2, 4)))
    with pytest.raises(rq.DTypeError, match="input_ids"):
        model.forward(np.zeros((1, 3), F32))


def test_bad_checkpoints(tmp_path):
    path, t = llama_checkpoint(tmp_path / "ok")
    del t["model.layers.1.mlp.up_proj.weight"]
    write(tmp_path / "missing", json.loads((path / "config.json").read_text()), t)
    with pytest.raises(rq.MissingTensorError, match="layers.1.mlp.up_proj.weight"):
        rq.load(tmp_path / "missing")
    _, t = llama_checkpoint(tmp_path / "ok2")
    t["model.layers.0.self_attn.o_proj.weight"] = rnd(np.random.default_rng(0), 24, 23)
    write(tmp_path / "shape", json.loads((path / "config.json").read_text()), t)
    with pytest.raises(rq.WeightsFormatError, match=r"o_proj.weight.*\[24, 23\], expected \[24, 24\]"):
        rq.load(tmp_path / "shape")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "mistral"
    write(tmp_path / "arch", cfg, {})
    with pytest.raises(rq.ConfigError, match="mistral"):
        rq.load(tmp_path / "arch")
    with pytest.raises(rq.ConfigError, match="no config.json"):
        rq.load(_lonely(tmp_path, t))


def _lonely(tmp_path, tensors):
    d = tmp_path / "lonely"
    d.mkdir()
    write_safetensors(d / "weights.safetensors", tensors)
    return d / "weights.safetensors"


def test_sharded_checkpoint_with_index_loads_like_one_file(tmp_path):
    path, t = llama_checkpoint(tmp_path / "one")
    names = sorted(t)
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    (shard_dir / "config.json").write_text((path / "config.json").read_text())
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, part in halves.items():
        write_safetensors(shard_dir / fname, {n: t[n] for n in part})
        weight_map.update({n: fname for n in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = np.random.default_rng(4).integers(0, 50, (2, 6))
    a = rq.load(path).forward(ids)
    b = rq.load(shard_dir).forward(ids)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


# NaNs of every sign and payload (x86's default NaN, a signaling NaN, payloads): a NaN weight
# carries its bits into the output unless the forward canonicalizes (contract rule 12)
ODD_NANS = np.array([0xFFC00000, 0x7F800001, 0xFFC01234, 0x7FFFFFFF], np.uint32).view(F32)
LAST_NORM = {"bert": "encoder.layer.1.output.LayerNorm.bias", "gpt2": "ln_f.bias", "llama": "model.norm.weight"}


def nan_bits_are_canonical(y):
    return bool(np.all(y.view(np.uint32)[np.isnan(y)] == 0x7FC00000))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_a_nan_in_a_model_output_is_the_canonical_nan(family, tmp_path):
    """NaNs with odd bits in the last norm's parameters reach the output: the forward writes
    them as 0x7FC00000; for BERT also the sentence embedding, the quantized forward on every
    backend that runs here, and every tensor of validate's golden dump."""
    make = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}[family]
    path, t = make(tmp_path / family)
    t[LAST_NORM[family]][:ODD_NANS.size] = ODD_NANS
    write_safetensors(path / "model.safetensors", t)
    model = rq.load(path)
    ids = np.random.default_rng(0).integers(0, model.vocab_size, size=(2, 6))
    out = model.forward(ids)
    assert np.isnan(out).any() and nan_bits_are_canonical(out)
    if family != "bert":  # the LM head would quantize the NaN (NonFiniteError): float path only
        return
    mask = np.ones_like(ids)
    emb = model.sentence_embedding({"input_ids": ids, "attention_mask": mask})
    assert np.isnan(emb).any() and nan_bits_are_canonical(emb)
    from refquant import validate
    qm = rq.quantize_model(model, "zeroquant-w8a8", calib=[ids], num_groups=4, progress=False)
    outs = {b: qm.forward(ids, mask, backend=b) for b in ("numpy", "numba", "fake")}
    for b, y in outs.items():
        assert np.isnan(y).any() and nan_bits_are_canonical(y), b
    assert np.array_equal(outs["numpy"].view(np.uint32), outs["numba"].view(np.uint32))
    tensors = validate.golden_tensors(model, {"zq": qm}, {"input_ids": ids, "attention_mask": mask},
                                      {"zq": "numba"})
    assert np.isnan(tensors["zq/output"]).any() and np.isnan(tensors["float/output"]).any()
    for name, v in tensors.items():
        assert v.dtype.kind != "f" or nan_bits_are_canonical(v), name
