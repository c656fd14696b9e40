"""Quantized checkpoints (refquant.checkpoint): save + load is byte-exact for every family and
several recipes (integer weights, scales, zero points, multipliers, input ranges, forward
outputs), config.json follows compressed-tensors' quantization_config, the tensors follow its
names / shapes / dtypes (GPT-2 Conv1D included), and bad input fails with a weights_io error
naming the file and the tensor. Conformance with compressed-tensors' own decompressor:
validation/conformance/check_quantized_checkpoint.py."""
import json

import numpy as np
import pytest

import refquant as rq
import weights_io.quantized_checkpoint as qio
from refquant.checkpoint import load_quantized, save_quantized
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint
from weights_io import open_checkpoint, unpack_compressed_tensors, write_safetensors
from weights_io.errors import (ConfigError, DTypeError, MissingTensorError, OutOfRangeError, ShapeError,
                               WeightsFormatError)

GROUPS = {"bert": 4, "gpt2": 5, "llama": 4}  # divide every weight of the tiny models
MAKERS = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {fam: rq.load(make(tmp_path_factory.mktemp(fam))[0]) for fam, make in MAKERS.items()}


def batches(model, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, model.vocab_size, size=(2, 7)) for _ in range(n)]


def quantize(model, name, **options):
    if name.startswith("zeroquant-"):
        options.setdefault("num_groups", GROUPS[model.family])
    return rq.quantize_model(model, name, calib=batches(model), progress=False, **options)


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def same_qparams(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.spec == b.spec and all(same(getattr(a, f), getattr(b, f))
                                    for f in ("scale", "zero_point", "multiplier", "offset"))


CASES = [
    ("bert", "nvidia-ptq-max", {}),                    # static inputs, multiplier mapping, pooler uncalibrated
    ("bert", "q8bert", {}),                            # EMA inputs, int32 bias, per-tensor embeddings
    ("bert", "zeroquant-w4a8", {}),                    # row blocks, int4 + int8, dynamic per-token inputs
    ("bert", "w4a16-g128", {}),                        # partial last group (in < 128)
    ("bert", "w8a16-channel", {"float_sites": ["encoder.layer.1.output.dense"]}),
    ("gpt2", "zeroquant-w4a16", {"quantize_embeddings": True}),  # Conv1D sites, tied head on int8 wte
    ("gpt2", "nvidia-ptq-max", {"float_sites": ["h.0.mlp.c_fc"]}),
    ("gpt2", "w4a16-g128", {}),
    ("llama", "w4a16-g128", {}),
    ("llama", "zeroquant-w8a8", {}),
    ("llama", "q8bert-dq", {}),
]


@pytest.mark.parametrize("family,name,options", CASES, ids=[f"{f}-{n}" for f, n, _ in CASES])
def test_round_trip_is_byte_exact(models, tmp_path, family, name, options):
    model = models[family]
    qm = quantize(model, name, **options)
    path = save_quantized(qm, tmp_path / "q")
    back = load_quantized(path)
    assert back.recipe == qm.recipe
    assert back.uncalibrated == qm.uncalibrated
    assert list(back.quantized_sites) == list(qm.quantized_sites)
    for site, a in qm.quantized_sites.items():
        b = back.quantized_sites[site]
        assert b.rule == a.rule
        assert same(b.weight_q, a.weight_q), site
        assert same_qparams(b.weight_qp, a.weight_qp), site
        assert same_qparams(b.input_qp, a.input_qp), site
        assert b.input_amax == a.input_amax and type(b.input_amax) is type(a.input_amax)
        assert same(back.dequantized_weight(site), qm.dequantized_weight(site))
    assert list(back.embeddings) == list(qm.embeddings)
    for k, (table, qp) in qm.embeddings.items():
        assert same(back.embeddings[k][0], table) and same_qparams(back.embeddings[k][1], qp)
    ids = batches(model, 1, seed=5)[0]
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    assert same(back.forward(ids, attention_mask=mask), qm.forward(ids, attention_mask=mask))
    # writing the loaded model again gives the same files
    again = save_quantized(back, tmp_path / "again")
    for f in ("config.json", "model.safetensors"):
        assert (again / f).read_bytes() == (path / f).read_bytes(), f


def test_config_json_follows_compressed_tensors(models, tmp_path):
    model = models["bert"]
    qm = quantize(model, "zeroquant-w4a8")
    path = save_quantized(qm, tmp_path / "q")
    config = json.loads((path / "config.json").read_text())
    float_config = model.config.raw
    assert {k: v for k, v in config.items() if k != "quantization_config"} == float_config
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "mixed-precision"  # int8 attention (int-quantized) + int4 FFN (pack-quantized)
    groups = list(qc["config_groups"].values())
    by_format = {g["format"]: g for g in groups if g["input_activations"] is not None}
    int8, int4 = by_format["int-quantized"], by_format["pack-quantized"]
    assert int8["weights"] == {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
                               "group_size": None, "dynamic": False}  # row blocks stored per row
    assert int4["weights"]["num_bits"] == 4
    assert int8["input_activations"] == {"num_bits": 8, "type": "int", "symmetric": True,
                                         "strategy": "token", "dynamic": True}
    assert "encoder.layer.0.attention.self.query" in int8["targets"]
    assert "encoder.layer.0.intermediate.dense" in int4["targets"]
    emb = [g for g in groups if g["input_activations"] is None]
    assert [g["targets"] for g in emb] == [["embeddings.word_embeddings"]]   # DeepSpeed's BERT configs
    assert qc["ignore"] == []
    meta = qc["refquant"]
    assert meta["recipe_options"]["num_groups"] == 4
    rule = meta["recipe"]["Recipe"]["ffn"]["SiteRule"]
    spec = rule["weight"]["QuantSpec"]
    assert (spec["dialect"], spec["group_kind"], spec["num_groups"], spec["bits"]) == ("deepspeed", "rows", 4, 4)
    assert "row_blocks" in meta["notes"] and "not a compressed-tensors strategy" in meta["notes"]["row_blocks"]

    static = save_quantized(quantize(model, "nvidia-ptq-max"), tmp_path / "static")
    qc = json.loads((static / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert qc["format"] == group["format"] == "int-quantized"
    assert group["input_activations"] == {"num_bits": 8, "type": "int", "symmetric": True,
                                          "strategy": "tensor", "dynamic": False}
    assert qc["ignore"] == ["pooler.dense"] and qc["refquant"]["uncalibrated"] == ["pooler.dense"]
    amax = qc["refquant"]["sites"]["encoder.layer.0.attention.self.query"]["input_amax"]
    assert amax > 0
    assert {"multiplier", "narrow"} <= set(qc["refquant"]["notes"])

    w4 = save_quantized(quantize(model, "w4a16-g128"), tmp_path / "w4")
    qc = json.loads((w4 / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert qc["format"] == "pack-quantized" and group["input_activations"] is None
    assert group["weights"]["strategy"] == "group" and group["weights"]["group_size"] == 128


def test_tensor_names_shapes_and_dtypes(models, tmp_path):
    gpt2 = models["gpt2"]
    qm = quantize(gpt2, "nvidia-ptq-max", float_sites=["h.0.mlp.c_fc"])
    ck = open_checkpoint(save_quantized(qm, tmp_path / "w8"))
    q = qm.quantized_sites["h.0.attn.c_attn"]
    assert ck.dtype("h.0.attn.c_attn.weight") == "I8"
    assert np.array_equal(ck.get("h.0.attn.c_attn.weight"), q.weight_q)     # Linear layout [out, in]
    assert ck.shape("h.0.attn.c_attn.weight") == (45, 15)
    assert ck.shape("h.0.attn.c_attn.weight_scale") == (45, 1) and ck.dtype("h.0.attn.c_attn.weight_scale") == "F32"
    assert ck.shape("h.0.attn.c_attn.weight_multiplier") == (45, 1)
    assert ck.shape("h.0.attn.c_attn.input_scale") == (1,) and ck.dtype("h.0.attn.c_attn.input_scale") == "F32"
    assert "h.0.attn.c_attn.weight_zero_point" not in ck                     # symmetric: dropped
    assert ck.dtype("h.0.attn.c_attn.bias") == "F32"                          # bias stays float
    assert ck.dtype("h.0.mlp.c_fc.weight") == "F32" and ck.shape("h.0.mlp.c_fc.weight") == (15, 60)  # float Conv1D
    assert "lm_head.weight" not in ck and "h.0.attn.bias" not in ck

    qm = quantize(models["llama"], "w4a16-g128")
    ck = open_checkpoint(save_quantized(qm, tmp_path / "w4"))
    q = qm.quantized_sites["layers.0.mlp.down_proj"]                           # [24, 40]
    assert ck.dtype("model.layers.0.mlp.down_proj.weight_packed") == "I32"
    assert ck.shape("model.layers.0.mlp.down_proj.weight_packed") == (24, 5)
    assert ck.get("model.layers.0.mlp.down_proj.weight_shape").tolist() == [24, 40]
    packed = ck.get("model.layers.0.mlp.down_proj.weight_packed")
    assert np.array_equal(unpack_compressed_tensors(packed, (24, 40), 4), q.weight_q)
    assert ck.shape("model.layers.0.mlp.down_proj.weight_scale") == (24, 1)
    assert "model.layers.0.mlp.down_proj.weight" not in ck
    assert ck.dtype("lm_head.weight") == "F32"                                 # float, its own name


def test_tokenizer_is_copied(models, tmp_path):
    src = tmp_path / "src"
    path, _ = bert_checkpoint(src)
    (src / "tokenizer.json").write_text(_TOKENIZER)
    model = rq.load(path)
    out = save_quantized(rq.quantize_model(model, "w8a16-channel"), tmp_path / "q")
    assert (out / "tokenizer.json").read_text() == _TOKENIZER
    assert load_quantized(out).encode("a b")["input_ids"].tolist() == model.encode("a b")["input_ids"].tolist()


_TOKENIZER = json.dumps({
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
    "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
    "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2}, "unk_token": "[UNK]"}})


# ---------------------------------------------------------------------------------------
# the directory appears complete or not at all
# ---------------------------------------------------------------------------------------
def test_directory_is_written_all_or_nothing(models, tmp_path, monkeypatch):
    qm = rq.quantize_model(models["llama"], "w8a16-channel")
    target = tmp_path / "q"

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(qio, "write_safetensors", fail)
    with pytest.raises(OSError, match="disk full"):
        save_quantized(qm, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    save_quantized(qm, target)
    first = (target / "model.safetensors").read_bytes()
    qm4 = rq.quantize_model(models["llama"], "w4a16-g128")
    save_quantized(qm4, target)                     # an earlier refquant checkpoint is replaced
    assert (target / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    assert load_quantized(target).recipe.name == "w4a16-g128"

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="refusing"):
        save_quantized(qm, other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="read from"):
        save_quantized(qm, qm.float_model.source)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.fixture
def saved(models, tmp_path):
    """A saved nvidia-ptq-max BERT checkpoint, and a helper that rewrites its tensors."""
    path = save_quantized(quantize(models["bert"], "nvidia-ptq-max"), tmp_path / "q")

    def rewrite(change):
        ck = open_checkpoint(path)
        tensors = {k: np.array(ck.get(k)) for k in ck.keys()}
        del ck
        change(tensors)
        write_safetensors(path / "model.safetensors", tensors)
    return path, rewrite


Q = "encoder.layer.0.attention.self.query"


def test_missing_tensor_is_named(saved):
    path, rewrite = saved
    rewrite(lambda t: t.pop(Q + ".weight_scale"))
    with pytest.raises(MissingTensorError, match=rf"{path}.*{Q}\.weight_scale"):
        load_quantized(path)


def test_wrong_dtype_is_named(saved):
    path, rewrite = saved
    rewrite(lambda t: t.update({Q + ".weight_scale": t[Q + ".weight_scale"].astype(np.float16)}))
    with pytest.raises(DTypeError, match=rf"model\.safetensors: tensor '{Q}\.weight_scale'.* is F16, expected F32"):
        load_quantized(path)
    rewrite(lambda t: t.update({Q + ".weight_scale": t[Q + ".weight_scale"].astype(np.float32),
                                Q + ".weight": t[Q + ".weight"].astype(np.int16)}))
    with pytest.raises(DTypeError, match=rf"'{Q}\.weight'.* is I16, expected I8"):
        load_quantized(path)


def test_wrong_shape_is_named(saved):
    path, rewrite = saved
    rewrite(lambda t: t.update({Q + ".weight_scale": t[Q + ".weight_scale"].reshape(1, -1)}))
    with pytest.raises(ShapeError, match=rf"'{Q}\.weight_scale'.* has shape \[1, 20\], expected \[20, 1\]"):
        load_quantized(path)


def test_weight_of_the_wrong_shape_for_the_config_is_named(saved):
    path, rewrite = saved
    site = "encoder.layer.0.intermediate.dense"     # [36, 20]: give it [36, 16] and matching scales

    def cut(t):
        t[site + ".weight"] = np.ascontiguousarray(t[site + ".weight"][:, :16])
    rewrite(cut)
    with pytest.raises(WeightsFormatError, match=rf"'{site}\.weight' has shape \[36, 16\], expected \[36, 20\]"):
        load_quantized(path)


def test_out_of_range_values_are_named(saved):
    path, rewrite = saved

    def poke(t):
        t[Q + ".weight"][0, 0] = -128                # the spec is narrow: [-127, 127]
    rewrite(poke)
    with pytest.raises(OutOfRangeError, match=rf"'{Q}\.weight' holds -128"):
        load_quantized(path)


def test_orphan_quantization_tensor_is_refused(saved):
    path, rewrite = saved
    rewrite(lambda t: t.update({"pooler.dense.weight_scale": np.ones((20, 1), np.float32)}))
    with pytest.raises(WeightsFormatError, match="'pooler.dense.weight_scale' is quantization state"):
        load_quantized(path)


def test_row_block_scales_must_agree_within_a_block(models, tmp_path):
    path = save_quantized(quantize(models["bert"], "zeroquant-w8a8"), tmp_path / "q")
    ck = open_checkpoint(path)
    tensors = {k: np.array(ck.get(k)) for k in ck.keys()}
    tensors[Q + ".weight_scale"][1, 0] *= 2          # row 1 is in the first of 4 blocks of 5 rows
    write_safetensors(path / "model.safetensors", tensors)
    with pytest.raises(WeightsFormatError, match=rf"'{Q}\.weight_scale'.*differ within a block"):
        load_quantized(path)


def _edit_config(path, change):
    config = json.loads((path / "config.json").read_text())
    change(config["quantization_config"])
    (path / "config.json").write_text(json.dumps(config))


def test_unknown_or_unsupported_strategy(saved):
    path, _ = saved
    _edit_config(path, lambda qc: qc["config_groups"]["group_0"]["weights"].update(strategy="diagonal"))
    with pytest.raises(ConfigError, match=r"config\.json.*group_0\.weights: unknown strategy 'diagonal'"):
        load_quantized(path)
    _edit_config(path, lambda qc: qc["config_groups"]["group_0"]["weights"].update(strategy="block"))
    with pytest.raises(ConfigError, match="strategy 'block' is not supported"):
        load_quantized(path)


def test_config_groups_must_agree_with_the_spec(saved):
    path, _ = saved
    _edit_config(path, lambda qc: qc["config_groups"]["group_0"]["weights"].update(strategy="tensor"))
    with pytest.raises(ConfigError, match="strategy is 'tensor', the spec needs 'channel'"):
        load_quantized(path)


def test_not_a_refquant_quantized_checkpoint(models, saved):
    with pytest.raises(ConfigError, match="no 'quantization_config'"):
        load_quantized(models["bert"].source)
    path, _ = saved
    _edit_config(path, lambda qc: qc.pop("refquant"))
    with pytest.raises(ConfigError, match="not written by refquant"):
        load_quantized(path)


def test_pickle_weights_are_refused(saved):
    path, _ = saved
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(WeightsFormatError, match=r"pytorch_model\.bin: refusing to load it"):
        load_quantized(path)


def test_float_tensors_keep_the_source_dtype(tmp_path):
    path, t = llama_checkpoint(tmp_path / "bf16")
    write_safetensors(path / "model.safetensors", t, dtypes={k: "BF16" for k in t})
    model = rq.load(path)
    qm = quantize(model, "w4a16-g128")
    out = save_quantized(qm, tmp_path / "q")
    ck = open_checkpoint(out)
    assert ck.dtype("model.norm.weight") == "BF16" and ck.dtype("lm_head.weight") == "BF16"
    assert ck.dtype("model.layers.0.mlp.up_proj.weight_scale") == "F32"
    ids = batches(model, 1, seed=3)[0]
    assert same(load_quantized(out).forward(ids), qm.forward(ids))


def test_affine_unsigned_and_float_offset_specs_round_trip(models, tmp_path):
    """Zero points (int8; int4 packed along dim 0), unsigned values (uint8; int4 stored offset),
    DeepSpeed's float zero point (weight_offset) and dynamic affine inputs, in a custom recipe."""
    d = rq.dialect
    rec = rq.Recipe(
        name="custom-affine", summary="every zero-point path",
        attention=rq.SiteRule(d("compressed_tensors", bits=4, symmetric=False, granularity="group", group_size=8,
                                axis=-1, partial_group="allow"),
                              d("onnx", granularity="token", dynamic=True)),
        ffn=rq.SiteRule(d("compressed_tensors", bits=8, symmetric=False, granularity="channel", axis=0)),
        head=rq.SiteRule(d("deepspeed", bits=4, symmetric=False, granularity="group", group_kind="rows",
                           num_groups=4)),
        embeddings=d("onnx"))                          # uint8 affine, per tensor
    model = models["bert"]
    qm = rq.quantize_model(model, rec)
    path = save_quantized(qm, tmp_path / "q")
    back = load_quantized(path)
    assert back.recipe == rec
    for site, a in qm.quantized_sites.items():
        b = back.quantized_sites[site]
        assert same(b.weight_q, a.weight_q) and same_qparams(b.weight_qp, a.weight_qp), site
    for k, (table, qp) in qm.embeddings.items():
        assert same(back.embeddings[k][0], table) and same_qparams(back.embeddings[k][1], qp)
    ids = batches(model, 1, seed=4)[0]
    assert same(back.forward(ids), qm.forward(ids))
    ck = open_checkpoint(path)
    assert ck.dtype(Q + ".weight_zero_point") == "I32" and ck.shape(Q + ".weight_zero_point") == (3, 3)  # 20 rows
    assert ck.dtype("encoder.layer.0.intermediate.dense.weight_zero_point") == "I8"
    assert ck.dtype("pooler.dense.weight_offset") == "F32" and ck.dtype("pooler.dense.weight_zero_point") == "I32"
    assert ck.dtype("embeddings.word_embeddings.weight") == "U8"
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["refquant"]["recipe_options"] is None          # not a named recipe
