"""QAT pieces: the classifier's whole-model backward against finite differences (float64), a
few steps of float training and of Q8BERT QAT lowering the loss, the integer model built from
the trained EMA ranges without calibration, and bad settings."""
import numpy as np
import pytest

import refquant as rq
from refquant.train import qat
from test_backward import assert_close
from test_blocks import sampled_numeric_grad
from test_models_small import bert_checkpoint


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return rq.load(bert_checkpoint(tmp_path_factory.mktemp("b"))[0])


def data(seed=0, n=4):
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for _ in range(n):
        ids = rng.integers(0, 60, (6, 7))
        mask = np.ones_like(ids)
        mask[0, 5:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        labels.append((ids[:, 1] % 2).astype(np.int64))  # learnable from the tokens
    return out, labels


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_classifier_backward_matches_finite_differences(bert, activation, tmp_path):
    model = bert if activation == "gelu" else rq.load(bert_checkpoint(tmp_path, activation=activation)[0])
    clf = qat.Classifier(model, 3, seed=1, dtype=np.float64)
    (b,), (y,) = data(n=1)
    y = y % 3
    logits, cache = clf.forward(b)
    _, dlogits = qat.cross_entropy(logits, y)
    g = clf.backward(dlogits, cache)
    assert set(g) == set(clf.params)
    rng = np.random.default_rng(0)

    def loss():
        return qat.cross_entropy(clf.forward(b)[0], y)[0]
    for name in ("head.weight", "encoder.layer.1.output.dense.weight", "encoder.layer.0.attention.self.query.bias",
                 "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "embeddings.LayerNorm.weight", "embeddings.token_type_embeddings.weight"):
        arr = clf.params[name]
        idx = rng.choice(arr.size, size=min(25, arr.size), replace=False)
        assert_close(g[name].reshape(-1)[idx], sampled_numeric_grad(loss, arr, idx), name)


def test_float_training_and_qat_lower_the_loss_and_qat_gives_an_integer_model(bert):
    batches, labels = data()
    for q in (False, True):
        clf = qat.Classifier(bert, 2, seed=0, qat=q)
        losses = qat.fit(clf, batches, labels, 24, lr=3e-3, progress=False)
        assert np.mean(losses[-4:]) < np.mean(losses[:4]), (q, losses)
    ranges = clf.input_ranges()
    assert len(ranges) == 12 and all(a is not None and a > 0 for a in ranges.values())
    qm = qat.quantized(clf)
    assert qm.uncalibrated == ["pooler.dense"]
    for site, a in ranges.items():
        assert qm.quantized_sites[site].input_amax == pytest.approx(a)
    out = qm.forward(batches[0]["input_ids"], batches[0]["attention_mask"])
    assert out.shape == (6, 7, 20) and np.all(np.isfinite(out))
    # the integer model computes what QAT trained: its logits agree with the fake-quant forward
    clf.train(False)
    want = clf.forward(batches[0])[0]
    h = qm.forward(batches[0]["input_ids"], batches[0]["attention_mask"], batches[0]["token_type_ids"])
    got = rq.models.mean_pool(h, batches[0]["attention_mask"]) @ clf.params["head.weight"].T + clf.params["head.bias"]
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()


def test_bad_steps_and_learning_rate(bert):
    batches, labels = data(n=1)
    clf = qat.Classifier(bert, 2)
    with pytest.raises(rq.ConfigError, match="steps"):
        qat.fit(clf, batches, labels, 0, progress=False)
    with pytest.raises(rq.ConfigError, match="learning rate"):
        qat.fit(clf, batches, labels, 2, lr=-1.0, progress=False)


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_the_classifier_computes_the_models_own_function(activation, tmp_path):
    """Its encoder is the model's forward bit for bit, whatever hidden_act names; QAT trains
    through the same activation (fake quantization aside)."""
    from refquant.nn import linear_forward
    from test_models_small import bert_checkpoint
    m = rq.load(bert_checkpoint(tmp_path, activation=activation)[0])
    ids = np.random.default_rng(0).integers(0, m.vocab_size, (2, 6))
    batch = {"input_ids": ids, "attention_mask": np.array([[1] * 6, [1] * 4 + [0] * 2]),
             "token_type_ids": np.zeros_like(ids)}
    clf = qat.Classifier(m, 3)
    want = linear_forward(m.sentence_embedding(batch), clf.params["head.weight"], clf.params["head.bias"])[0]
    got = clf.forward(batch)[0]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert clf.activation is m.activation and qat.Classifier(m, 3, qat=True).activation is m.activation
