"""ZeroQuant row-block groups on sites with few or odd output rows (issue 14, part 3; contract
rule 7): num_groups must divide every row-grouped site's rows; such sites run identically on
every backend and round-trip through a quantized checkpoint; any other site is refused when the
recipe is planned, by a message naming the site, its rows and num_groups."""
import numpy as np
import pytest

import refquant as rq
from refquant.checkpoint import load_quantized, save_quantized
from refquant.quant import per_output_row, row_block_rows
from refquant.train.lkd import lkd, random_batches
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint

F32 = np.float32
ZEROQUANT = ("zeroquant-w8a8", "zeroquant-w4a8", "zeroquant-w4a16")

# odd widths and few key/value heads: every row count is a multiple of FITS[family] only
ODD = {"llama": (llama_checkpoint, dict(hidden=40, heads=5, kv_heads=1, head_dim=8, intermediate=56)),
       # k_proj / v_proj 8 rows, q_proj / o_proj / down_proj 40, gate / up 56
       "gpt2": (gpt2_checkpoint, dict(n_embd=20, n_head=4)),         # c_attn 60, c_proj 20, c_fc 80
       "bert": (bert_checkpoint, dict(hidden=20, intermediate=30))}   # 20 and 30 rows
FITS = {"llama": 8, "gpt2": 20, "bert": 10}   # the largest count dividing every site's rows


@pytest.fixture(scope="module", params=sorted(ODD))
def odd(request, tmp_path_factory):
    make, dims = ODD[request.param]
    return rq.load(make(tmp_path_factory.mktemp(request.param), **dims)[0])


def ids_for(model, seed=3):
    return np.random.default_rng(seed).integers(0, model.vocab_size, size=(2, 6))


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def row_counts(model):
    shapes = model.expected_shapes()
    return {s: shapes[s + ".weight"][0] for s in model.sites() if s != "lm_head"}


@pytest.mark.parametrize("name", ZEROQUANT)
def test_family_default_group_count_is_refused_naming_site_rows_and_a_count_that_fits(odd, name):
    groups = {"bert": 48, "gpt2": 64, "llama": 64}[odd.family]   # quantize_model's defaults
    first = next(s for s, rows in row_counts(odd).items() if rows % groups)
    with pytest.raises(rq.ShapeError) as e:
        rq.quantize_model(odd, name, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"site {first}:" in msg and f"{row_counts(odd)[first]} output rows" in msg
    assert f"num_groups={groups}" in msg and f"num_groups={FITS[odd.family]} divides every" in msg


def test_fewer_rows_than_groups_is_refused_naming_the_site(tmp_path):
    """The issue's case: a grouped-query k_proj of 8 rows; 40 groups divide every other site."""
    make, dims = ODD["llama"]
    m = rq.load(make(tmp_path, **{**dims, "intermediate": 80})[0])
    for name in ZEROQUANT:
        with pytest.raises(rq.ShapeError, match=r"site layers\.0\.self_attn\.k_proj: 8 output rows cannot be cut "
                                                r"into num_groups=40 .*reshape\(40, -1\) would cut rows into "
                                                r"8-element pieces.*num_groups=8 divides every"):
            rq.quantize_model(m, name, num_groups=40, progress=False)
    # float_sites takes the refused sites out of the plan: the rest runs
    kv = [s for s in m.sites() if s.endswith(("k_proj", "v_proj"))]
    qm = rq.quantize_model(m, "zeroquant-w8a8", num_groups=40, float_sites=kv, progress=False)
    assert same_bits(qm.forward(ids_for(m), backend="numba"), qm.forward(ids_for(m), backend="numpy"))
    with pytest.raises(rq.ShapeError, match="k_proj: 8 output rows"):
        lkd(m, "zeroquant-w4a8", random_batches(m, 2, 4), steps=1, progress=False, num_groups=40)


@pytest.mark.parametrize("name", ZEROQUANT)
def test_sites_whose_rows_the_groups_divide_run_identically_on_every_integer_backend(odd, name, tmp_path):
    qm = rq.quantize_model(odd, name, num_groups=FITS[odd.family], progress=False)
    ids = ids_for(odd)
    want = qm.forward(ids, backend="numpy")
    assert np.all(np.isfinite(want))
    assert same_bits(qm.forward(ids, backend="numba"), want)
    for site, q in qm.quantized_sites.items():
        rows, spec = q.weight_shape()[0], q.rule.weight
        block = rows // FITS[odd.family]
        # the groups are DeepSpeed's reshape(num_groups, -1): here blocks of `block` whole rows
        w = odd.w(site + ".weight")
        amax = np.abs(w.reshape(FITS[odd.family], -1)).max(axis=1)
        assert same_bits(q.weight_qp.scale, (amax / F32(2 ** (spec.bits - 1))).astype(F32)), site
        steps = qm.weight_steps(site)
        assert steps.shape == (rows,) and same_bits(steps, np.repeat(steps[::block], block)), site
    if name == "zeroquant-w8a8" and odd.family != "llama":  # int32 bias: s_w per row from the groups
        qb = rq.quantize_model(odd, name, num_groups=FITS[odd.family], bias="int32", progress=False)
        assert same_bits(qb.forward(ids, backend="numba"), qb.forward(ids, backend="numpy"))
        site = next(iter(qb.quantized_sites))
        assert same_bits(qb.quantized_sites[site].weight_scale_per_row(), qb.weight_steps(site))
    # a quantized checkpoint of it loads back to the same bytes
    back = load_quantized(save_quantized(qm, tmp_path / "q"))
    assert same_bits(back.forward(ids, backend="numpy"), want)
    assert same_bits(back.forward(ids, backend="numba"), want)


def test_cuda_backend_on_odd_rows(tmp_path):
    from refquant.kernels import cuda as kc
    if not kc.available():
        pytest.skip(f"CUDA kernels unavailable: {kc.unavailable_reason()}")
    make, dims = ODD["llama"]
    m = rq.load(make(tmp_path, layers=1, **dims)[0])
    for name in ("zeroquant-w8a8", "zeroquant-w4a8"):
        qm = rq.quantize_model(m, name, num_groups=FITS["llama"], progress=False)
        ids = ids_for(m)[:1, :4]
        assert same_bits(qm.forward(ids, backend="cuda"), qm.forward(ids, backend="numpy")), name


def test_row_block_rows_is_the_one_rule():
    spec = rq.dialect("deepspeed", granularity="group", group_kind="rows", num_groups=4)
    assert row_block_rows((8, 5), spec, "w") == 2
    with pytest.raises(rq.ShapeError, match=r"^w: 6 output rows cannot be cut into num_groups=4 .*"
                                            r"reshape\(4, -1\) would cut rows into 3-element pieces"):
        row_block_rows((6, 2), spec, "w")
    with pytest.raises(rq.ShapeError, match=r"^w: 2 output rows .*reshape\(4, -1\) fails on its 6 elements"):
        row_block_rows((2, 3), spec, "w")
    with pytest.raises(rq.ShapeError, match="2-D"):
        row_block_rows((8,), spec, "w")
    assert per_output_row(np.array([1, 2, 3, 4], F32), (8, 5), spec).tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    # the numeric core keeps DeepSpeed's cut of any tensor (SymQuantizer, checked against it in
    # validation/conformance/check_papers.py): 6 x 2 in 4 groups of 3 elements
    x = np.arange(12, dtype=F32).reshape(6, 2) - 5
    qp = rq.choose_qparams(x, spec)
    assert same_bits(qp.scale, (np.abs(x.reshape(4, 3)).max(axis=1) / F32(128)).astype(F32))


def test_a_checkpoint_whose_groups_cut_rows_is_refused_at_load(tmp_path):
    import json
    make, dims = ODD["llama"]
    m = rq.load(make(tmp_path / "m", **dims)[0])
    path = save_quantized(rq.quantize_model(m, "zeroquant-w8a8", num_groups=8, progress=False), tmp_path / "q")
    cfg = (path / "config.json").read_text()
    assert '"num_groups": 8' in cfg
    (path / "config.json").write_text(cfg.replace('"num_groups": 8', '"num_groups": 16'))
    with pytest.raises(rq.ShapeError, match=r"q: model\.layers\.0\.self_attn\.q_proj: 40 output rows cannot be "
                                            r"cut into num_groups=16"):
        load_quantized(path)
