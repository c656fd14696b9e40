"""LKD on a tiny BERT: each block's loss falls, only that block's weights change, the distilled
model is closer to float once quantized; bad input and a loss that turns NaN stop cleanly."""
import numpy as np
import pytest

import refquant as rq
from refquant.train.lkd import lkd, random_batches
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return rq.load(bert_checkpoint(tmp_path_factory.mktemp("bert"))[0])


def test_lkd_lowers_each_blocks_loss_and_brings_the_quantized_model_closer(bert):
    data = random_batches(bert, 32, 9, batch_size=8, seed=1)
    distilled, report = lkd(bert, "zeroquant-w4a8", data, steps=60, lr=3e-4, progress=False, num_groups=4)
    assert [r["block"] for r in report] == [0, 1]
    assert all(r["loss_after"] < r["loss_before"] for r in report), report
    assert not np.array_equal(distilled.w("encoder.layer.0.output.dense.weight"),
                              bert.w("encoder.layer.0.output.dense.weight"))
    assert np.array_equal(distilled.w("embeddings.word_embeddings.weight"), bert.w("embeddings.word_embeddings.weight"))
    held = random_batches(bert, 16, 9, batch_size=16, seed=7)[0]
    ref = bert.forward(held["input_ids"], held["attention_mask"])

    def err(model):
        qm = rq.quantize_model(model, "zeroquant-w4a8", num_groups=4, progress=False)
        return float(np.mean((qm.forward(held["input_ids"], held["attention_mask"]) - ref) ** 2))
    assert err(distilled) < err(bert)


@pytest.mark.parametrize("kw, match", [({"steps": 0}, "steps"), ({"lr": 0.0}, "learning rate"),
                                       ({"lr": -1.0}, "learning rate")])
def test_bad_settings(bert, kw, match):
    with pytest.raises(rq.ConfigError, match=match):
        lkd(bert, "zeroquant-w8a8", random_batches(bert, 4, 5), **{"steps": 2, "lr": 1e-3, **kw}, progress=False,
            num_groups=4)


def test_no_tokens(bert):
    empty = [{"input_ids": np.zeros((1, 3), np.int64), "attention_mask": np.zeros((1, 3), np.int64)}]
    with pytest.raises(rq.ConfigError, match="no tokens"):
        lkd(bert, "zeroquant-w8a8", empty, progress=False, num_groups=4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lkd_on_decoders(family, tmp_path):
    make, groups = {"gpt2": (gpt2_checkpoint, 5), "llama": (llama_checkpoint, 4)}[family]
    m = rq.load(make(tmp_path / family)[0])
    distilled, report = lkd(m, "zeroquant-w4a8", random_batches(m, 16, 8, seed=2), steps=40, lr=3e-4,
                            progress=False, num_groups=groups)
    assert len(report) == 2 and all(r["loss_after"] < r["loss_before"] for r in report), report


def test_a_nan_loss_stops_naming_block_and_step_and_keeps_the_good_blocks(bert):
    data = random_batches(bert, 8, 6, seed=3)
    with pytest.raises(rq.TrainingError, match=r"block \d+, step \d+") as e:
        lkd(bert, "zeroquant-w4a8", data, steps=30, lr=1e30, progress=False, num_groups=4)
    assert e.value.partial is not None
    out = e.value.partial.forward(data[0]["input_ids"])
    assert out.shape[-1] == 20
