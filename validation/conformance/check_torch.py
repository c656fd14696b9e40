"""Conformance: refquant's "torch" dialect vs PyTorch (CPU), bit for bit.

Ops (each over the integer ranges qint8 [-128,127], quint8 [0,255], [-127,127], reduce_range
[-64,63] / [0,127], and 4-bit [-8,7] / [0,15] where the op takes quant_min / quant_max):
  torch.fake_quantize_per_tensor_affine  (float scale / int zp, and tensor scale / zp)
  torch.fake_quantize_per_channel_affine (axis 0, 1, -1)
  torch.quantize_per_tensor(...).int_repr() and .dequantize()   (qint8, quint8)
  torch.quantize_per_channel(...).int_repr() and .dequantize()  (qint8, quint8)
  observers' calculate_qparams (then fake-quant with them): MinMaxObserver qint8 symmetric,
  quint8 affine, quint8 symmetric, [-127,127] eps=2^-12, reduce_range; PerChannelMinMaxObserver
  qint8 symmetric (ch_axis 0 and 1), quint8 affine, [-127,127] eps=2^-12
Non-finite inputs are compared against rq.dialect("torch", stack_artifacts=True) in a separate
section.

Run: /work/venv/bin/python validation/conformance/check_torch.py   (exit 1 on any mismatch)
"""
from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.set_threads()

import numpy as np  # noqa: E402

import refquant as rq  # noqa: E402
from refquant.quant import expand  # noqa: E402

F32 = np.float32
ALT = "diagnostics: the same library results vs refquant with a changed rule (informational)"
CASES = 600
OBS_CASES = 300

# (label, quant_min, quant_max, refquant overrides)
RANGES = [
    ("qint8", -128, 127, dict(bits=8, signed=True)),
    ("quint8", 0, 255, dict(bits=8, signed=False)),
    ("[-127,127]", -127, 127, dict(bits=8, signed=True, narrow=True)),
    ("reduce_range qint8", -64, 63, dict(bits=7, signed=True)),
    ("reduce_range quint8", 0, 127, dict(bits=7, signed=False)),
    ("int4", -8, 7, dict(bits=4, signed=True)),
    ("uint4", 0, 15, dict(bits=4, signed=False)),
]


def _torch():
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    return torch


def _shape(rng, min_ndim=1):
    while True:
        s = C.ODD_SHAPES[int(rng.integers(len(C.ODD_SHAPES)))]
        if len(s) >= min_ndim:
            return s


def _zp(rng, qmin, qmax, shape=()):
    zp = rng.integers(qmin, qmax + 1, shape)
    pick = rng.random(shape) < 0.3
    special = rng.choice([qmin, qmax, 0 if qmin <= 0 <= qmax else qmin, (qmin + qmax + 1) // 2], shape)
    return np.where(pick, special, zp).astype(np.int64)


def given_spec(zp, **kw):
    """Spec for an explicitly given (scale, zero point) fed to a torch *_affine op: the affine
    spec (symmetric=False); a symmetric spec fixes its zero point (0, or 128 for quint8)."""
    return rq.dialect("torch", symmetric=False, **kw)


def _x_for(rng, s_full, z_full, qmin, qmax):
    if rng.random() < 0.04:
        return np.zeros(s_full.shape, F32)
    return C.values_for(rng, s_full, z_full, qmin, qmax)


# ---------------------------------------------------------------------------------------
# fake quantize
# ---------------------------------------------------------------------------------------
def check_fake_quant_per_tensor(rep, torch, rng, tensor_qparams: bool):
    name = ("torch fake_quantize_per_tensor_affine (tensor scale/zero_point)" if tensor_qparams
            else "torch fake_quantize_per_tensor_affine (float scale, int zero_point)")
    chk = rep.check(name)
    ties = C.TieStats()
    for i in range(CASES):
        label, qmin, qmax, ov = RANGES[i % len(RANGES)]
        shape = _shape(rng)
        s = C.random_scale(rng)
        zp = int(_zp(rng, qmin, qmax))
        if i == 1:   # quint8: the FBGEMM example, x * (1/s) = 127.5 -> 128 (x / s = 127.49999)
            shape, s, zp = (3,), C.FBGEMM_SCALE, 0
        spec = given_spec(zp, **ov)
        s_full = np.full(shape, s, F32)
        x = _x_for(rng, s_full, np.full(shape, zp), qmin, qmax)
        ties.add(x, s_full)
        xt = torch.from_numpy(x.copy())
        if tensor_qparams:
            lib = torch.fake_quantize_per_tensor_affine(
                xt, torch.tensor(s, dtype=torch.float32), torch.tensor(zp, dtype=torch.int32), qmin, qmax)
        else:
            lib = torch.fake_quantize_per_tensor_affine(xt, float(s), zp, qmin, qmax)
        ref = rq.fake_quant(x, rq.QParams(s, zp, spec))
        if i == 1:
            x = np.array([C.FBGEMM_X, -C.FBGEMM_X, 0.0], F32)
            xt = torch.from_numpy(x.copy())
            lib = (torch.fake_quantize_per_tensor_affine(xt, torch.tensor(s), torch.tensor(zp, dtype=torch.int32), qmin, qmax)
                   if tensor_qparams else torch.fake_quantize_per_tensor_affine(xt, float(s), zp, qmin, qmax))
            ref = rq.fake_quant(x, rq.QParams(s, zp, spec))
            chk.notes.append(f"FBGEMM case x={float(C.FBGEMM_X)!r}, s={float(s)!r}, quint8 zp 0: library "
                             f"q = {float(lib[0]) / float(s):.0f}, refquant q = {float(ref[0]) / float(s):.0f}")
        chk.case([("y", ref, lib.numpy(), {"x": x, "scale": s, "zero_point": np.int64(zp)})],
                 {"x": x, "scale": s, "zero_point": zp, "quant_min/max": (qmin, qmax), "range": label}, spec)
    chk.notes.append(ties.note())


def check_fake_quant_per_channel(rep, torch, rng):
    chk = rep.check("torch fake_quantize_per_channel_affine (axis 0/1/-1)")
    ties = C.TieStats()
    for i in range(CASES):
        label, qmin, qmax, ov = RANGES[i % len(RANGES)]
        shape = _shape(rng)
        axis = int(rng.choice([0, 1, -1])) if len(shape) > 1 else int(rng.choice([0, -1]))
        c = shape[axis]
        scale = np.array([C.random_scale(rng) for _ in range(c)], F32)
        zp = _zp(rng, qmin, qmax, (c,))
        spec = given_spec(zp, granularity="channel", axis=axis, **ov)
        s_full = expand(scale, shape, spec)
        z_full = expand(zp, shape, spec)
        x = _x_for(rng, s_full, z_full, qmin, qmax)
        ties.add(x, s_full)
        lib = torch.fake_quantize_per_channel_affine(
            torch.from_numpy(x.copy()), torch.from_numpy(scale.copy()),
            torch.from_numpy(zp.astype(np.int32)), axis % len(shape), qmin, qmax)
        ref = rq.fake_quant(x, rq.QParams(scale, zp, spec))
        chk.case([("y", ref, lib.numpy(), {"x": x, "scale": s_full, "zero_point": z_full})],
                 {"x": x, "scale": scale, "zero_point": zp, "axis": axis,
                  "quant_min/max": (qmin, qmax), "range": label}, spec)
    chk.notes.append(ties.note())


# ---------------------------------------------------------------------------------------
# real quantize
# ---------------------------------------------------------------------------------------
def check_quantize_per_tensor(rep, torch, rng, dtype_name):
    qdtype = {"qint8": torch.qint8, "quint8": torch.quint8}[dtype_name]
    ov = dict(signed=dtype_name == "qint8")
    qmin, qmax = rq.dialect("torch", **ov).qmin, rq.dialect("torch", **ov).qmax
    chk_q = rep.check(f"torch quantize_per_tensor {dtype_name} .int_repr()")
    chk_d = rep.check(f"torch quantize_per_tensor {dtype_name} .dequantize() (of its int_repr)")
    chk_b = rep.check(f"torch quantize_per_tensor {dtype_name} .int_repr() vs dialect(zero_point_add='after_round')",
                      informational=True, section=ALT)
    ties = C.TieStats()
    explained = {}
    for i in range(CASES):
        # long 1-D tensors too, so that the vectorized (AVX) path and its scalar tail both run
        shape = _shape(rng) if i % 3 else (int(rng.integers(1, 200)),)
        s = C.random_scale(rng)
        zp = int(_zp(rng, qmin, qmax))
        if i == 0:
            shape, s, zp = (3,), C.FBGEMM_SCALE, 0
        spec = given_spec(zp, op="quantize_per_tensor", **ov)
        s_full = np.full(shape, s, F32)
        x = _x_for(rng, s_full, np.full(shape, zp), qmin, qmax)
        if i == 0:
            x = np.array([C.FBGEMM_X, -C.FBGEMM_X, 0.0], F32)
        ties.add(x, s_full)
        qt = torch.quantize_per_tensor(torch.from_numpy(x.copy()), float(s), zp, qdtype)
        qp = rq.QParams(s, zp, spec)
        ref_q = rq.quantize(x, qp)
        lib_q = qt.int_repr().numpy()
        inputs = {"x": x, "scale": s, "zero_point": zp, "dtype": dtype_name}
        per = {"x": x, "scale": s, "zero_point": np.int64(zp)}
        cand_note = candidates_note(x, s_full, np.full(shape, zp), qmin, qmax, lib_q)
        chk_q.case([("int_repr", ref_q, lib_q, per)], inputs, spec, extra=cand_note)
        if i == 0:
            chk_q.notes.append(f"FBGEMM case x={float(C.FBGEMM_X)!r}, s={float(s)!r}, zp 0: library "
                               f"{int(lib_q[0])}, refquant {int(ref_q[0])}")
        for k, v in candidates(x, s_full, zp, qmin, qmax).items():
            explained[k] = explained.get(k, 0) + int(np.array_equal(v, lib_q.astype(np.float64)))
        chk_d.case([("dequantize", rq.dequantize(lib_q, qp), qt.dequantize().numpy(), {"q": lib_q})],
                   {"q": lib_q, "scale": s, "zero_point": zp}, spec)
        spec_b = spec.replace(zero_point_add="after_round")
        chk_b.case([("int_repr", rq.quantize(x, rq.QParams(s, zp, spec_b)), lib_q, per)], inputs, spec_b,
                   extra=cand_note)
    chk_q.notes.append(ties.note())
    chk_q.notes.append("cases reproduced by each formula (NumPy emulation): "
                       + "; ".join(f"{k}: {v}/{CASES}" for k, v in explained.items()))


def check_quantize_per_channel(rep, torch, rng, dtype_name):
    qdtype = {"qint8": torch.qint8, "quint8": torch.quint8}[dtype_name]
    signed = dtype_name == "qint8"
    chk_q = rep.check(f"torch quantize_per_channel {dtype_name} .int_repr() (axis 0/1/-1)")
    chk_d = rep.check(f"torch quantize_per_channel {dtype_name} .dequantize() (of its int_repr)")
    chk_b = rep.check(f"torch quantize_per_channel {dtype_name} .int_repr() vs dialect(zero_point_add='after_round')",
                      informational=True, section=ALT)
    explained = {}
    ties = C.TieStats()
    for i in range(CASES):
        shape = _shape(rng)
        axis = int(rng.choice([0, 1, -1])) if len(shape) > 1 else 0
        c = shape[axis]
        spec0 = rq.dialect("torch", signed=signed)
        qmin, qmax = spec0.qmin, spec0.qmax
        scale = np.array([C.random_scale(rng) for _ in range(c)], F32)
        zp = _zp(rng, qmin, qmax, (c,))
        spec = given_spec(zp, op="quantize_per_channel", signed=signed, granularity="channel", axis=axis)
        s_full = expand(scale, shape, spec)
        z_full = expand(zp, shape, spec)
        x = _x_for(rng, s_full, z_full, qmin, qmax)
        ties.add(x, s_full)
        qt = torch.quantize_per_channel(torch.from_numpy(x.copy()), torch.from_numpy(scale.astype(np.float64)),
                                        torch.from_numpy(zp), axis % len(shape), qdtype)
        qp = rq.QParams(scale, zp, spec)
        ref_q = rq.quantize(x, qp)
        lib_q = qt.int_repr().numpy()
        inputs = {"x": x, "scale": scale, "zero_point": zp, "axis": axis, "dtype": dtype_name}
        per = {"x": x, "scale": s_full, "zero_point": z_full}
        chk_q.case([("int_repr", ref_q, lib_q, per)], inputs, spec,
                   extra=candidates_note(x, s_full, z_full, qmin, qmax, lib_q))
        for k, v in candidates(x, s_full, z_full, qmin, qmax).items():
            explained[k] = explained.get(k, 0) + int(np.array_equal(v, lib_q.astype(np.float64)))
        chk_d.case([("dequantize", rq.dequantize(lib_q, qp), qt.dequantize().numpy(),
                     {"q": lib_q, "scale": s_full, "zero_point": z_full})],
                   {"q": lib_q, "scale": scale, "zero_point": zp, "axis": axis}, spec)
        spec_b = spec.replace(zero_point_add="after_round")
        chk_b.case([("int_repr", rq.quantize(x, rq.QParams(scale, zp, spec_b)), lib_q, per)], inputs, spec_b)
    chk_q.notes.append("cases reproduced by each formula (NumPy emulation): "
                       + "; ".join(f"{k}: {v}/{CASES}" for k, v in explained.items()))
    chk_q.notes.append(ties.note())


def candidates(x, s, zp, qmin, qmax):
    """The integer each candidate formula gives, elementwise (x float32, s / zp broadcastable)."""
    x = np.asarray(x, F32)
    s = np.asarray(s, F32)
    zpf = np.asarray(zp, np.float64)
    inv = (F32(1) / s).astype(F32)
    with np.errstate(all="ignore"):
        p = (x * inv).astype(F32)
        out = {
            "rint(x*(1/s)) + zp  [refquant torch]": np.rint(p) + zpf,
            "rint(float32(x*(1/s)) + zp)": np.rint((p + zpf.astype(F32)).astype(F32)),
            "rint(fma(x, 1/s, zp))": np.rint((x.astype(np.float64) * inv.astype(np.float64) + zpf).astype(F32)),
            "rint(x/s) + zp": np.rint(x / s) + zpf,
        }
    return {k: np.clip(v, qmin, qmax) for k, v in out.items()}


def candidates_note(x, s_full, z_full, qmin, qmax, lib_q):
    """extra= callback for the mismatch report: every candidate formula at the mismatching index."""
    def note(i):
        if i is None:
            return ""
        xi, si, zi = x.reshape(-1)[i], np.asarray(s_full, F32).reshape(-1)[i], np.asarray(z_full).reshape(-1)[i]
        got = int(np.asarray(lib_q).reshape(-1)[i])
        parts = [f"{k} = {int(v)}{'  <- library' if int(v) == got else ''}"
                 for k, v in candidates(xi, si, zi, qmin, qmax).items()]
        return "candidate formulas at that index: " + "; ".join(parts)
    return note


def check_decomposed(rep, torch, rng):
    """torch.ops.quantized_decomposed (the PT2E reference ops, torch/ao/quantization/fx/_decomposed.py)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops)
    ops = torch.ops.quantized_decomposed
    c_qt = rep.check("torch quantized_decomposed.quantize_per_tensor")
    c_dt = rep.check("torch quantized_decomposed.dequantize_per_tensor")
    c_qc = rep.check("torch quantized_decomposed.quantize_per_channel (axis 0/1/-1)")
    c_dc = rep.check("torch quantized_decomposed.dequantize_per_channel")
    for i in range(CASES):
        label, qmin, qmax, ov = RANGES[i % len(RANGES)]
        tdt = torch.int8 if ov["signed"] else torch.uint8
        shape = _shape(rng)
        s = C.random_scale(rng)
        zp = int(_zp(rng, qmin, qmax))
        spec = given_spec(zp, **ov)
        s_full = np.full(shape, s, F32)
        x = _x_for(rng, s_full, np.full(shape, zp), qmin, qmax)
        q_lib = ops.quantize_per_tensor(torch.from_numpy(x.copy()), float(s), zp, qmin, qmax, tdt)
        qp = rq.QParams(s, zp, spec)
        inputs = {"x": x, "scale": s, "zero_point": zp, "quant_min/max": (qmin, qmax)}
        c_qt.case([("q", rq.quantize(x, qp), q_lib.numpy(), {"x": x})], inputs, spec)
        d_lib = ops.dequantize_per_tensor(q_lib, float(s), zp, qmin, qmax, tdt)
        c_dt.case([("y", rq.dequantize(q_lib.numpy(), qp), d_lib.numpy(), {"q": q_lib.numpy()})],
                  {"q": q_lib.numpy(), "scale": s, "zero_point": zp}, spec)
        # per channel
        axis = int(rng.choice([0, 1, -1])) if len(shape) > 1 else 0
        c = shape[axis]
        scale = np.array([C.random_scale(rng) for _ in range(c)], F32)
        zpc = _zp(rng, qmin, qmax, (c,))
        spec_c = given_spec(zpc, granularity="channel", axis=axis, **ov)
        sc_full = expand(scale, shape, spec_c)
        zc_full = expand(zpc, shape, spec_c)
        xc = _x_for(rng, sc_full, zc_full, qmin, qmax)
        qc_lib = ops.quantize_per_channel(torch.from_numpy(xc.copy()), torch.from_numpy(scale.copy()),
                                          torch.from_numpy(zpc), axis % len(shape), qmin, qmax, tdt)
        qpc = rq.QParams(scale, zpc, spec_c)
        inputs_c = {"x": xc, "scale": scale, "zero_point": zpc, "axis": axis, "quant_min/max": (qmin, qmax)}
        c_qc.case([("q", rq.quantize(xc, qpc), qc_lib.numpy(), {"x": xc, "scale": sc_full, "zero_point": zc_full})],
                  inputs_c, spec_c)
        dc_lib = ops.dequantize_per_channel(qc_lib, torch.from_numpy(scale.copy()), torch.from_numpy(zpc),
                                            axis % len(shape), qmin, qmax, tdt)
        c_dc.case([("y", rq.dequantize(qc_lib.numpy(), qpc), dc_lib.numpy(), {"q": qc_lib.numpy()})],
                  {"q": qc_lib.numpy(), "scale": scale, "zero_point": zpc, "axis": axis}, spec_c)


# ---------------------------------------------------------------------------------------
# observers
# ---------------------------------------------------------------------------------------
def _observer_configs(torch):
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    narrow = dict(narrow=True, scale_floor=2.0 ** -12, zero_scale=2.0 ** -12)
    return [
        ("MinMaxObserver(qint8, per_tensor_symmetric)",
         lambda: MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric), None, {}),
        ("MinMaxObserver(quint8, per_tensor_affine)",
         lambda: MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine), None,
         dict(signed=False, symmetric=False)),
        ("MinMaxObserver(quint8, per_tensor_symmetric)",
         lambda: MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric), None,
         dict(signed=False)),
        ("MinMaxObserver(qint8, affine)",
         lambda: MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine), None,
         dict(symmetric=False)),
        ("MinMaxObserver(qint8, symmetric, [-127,127], eps=2^-12)",
         lambda: MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                quant_min=-127, quant_max=127, eps=2 ** -12), None, narrow),
        ("MinMaxObserver(quint8, affine, reduce_range=True)",
         lambda: MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=True),
         None, dict(bits=7, signed=False, symmetric=False)),
        ("MinMaxObserver(qint8, symmetric, reduce_range=True)",
         lambda: MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, reduce_range=True),
         None, dict(bits=7)),
        ("PerChannelMinMaxObserver(ch_axis=0, qint8, per_channel_symmetric)",
         lambda: PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
         0, {}),
        ("PerChannelMinMaxObserver(ch_axis=1, qint8, per_channel_symmetric)",
         lambda: PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
         1, {}),
        ("PerChannelMinMaxObserver(ch_axis=0, quint8, per_channel_affine)",
         lambda: PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine),
         0, dict(signed=False, symmetric=False)),
        ("PerChannelMinMaxObserver(ch_axis=0, qint8, [-127,127], eps=2^-12)",
         lambda: PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                          quant_min=-127, quant_max=127, eps=2 ** -12), 0, narrow),
    ]


def check_observers(rep, torch, rng):
    for name, make, ch_axis, ov in _observer_configs(torch):
        chk = rep.check(f"torch {name} qparams + fake-quant")
        if ch_axis is None:
            spec = rq.dialect("torch", **ov)
        else:
            spec = rq.dialect("torch", granularity="channel", axis=ch_axis, **ov)
        qmin, qmax = spec.qmin, spec.qmax
        n_zero = n_split = 0
        for i in range(OBS_CASES):
            shape = _shape(rng, 1 if ch_axis is None else 2)  # PerChannelMinMaxObserver flattens dims 1..: needs 2-D+
            if i == 0:
                x = np.zeros(shape, F32)
            elif i == 1:
                x = np.array(np.full(shape, -0.0, F32))
            else:
                x = C.data_for_qparams(rng, shape)
                if ch_axis is not None:
                    x = C.zero_slices(rng, x, ch_axis)
                if not spec.symmetric and spec.qmin != 0 and rng.random() < 0.3:
                    # [min, max] where the two affine zero-point rules round differently
                    if ch_axis is None:
                        x = C.splitting_rows(rng, x.reshape(1, -1), qmin, qmax).reshape(shape)
                    else:
                        xm = np.moveaxis(x, ch_axis, 0)
                        xm = C.splitting_rows(rng, xm.reshape(xm.shape[0], -1), qmin, qmax).reshape(xm.shape)
                        x = np.ascontiguousarray(np.moveaxis(xm, 0, ch_axis))
                    n_split += 1
            if not np.any(x):
                n_zero += 1
            obs = make()
            obs(torch.from_numpy(x.copy()))
            s_lib, z_lib = obs.calculate_qparams()
            s_lib, z_lib = s_lib.numpy(), z_lib.numpy()
            qp = rq.choose_qparams(x, spec)
            xt = torch.from_numpy(x.copy())
            if ch_axis is None:
                # torch keeps per-tensor parameters as shape (1,), refquant as shape ()
                s_lib, z_lib = s_lib.reshape(()), z_lib.reshape(())
                fq = torch.fake_quantize_per_tensor_affine(xt, float(s_lib), int(z_lib), obs.quant_min,
                                                           obs.quant_max).numpy()
            else:
                fq = torch.fake_quantize_per_channel_affine(
                    xt, torch.from_numpy(s_lib.copy()), torch.from_numpy(z_lib.astype(np.int32)),
                    ch_axis, obs.quant_min, obs.quant_max).numpy()
            ref_fq = rq.fake_quant(x, qp)
            range_note = f"observer quant_min/max ({obs.quant_min}, {obs.quant_max}); refquant ({qmin}, {qmax})"
            if (obs.quant_min, obs.quant_max) != (qmin, qmax):
                chk.error_case(f"integer ranges differ: {range_note}", {"x": x}, spec)
                continue
            per = {"x": x}
            chk.case([("scale", qp.scale, s_lib, None), ("zero_point", qp.zero_point, z_lib, None),
                      ("fake_quant", ref_fq, fq, per)],
                     {"x": x, "library scale": s_lib, "library zero_point": z_lib,
                      "refquant scale": qp.scale, "refquant zero_point": qp.zero_point}, spec)
        chk.notes.append(f"{n_zero} all-zero inputs (library scale for them: eps floor)"
                         + (f"; {n_split} inputs whose [min, max] split the two zero-point rules"
                            if n_split else ""))


# ---------------------------------------------------------------------------------------
# non-finite
# ---------------------------------------------------------------------------------------
def check_nonfinite(rep, torch, rng):
    sec = "non-finite inputs (PyTorch kernel artifacts)"
    c_fpt = rep.check("torch fake_quantize_per_tensor_affine NaN/Inf vs dialect(stack_artifacts=True)", section=sec)
    c_fpc = rep.check("torch fake_quantize_per_channel_affine NaN/Inf vs dialect(stack_artifacts=True)", section=sec)
    c_qpt = rep.check("torch quantize_per_tensor .int_repr() NaN/Inf vs dialect(stack_artifacts=True)", section=sec)
    c_qpc = rep.check("torch quantize_per_channel .int_repr() NaN/Inf vs the per-channel fake-quant artifact "
                      "(not reproduced: NaN gives 0 for qint8)", informational=True, section=sec)
    raised = rep.check("torch NaN/Inf, default dialect raises NonFiniteError", informational=True, section=sec)
    specials = np.array([np.nan, np.inf, -np.inf, -np.nan], F32)
    for i in range(120):
        label, qmin, qmax, ov = RANGES[i % 2]  # qint8 / quint8
        shape = (int(rng.integers(1, 70)),) if i % 2 else _shape(rng)
        s = C.random_scale(rng)
        zp = int(_zp(rng, qmin, qmax))
        x = _x_for(rng, np.full(shape, s, F32), np.full(shape, zp), qmin, qmax)
        flat = x.reshape(-1)
        m = rng.random(flat.size) < 0.3
        m[int(rng.integers(flat.size))] = True
        flat[m] = specials[rng.integers(0, specials.size, int(m.sum()))]
        spec = given_spec(zp, stack_artifacts=True, op="fake_quantize_per_tensor", **ov)
        qp = rq.QParams(s, zp, spec)
        inputs = {"x": x, "scale": s, "zero_point": zp, "range": label}
        per = {"x": x}
        lib = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x.copy()), float(s), zp, qmin, qmax)
        c_fpt.case([("y", rq.fake_quant(x, qp), lib.numpy(), per)], inputs, spec)
        qd = torch.qint8 if ov["signed"] else torch.quint8
        qt = torch.quantize_per_tensor(torch.from_numpy(x.copy()), float(s), zp, qd)
        spec_q = given_spec(zp, stack_artifacts=True, op="quantize_per_tensor", **ov)
        qpq = rq.QParams(s, zp, spec_q)
        c_qpt.case([("int_repr", rq.quantize(x, qpq), qt.int_repr().numpy(), per)], inputs, spec_q)
        # per channel, axis 0
        c = shape[0]
        scale = np.array([C.random_scale(rng) for _ in range(c)], F32)
        zpc = _zp(rng, qmin, qmax, (c,))
        spec_c = given_spec(zpc, stack_artifacts=True, granularity="channel", axis=0, **ov)
        qpc = rq.QParams(scale, zpc, spec_c)
        inputs_c = {"x": x, "scale": scale, "zero_point": zpc, "range": label}
        libc = torch.fake_quantize_per_channel_affine(torch.from_numpy(x.copy()), torch.from_numpy(scale.copy()),
                                                      torch.from_numpy(zpc.astype(np.int32)), 0, qmin, qmax)
        c_fpc.case([("y", rq.fake_quant(x, qpc), libc.numpy(), per)], inputs_c, spec_c)
        qtc = torch.quantize_per_channel(torch.from_numpy(x.copy()), torch.from_numpy(scale.astype(np.float64)),
                                         torch.from_numpy(zpc), 0, qd)
        c_qpc.case([("int_repr", rq.quantize(x, qpc), qtc.int_repr().numpy(), per)], inputs_c, spec_c)
        try:
            rq.quantize(x, rq.QParams(s, zp, given_spec(zp, **ov)))
            raised.error_case("refquant's default dialect did not raise NonFiniteError", inputs)
        except rq.NonFiniteError:
            raised.cases += 1
            raised.exact += 1


def run() -> C.Report:
    rep = C.Report("torch")
    try:
        torch = _torch()
    except ImportError as e:
        return rep.skip_missing("torch", e)
    rng = np.random.default_rng(C.SEED + 1)
    check_fake_quant_per_tensor(rep, torch, rng, tensor_qparams=False)
    rep.checks[0].notes.insert(0, f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                                  f"quantized engine {torch.backends.quantized.engine}")
    check_fake_quant_per_tensor(rep, torch, rng, tensor_qparams=True)
    check_fake_quant_per_channel(rep, torch, rng)
    for dt in ("qint8", "quint8"):
        check_quantize_per_tensor(rep, torch, rng, dt)
    for dt in ("qint8", "quint8"):
        check_quantize_per_channel(rep, torch, rng, dt)
    check_decomposed(rep, torch, rng)
    check_observers(rep, torch, rng)
    check_nonfinite(rep, torch, rng)
    return rep.finish()


if __name__ == "__main__":
    C.script_main(run)
