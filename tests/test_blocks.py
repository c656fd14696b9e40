"""A whole transformer block's hand-written backward against finite differences (float64), and
its forward against the model's own block."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refquant as rq
from refquant.nn import activations
from refquant.train import blocks
from test_backward import assert_close, numeric_grad
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint

GELU = activations.ACTIVATIONS["gelu"]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 31), masked=st.booleans())
def test_bert_block_backward_matches_finite_differences(seed, masked):
    rng = np.random.default_rng(seed)
    C, I, heads, B, T = 4, 6, 2, 2, 3
    shapes = {"attention.self.query": (C, C), "attention.self.key": (C, C), "attention.self.value": (C, C),
              "attention.output.dense": (C, C), "intermediate.dense": (I, C), "output.dense": (C, I)}
    params = {}
    for s, shape in shapes.items():
        params[s + ".weight"] = rng.standard_normal(shape) * 0.7
        params[s + ".bias"] = rng.standard_normal(shape[0]) * 0.3
    for n in blocks.BERT_NORMS:
        params[n + ".weight"] = 1 + 0.3 * rng.standard_normal(C)
        params[n + ".bias"] = 0.3 * rng.standard_normal(C)
    x = rng.standard_normal((B, T, C))
    mask = np.ones((B, T), np.int64)
    if masked:
        mask[1, 2:] = 0
    y, cache = blocks.bert_block_forward(params, x, mask, heads, 1e-5, activation=GELU)
    R = rng.standard_normal(y.shape)
    dx, grads = blocks.bert_block_backward(R, cache)

    def loss():
        return float(np.sum(blocks.bert_block_forward(params, x, mask, heads, 1e-5, activation=GELU)[0] * R))
    assert_close(dx, numeric_grad(loss, x), "x")
    for name in sorted(params):
        assert_close(grads[name], numeric_grad(loss, params[name]), name)


def test_bert_block_forward_equals_the_models_block(tmp_path):
    path, _ = bert_checkpoint(tmp_path / "bert")
    m = rq.load(path)
    x = np.random.default_rng(0).standard_normal((2, 5, 20)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    want = m.block(1, x, mask)
    got = blocks.bert_block_forward(blocks.block_params(m, 1), x, mask, 5, m.config.layer_norm_eps,
                                    activation=m.activation)[0]
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def sampled_numeric_grad(f, x, idx):
    """Central differences at the flat indices ``idx`` of x only."""
    flat, out = x.reshape(-1), np.zeros(len(idx))
    for n, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + 1e-6
        up = f()
        flat[i] = old - 1e-6
        down = f()
        flat[i] = old
        out[n] = (up - down) / 2e-6
    return out


# every activation each family's forward runs (refquant.nn.activations, the table both read)
FAMILY_ACTIVATIONS = [(fam, act) for fam, (_, _, acts) in sorted(activations.FAMILY_ACTIVATIONS.items())
                      for act in acts]


def checkpoint_with(family, activation, path):
    if family == "llama":
        assert activation == "silu"  # Llama runs silu only
        return llama_checkpoint(path)[0]
    return {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint}[family](path, activation=activation)[0]


@pytest.mark.parametrize("family,activation", FAMILY_ACTIVATIONS)
def test_each_familys_block_backward_and_forward(family, activation, tmp_path):
    m = rq.load(checkpoint_with(family, activation, tmp_path / family))
    assert m.activation is activations.ACTIVATIONS[activation]
    block = blocks.Block(m)
    rng = np.random.default_rng(1)
    C = m.w(block.prefix(0) + block.sites[0] + ".weight").shape[1]
    x32 = rng.standard_normal((2, 5, C)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # float32 forward == the model's own block, bit for bit, in every layer
    for i in range(block.count):
        want = block.teacher(i, x32, mask)
        got = block.forward(block.params(i), x32, mask)[0]
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32)), (activation, i)
    # float64 backward vs finite differences (40 sampled elements per parameter)
    params = {n: v.astype(np.float64) for n, v in block.params(1).items()}
    x = x32.astype(np.float64)
    y, cache = block.forward(params, x, mask)
    R = rng.standard_normal(y.shape)
    dx, grads = block.backward(R, cache)
    assert set(grads) == set(params)

    def loss():
        return float(np.sum(block.forward(params, x, mask)[0] * R))
    for name, arr in [("x", x)] + sorted(params.items()):
        g = dx if name == "x" else grads[name]
        idx = rng.choice(arr.size, size=min(40, arr.size), replace=False)
        assert_close(g.reshape(-1)[idx], sampled_numeric_grad(loss, arr, idx), f"{family} {name}")


def test_training_refuses_an_activation_it_cannot_differentiate(tmp_path):
    from refquant.train.lkd import lkd, random_batches
    from refquant.train.qat import Classifier
    m = rq.load(bert_checkpoint(tmp_path / "bert")[0])
    m.activation = activations.Activation("gelu_fast", activations.ACTIVATIONS["gelu_new"].forward, None)
    with pytest.raises(rq.ConfigError, match=r"^LKD: activation 'gelu_fast' has no backward"):
        lkd(m, "zeroquant-w8a8", random_batches(m, 2, 4), steps=1, progress=False, num_groups=4)
    for qat, what in ((True, "QAT"), (False, "fine-tuning")):
        with pytest.raises(rq.ConfigError, match=rf"^{what}: activation 'gelu_fast' has no backward"):
            Classifier(m, 2, qat=qat)


@pytest.mark.parametrize("family,field", [("bert", "hidden_act"), ("gpt2", "activation_function"),
                                          ("llama", "hidden_act")])
def test_an_activation_the_family_does_not_run_is_refused_at_load(family, field, tmp_path):
    import json
    path = checkpoint_with(family, activations.FAMILY_ACTIVATIONS[family][2][0], tmp_path / family)
    cfg = json.loads((path / "config.json").read_text())
    cfg[field] = "relu"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(rq.ConfigError, match=rf"{field} 'relu' is not supported for .*; supported: "):
        rq.load(path)
