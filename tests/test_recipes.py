"""Recipes and QuantizedModel on tiny random checkpoints of the three families: every recipe
runs, each site computes exactly the fake-quant formula of refquant.quantized, calibration
observes what the site sees, partial quantization, bad input."""
import numpy as np
import pytest

import refquant as rq
from refquant.nn import linear_forward
from refquant.quantized import resolve_recipe
from refquant.recipes import ffn_second_gemm, site_role
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint

F32 = np.float32
GROUPS = {"bert": 4, "gpt2": 5, "llama": 4}  # divide every weight of the tiny models


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def model(request, tmp_path_factory):
    make = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}[request.param]
    path, _ = make(tmp_path_factory.mktemp(request.param))
    return rq.load(path)


def batches(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, model.vocab_size, size=(2, 7)) for _ in range(n)]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("name", rq.RECIPES)
def test_every_recipe_runs_on_every_family(model, name):
    qm = rq.quantize_model(model, name, calib=batches(model), num_groups=GROUPS[model.family], progress=False)
    ids = batches(model, 1, seed=9)[0]
    ref, out = model.forward(ids), qm.forward(ids)
    assert out.shape == ref.shape and out.dtype == F32 and np.all(np.isfinite(out))
    assert not np.array_equal(out, ref)  # something was quantized
    plan = qm.recipe.plan(model)
    assert set(qm.quantized_sites) == {s for s, r in plan.items() if r is not None} - set(qm.uncalibrated)
    assert qm.uncalibrated == (["pooler.dense"] if model.family == "bert" and qm.recipe.needs_calibration else [])
    assert plan.get("lm_head", None) is None
    for site, q in qm.quantized_sites.items():
        if q.weight_q is not None:
            spec = q.rule.weight
            assert q.weight_q.dtype == (np.int8 if spec.signed else np.uint8)
            assert spec.qmin <= q.weight_q.min() and q.weight_q.max() <= spec.qmax
    if name.startswith("zeroquant-w4"):
        ffn = [q for s, q in qm.quantized_sites.items() if site_role(s) == "ffn"]
        assert ffn and all(q.rule.weight.bits == 4 and q.weight_q.min() >= -8 and q.weight_q.max() <= 7 for q in ffn)


def test_eight_bit_recipes_stay_close_to_float(model):
    ids = batches(model, 1, seed=5)[0]
    ref = model.forward(ids)
    for name in ("zeroquant-w8a8", "w8a16-channel", "nvidia-ptq-max"):
        qm = rq.quantize_model(model, name, calib=batches(model), num_groups=GROUPS[model.family], progress=False)
        cos = rq.analysis.cosine(ref.reshape(-1, ref.shape[-1]), qm.forward(ids).reshape(-1, ref.shape[-1]))
        assert cos.min() > 0.98, name


@pytest.mark.parametrize("name", ["zeroquant-w8a8", "nvidia-ptq-max", "q8bert", "q8bert-dq", "w4a16-g128"])
def test_site_output_is_exactly_the_fake_quant_formula(model, name):
    qm = rq.quantize_model(model, name, calib=batches(model), num_groups=GROUPS[model.family], progress=False)
    site = model.sites()[0]
    q = qm.quantized_sites[site]
    x = (np.random.default_rng(1).standard_normal((2, 5, model.w(site + ".weight").shape[1])) * 2).astype(F32)
    w = rq.dequantize(q.weight_q, q.weight_qp)
    b = model.w(site + ".bias", optional=True)
    if q.rule.activation is None:
        want = linear_forward(x, w, b)[0]
    else:
        qp = rq.choose_qparams(x, q.rule.activation) if q.rule.activation.dynamic else q.input_qp
        xf = rq.fake_quant(x, qp)
        if q.rule.bias == "int32" and b is not None:
            s = (qp.scale[..., None] if qp.scale.ndim else qp.scale) * q.weight_scale_per_row()
            q_bias = np.clip(np.rint(b / s), -(2 ** 31 - 1), 2 ** 31 - 1)
            assert np.all(q_bias == np.round(q_bias))
            want = linear_forward(xf, w)[0] + (q_bias * s).astype(F32)
        else:
            want = linear_forward(xf, w, b)[0]
    assert same_bits(qm._linear(site, x), want)


def test_static_max_calibration_is_the_running_max_of_each_site_input(model):
    data = batches(model, 3)
    seen = {}

    def spy(site, x):
        seen[site] = max(seen.get(site, 0.0), float(np.abs(x).max()))
        return type(model).linear(model, site, x)
    import copy
    net = copy.copy(model)
    net.linear = spy
    for ids in data:
        net.forward(ids)
    qm = rq.quantize_model(model, "nvidia-ptq-max", calib=data, progress=False)
    for site, q in qm.quantized_sites.items():
        assert q.input_amax == pytest.approx(seen[site], rel=0, abs=0), site
        assert q.input_qp.spec.narrow and not q.input_qp.spec.dynamic


def test_gelu10_clips_the_input_of_the_second_ffn_gemm(tmp_path):
    path, t = bert_checkpoint(tmp_path)
    for name in list(t):  # make the intermediate activations large
        if name.endswith("intermediate.dense.weight"):
            t[name] = t[name] * 40
    from test_models_small import write
    m = rq.load(write(tmp_path / "big", rq.load(path).config.raw, t))
    data = batches(m, 2)
    plain = rq.quantize_model(m, "nvidia-ptq-max", calib=data, progress=False)
    clipped = rq.quantize_model(m, "nvidia-ptq-max", calib=data, gelu10=True, progress=False)
    second = [s for s in m.sites() if ffn_second_gemm(s)]
    assert second and all(plain.quantized_sites[s].input_amax > 10 for s in second)
    assert all(clipped.quantized_sites[s].input_amax == 10 for s in second)
    others = [s for s in m.sites() if s not in second and s in plain.quantized_sites]
    assert all(plain.quantized_sites[s].input_amax == clipped.quantized_sites[s].input_amax
               for s in others if s.endswith("query"))


def test_partial_quantization_matches_a_recipe_with_those_sites_float(model):
    data = batches(model)
    full = rq.quantize_model(model, "nvidia-ptq-max", calib=data, progress=False)
    keep_float = model.sites()[:2]
    partial = full.with_float_sites(keep_float)
    direct = rq.quantize_model(model, "nvidia-ptq-max", calib=data, float_sites=keep_float, progress=False)
    ids = batches(model, 1, seed=3)[0]
    assert same_bits(partial.forward(ids), direct.forward(ids))
    assert not np.array_equal(partial.forward(ids), full.forward(ids))
    assert "left float" in str(direct.recipe)


def test_q8bert_quantizes_embeddings_and_others_do_not_by_default(model):
    q8 = rq.quantize_model(model, "q8bert-dq")
    zq = rq.quantize_model(model, "zeroquant-w8a8", num_groups=GROUPS[model.family])
    nv = rq.quantize_model(model, "w8a16-channel")
    assert q8.embeddings and not nv.embeddings
    # DeepSpeed's configs: BERT's word embeddings int8 per row; a decoder's float
    assert list(zq.embeddings) == (["embeddings.word_embeddings.weight"] if model.family == "bert" else [])
    for name, (table, qp) in q8.embeddings.items():
        assert table.dtype == np.int8 and np.abs(table).max() == 127  # per tensor at 127 / max
    zq_e = rq.quantize_model(model, "zeroquant-w8a8", num_groups=GROUPS[model.family], quantize_embeddings=True)
    assert len(zq_e.embeddings) == 1


def test_recipes_print_every_role():
    for name in rq.RECIPES:
        text = str(rq.recipe(name))
        assert name in text and "attention" in text and "ffn" in text and "lm_head   float" in text


def test_bad_recipe_input(model):
    with pytest.raises(rq.ConfigError, match="unknown recipe"):
        rq.recipe("nvidia-ptq-kl")
    with pytest.raises(rq.ConfigError, match="calib"):
        rq.quantize_model(model, "nvidia-ptq-entropy")
    with pytest.raises(rq.ConfigError, match="empty"):
        rq.quantize_model(model, "nvidia-ptq-max", calib=[])
    with pytest.raises(rq.ConfigError, match="float_sites"):
        rq.recipe("w8a16-channel", float_sites=["no.such.site"]).plan(model)
    with pytest.raises(rq.ConfigError, match="int32 bias"):
        rq.recipe("w8a16-channel", bias="int32")
    with pytest.raises(rq.ConfigError, match="percentile"):
        rq.recipe("nvidia-ptq-percentile", percentile=120)
    with pytest.raises(rq.ConfigError, match="backend"):
        rq.quantize_model(model, "w8a16-channel").forward(batches(model, 1)[0], backend="tpu")


def test_nan_in_calibration_data_names_the_site(tmp_path):
    path, t = bert_checkpoint(tmp_path)
    t["encoder.layer.0.intermediate.dense.bias"] = t["encoder.layer.0.intermediate.dense.bias"].copy()
    t["encoder.layer.0.intermediate.dense.bias"][3] = np.nan
    from test_models_small import write
    m = rq.load(write(tmp_path / "nan", rq.load(path).config.raw, t))
    with pytest.raises(rq.NonFiniteError, match="encoder.layer.0.output.dense"):
        rq.quantize_model(m, "nvidia-ptq-max", calib=batches(m, 1), progress=False)


def test_sensitivity_ranks_sites_and_builds_the_partial_recipe(model):
    data = batches(model, 2, seed=11)
    rep = rq.analysis.sensitivity(model, "nvidia-ptq-max", data, calib=batches(model), progress=False)
    assert sorted(rep.ranking) == sorted(rep.quantized.quantized_sites)
    scores = [rep.scores[s] for s in rep.ranking]
    assert scores == sorted(scores)  # most damaging first
    assert rep.float_score >= max(scores) - 1e-12 and rep.full_score <= rep.float_score
    assert rep.partial_recipe(0).float_sites == frozenset()
    assert rep.partial_recipe(2).float_sites == frozenset(rep.ranking[:2])
    ids = data[0]
    assert same_bits(rep.partial_model(2).forward(ids), rep.quantized.with_float_sites(rep.ranking[:2]).forward(ids))
    assert rep.ranking[0] in rep.table()
    with pytest.raises(rq.ConfigError, match="k must be"):
        rep.partial_recipe(len(rep.ranking) + 1)


def test_zeroquant_group_count_follows_deepspeeds_configs_per_family(tmp_path):
    llama = rq.load(llama_checkpoint(tmp_path)[0])
    assert resolve_recipe(llama, "zeroquant-w8a8").ffn.weight.num_groups == 64
    with pytest.raises(rq.ShapeError, match="24 output rows cannot be cut into num_groups=64"):
        rq.quantize_model(llama, "zeroquant-w8a8")   # whole row blocks only (tests/test_row_groups.py)
    assert rq.quantize_model(llama, "zeroquant-w8a8", num_groups=4).recipe.ffn.weight.num_groups == 4
    assert rq.recipe("zeroquant-w8a8").ffn.weight.num_groups == 48
