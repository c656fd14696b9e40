"""The row reductions of the float core against their NumPy definitions, byte for byte
(contract rules 10 and 14): LayerNorm, residual + LayerNorm, RMSNorm, mean pooling, and the
float64 sums the site metrics use."""
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from refquant.floats import canonical_nan, sum_in_order, sums_in_order
from refquant.models.bert import mean_pool
from refquant.nn import fused
from refquant.nn.reductions import layer_norm_definition, rms_norm_definition
from refquant.testing import assert_bitexact

F32 = np.float32
EDGES = (0.0, -0.0, 1e-38, -1e-45, 3e38, -3e38, 1.5, -2.5, 65504.0)


def rows(draw, max_rows=11, max_c=40, nonfinite=False):
    r = draw(st.integers(1, max_rows))   # several ROW_BLOCKs and a ragged end
    c = draw(st.integers(1, max_c))
    elems = st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from(EDGES),
                      st.floats(width=32, allow_nan=nonfinite, allow_infinity=nonfinite))
    return draw(hnp.arrays(F32, (r, c), elements=elems))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), eps=st.sampled_from([1e-12, 1e-5, 1e-6]))
def test_layer_norm_rows_is_its_definition(data, eps):
    x = rows(data.draw, nonfinite=True)
    g = data.draw(hnp.arrays(F32, x.shape[1], elements=st.floats(-4, 4, width=32)))
    b = data.draw(hnp.arrays(F32, x.shape[1], elements=st.floats(-4, 4, width=32)))
    with np.errstate(all="ignore"):
        y = fused.layer_norm_rows(x, g, b, eps)[0]
        want = layer_norm_definition(x, g, b, eps)
    assert_bitexact(canonical_nan(y), canonical_nan(want), "layer_norm")


@settings(max_examples=100, deadline=None)
@given(data=st.data(), has_bias=st.booleans())
def test_residual_layer_norm_rows_is_the_definition_of_the_sum(data, has_bias):
    x = rows(data.draw)
    y = data.draw(hnp.arrays(F32, x.shape, elements=st.floats(-1e4, 1e4, width=32)))
    c = x.shape[1]
    bias = data.draw(hnp.arrays(F32, c, elements=st.floats(-4, 4, width=32))) if has_bias else None
    g, beta = np.linspace(-2, 2, c, dtype=F32), np.linspace(1, -1, c, dtype=F32)
    with np.errstate(all="ignore"):
        got = fused.residual_layer_norm_rows(x, y, bias, g, beta, 1e-12)[0]
        want = layer_norm_definition(x + (y if bias is None else y + bias), g, beta, 1e-12)
    assert_bitexact(canonical_nan(got), canonical_nan(want), "residual_layer_norm")


@settings(max_examples=150, deadline=None)
@given(data=st.data(), eps=st.sampled_from([1e-5, 1e-6]))
def test_rms_norm_rows_is_its_definition(data, eps):
    x = rows(data.draw, nonfinite=True)
    g = data.draw(hnp.arrays(F32, x.shape[1], elements=st.floats(-4, 4, width=32)))
    with np.errstate(all="ignore"):
        y, rstd = fused.rms_norm_rows(x, g, eps)
        want = rms_norm_definition(x, g, eps)
    assert rstd.shape == (x.shape[0], 1)
    assert_bitexact(canonical_nan(y), canonical_nan(want), "rms_norm")


def test_rms_norm_sums_squares_in_float64_where_float32_would_overflow():
    x = np.array([[2e19, 0, 0, 0]], F32)  # x^2 = 4e38 overflows float32; the mean square 1e38 fits
    y = fused.rms_norm_rows(x, np.ones(4, F32), 1e-6)[0]
    assert np.all(np.isfinite(y)) and abs(float(y[0, 0]) - 2.0) < 1e-6


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mean_pool_of_a_sentence_is_the_same_alone_in_a_batch_and_padded(data):
    T, C = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 12))
    h = data.draw(hnp.arrays(F32, (1, T, C), elements=st.floats(-100, 100, width=32)))
    alone = mean_pool(h, np.ones((1, T), np.int64), normalize=True)
    pad = data.draw(st.integers(0, 5))
    other = data.draw(hnp.arrays(F32, (2, T + pad, C), elements=st.floats(-100, 100, width=32)))
    batch = other.copy()
    batch[1, :T] = h[0]
    mask = np.ones((2, T + pad), np.int64)
    mask[1, T:] = 0
    assert_bitexact(mean_pool(batch, mask, normalize=True)[1], alone[0], "sentence embedding")


def test_mean_pool_without_a_mask_is_the_all_ones_mask():
    h = np.random.default_rng(0).standard_normal((3, 7, 5)).astype(F32)
    assert_bitexact(mean_pool(h), mean_pool(h, np.ones((3, 7))), "mean_pool")


@settings(max_examples=100, deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
                    elements=st.floats(-1e300, 1e300)), split=st.integers(0, 6))
def test_sums_in_order_are_left_to_right_and_carry_over_batches(x, split):
    flat = x.reshape(-1)
    want = 0.0
    for v in flat:  # the definition: one Python float add per element
        want += float(v)
    got = sum_in_order(x)
    assert np.float64(got).tobytes() == np.float64(want).tobytes()
    k = min(split, flat.size)
    assert np.float64(sum_in_order(flat[k:], sum_in_order(flat[:k]))).tobytes() == np.float64(want).tobytes()
    if x.ndim >= 1 and x.size:
        per_row = sums_in_order(x, axis=-1)
        rows2 = x.reshape(-1, x.shape[-1])
        for r in range(rows2.shape[0]):
            s = 0.0
            for v in rows2[r]:
                s += float(v)
            assert np.float64(per_row.reshape(-1)[r]).tobytes() == np.float64(s).tobytes()
