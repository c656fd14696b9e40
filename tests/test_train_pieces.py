"""Fake-quant gradients (STE rules, LSQ, PACT) and the optimizers, against PyTorch where it is
installed (the conformance extra) and against their definitions otherwise."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import refquant as rq
from refquant.train import ste
from refquant.train.optim import Adam, AdamW

F32 = np.float32


def test_ste_rules_identity_amax_and_rounded_range():
    x = np.array([-3.0, -1.0, -0.99, 0.0, 0.5, 1.0, 1.004, 1.01, 5.0], F32)
    spec = rq.dialect("modelopt", narrow=True)
    qp = rq.qparams_from_amax(F32(1.0), spec)
    d = np.arange(1, 10, dtype=F32)
    assert np.array_equal(ste.fake_quant_backward(d, x, qp, "identity"), d)
    want_amax = np.where(np.abs(x) <= 1.0, d, 0)  # inclusive, on the float amax
    assert np.array_equal(ste.fake_quant_backward(d, x, qp, "amax"), want_amax)
    tq = rq.dialect("torch")
    qpt = rq.QParams(np.float32(1 / 127), np.int32(0), rq.dialect("torch", symmetric=False, signed=True))
    # 1.004 * 127 = 127.5 -> rounds to 128 (outside); 1.0039 rounds back to 127 (inside)
    xt = np.array([1.0039, 1.0045, -1.0, -1.008, -1.0120], F32)
    got = ste.fake_quant_backward(np.ones(5, F32), xt, qpt, "rounded_range")
    assert got.tolist() == [1, 0, 1, 1, 0]
    del tq
    with pytest.raises(rq.ConfigError, match="STE rule"):
        ste.ste_mask(x, qp, "always")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), scale=st.floats(1e-3, 2.0), zp=st.floats(-3.0, 260.0))
@example(seed=127, scale=1.0, zp=0.5)   # zero points k + 0.5: the forward rounds to even, the
@example(seed=6, scale=0.5, zp=2.5)     # backward half up, and dscale needs the backward's own x_fq
def test_rounded_range_and_lsq_match_pytorch(seed, scale, zp):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(64) * 100 * scale).astype(F32)
    zpi = int(np.clip(np.rint(zp), 0, 255))
    # PyTorch's STE mask (fake_quantize_per_tensor_affine, uint8 affine)
    xt = torch.tensor(x, requires_grad=True)
    torch.fake_quantize_per_tensor_affine(xt, float(F32(scale)), zpi, 0, 255).backward(torch.ones(64))
    qp = rq.QParams(np.float32(scale), np.int32(zpi), rq.dialect("torch", symmetric=False, signed=False))
    assert np.array_equal(ste.fake_quant_backward(np.ones(64, F32), x, qp, "rounded_range"), xt.grad.numpy())
    # LSQ: _fake_quantize_learnable_per_tensor_affine with grad_factor 1/sqrt(N * qmax)
    xt = torch.tensor(x, requires_grad=True)
    st_ = torch.tensor([F32(scale)], requires_grad=True)
    zt = torch.tensor([F32(zp)], requires_grad=True)
    gf = 1.0 / np.sqrt(64 * 255)
    dy = rng.standard_normal(64).astype(F32)
    y = torch._fake_quantize_learnable_per_tensor_affine(xt, st_, zt, 0, 255, gf)
    y.backward(torch.tensor(dy))
    ours, cache = ste.lsq_forward(x, F32(scale), F32(zp), 0, 255)
    assert np.array_equal(ours, y.detach().numpy())
    dx, ds, dz = ste.lsq_backward(dy, cache)
    assert np.array_equal(dx, xt.grad.numpy())
    assert np.isclose(ds, float(st_.grad), rtol=1e-4, atol=1e-6) and np.isclose(dz, float(zt.grad), rtol=1e-4, atol=1e-6)


def test_pact_clip_gradients():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    y, cache = ste.pact_forward(x, -1.0, 1.0)
    assert y.tolist() == [-1, -1, 0, 0.5, 1, 1]
    dx, dlo, dhi = ste.pact_backward(np.arange(1.0, 7.0), cache)
    assert dx.tolist() == [0, 0, 3, 4, 0, 0] and dlo == 1 + 2 and dhi == 5 + 6
    with pytest.raises(rq.ConfigError):
        ste.pact_forward(x, 1.0, 1.0)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_optimizers_match_torch_step_for_step(cls):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    tparams = {n: torch.tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    ours = cls(params, lr=1e-2, weight_decay=0.1)
    decay, no_decay = [tparams["w"]], [tparams["b"]]
    topt = getattr(torch.optim, cls.__name__)([{"params": decay, "weight_decay": 0.1},
                                              {"params": no_decay, "weight_decay": 0.0}], lr=1e-2)
    for _ in range(7):
        grads = {n: rng.standard_normal(p.shape) for n, p in params.items()}
        ours.step(grads)
        for n, t in tparams.items():
            t.grad = torch.tensor(grads[n])
        topt.step()
    for n in params:
        assert np.allclose(params[n], tparams[n].detach().numpy(), rtol=1e-12, atol=1e-14), n


@pytest.mark.parametrize("lr", [0, -1e-3, float("nan")])
def test_optimizer_refuses_a_learning_rate_that_is_not_positive(lr):
    with pytest.raises(rq.ConfigError, match="learning rate"):
        AdamW({"w": np.zeros(2)}, lr=lr)
