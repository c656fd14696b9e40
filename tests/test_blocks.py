"""A whole transformer block's hand-written backward against finite differences (float64), and
its forward against the model's own block."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refquant as rq
from refquant.train import blocks
from test_backward import assert_close, numeric_grad
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint


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
    y, cache = blocks.bert_block_forward(params, x, mask, heads, 1e-5)
    R = rng.standard_normal(y.shape)
    dx, grads = blocks.bert_block_backward(R, cache)

    def loss():
        return float(np.sum(blocks.bert_block_forward(params, x, mask, heads, 1e-5)[0] * R))
    assert_close(dx, numeric_grad(loss, x), "x")
    for name in sorted(params):
        assert_close(grads[name], numeric_grad(loss, params[name]), name)


def test_bert_block_forward_equals_the_models_block(tmp_path):
    path, _ = bert_checkpoint(tmp_path / "bert")
    m = rq.load(path)
    x = np.random.default_rng(0).standard_normal((2, 5, 20)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    want = m.block(1, x, mask)
    got = blocks.bert_block_forward(blocks.block_params(m, 1), x, mask, 5, m.config.layer_norm_eps)[0]
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


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


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_each_familys_block_backward_and_forward(family, tmp_path):
    make = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}[family]
    m = rq.load(make(tmp_path / family)[0])
    block = blocks.Block(m)
    rng = np.random.default_rng(1)
    C = m.w(block.prefix(0) + block.sites[0] + ".weight").shape[1]
    x32 = rng.standard_normal((2, 5, C)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # float32 forward == the model's own block
    want = block.teacher(1, x32, mask)
    got = block.forward(block.params(1), x32, mask)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
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
