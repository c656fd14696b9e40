"""Conformance: refquant's "compressed_tensors" dialect vs the installed compressed-tensors, bit
for bit.

Library functions used (compressed_tensors/quantization/...):
  utils/helpers.py      calculate_qparams, compute_dynamic_scales_and_zp (its own min/max
                        reduction for tensor / group / token)
  lifecycle/forward.py  quantize, dequantize, fake_quantize with a QuantizationArgs
For int8 and int4, symmetric and asymmetric, strategies tensor, channel (one scale per output
row of a 2-D weight = refquant granularity "channel", axis 0), group (group_size 4, 8, 16, 32
along the last dim = refquant granularity "group", axis -1) and token (3-D activations; 2-D
under stack_artifacts=True), compared: scale, zero point, quantized integers, dequantize of
those integers, fake-quant floats (incl. -0.0). A second family feeds random scales / zero
points (odd zero points, ties) straight into quantize / fake_quantize.

Run: /work/venv/bin/python validation/conformance/check_compressed_tensors.py
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
CASES = 250            # per (bits, symmetric, strategy) configuration
GIVEN_CASES = 400
GROUP_SIZES = (4, 8, 16, 32)
SHAPES_2D = [(1, 4), (3, 8), (7, 16), (5, 32), (13, 64), (2, 96), (11, 128), (1, 256), (4, 48), (9, 160)]
INFO = "documented divergences and refused shapes (informational)"


def _lib():
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize, fake_quantize, quantize
    from compressed_tensors.quantization.utils.helpers import (calculate_qparams,
                                                               compute_dynamic_scales_and_zp)
    return dict(torch=torch, version=compressed_tensors.__version__, Args=QuantizationArgs,
                quantize=quantize, dequantize=dequantize, fake_quantize=fake_quantize,
                calculate_qparams=calculate_qparams, dynamic=compute_dynamic_scales_and_zp)


def _args(L, bits, sym, strategy, g=None):
    kw = dict(num_bits=bits, type="int", symmetric=sym, strategy=strategy)
    if strategy == "group":
        kw["group_size"] = g
    if strategy == "token":
        kw["dynamic"] = True
    return L["Args"](**kw)


def _spec(bits, sym, strategy, g=None, **extra):
    if strategy == "tensor":
        gran = dict(granularity="tensor")
    elif strategy == "channel":
        gran = dict(granularity="channel", axis=0)
    elif strategy == "group":
        gran = dict(granularity="group", group_size=g, axis=-1)
    else:
        gran = dict(granularity="token", dynamic=True)
    return rq.dialect("compressed_tensors", bits=bits, symmetric=sym, **gran, **extra)


def _lib_qparams(L, x_t, args, strategy):
    """The library's qparams: its own reduction where it has one (tensor / group / token), and
    amin / amax over the input dim for channel (what llm-compressor's min-max observers pass)."""
    torch = L["torch"]
    if strategy == "channel":
        mn = torch.amin(x_t, dim=-1, keepdim=True)
        mx = torch.amax(x_t, dim=-1, keepdim=True)
        return L["calculate_qparams"](mn, mx, args)
    return L["dynamic"](x_t, args, module=None)


def _x(rng, shape, strategy, split=None):
    """split = (qmin, qmax, g): now and then make every slice's [min, max] one where the two
    affine zero-point rules round differently (C.splitting_rows)."""
    if split is not None and rng.random() < 0.25:
        qmin, qmax, g = split
        n = {"tensor": int(np.prod(shape)), "channel": shape[-1], "group": g, "token": shape[-1]}[strategy]
        x = C.splitting_rows(rng, np.zeros((int(np.prod(shape)) // n, n), F32), qmin, qmax)
        return x.reshape(shape)
    x = C.data_for_qparams(rng, shape)
    if strategy in ("channel", "group") and len(shape) == 2:
        x = C.zero_slices(rng, x, 0)           # all-zero rows
    if rng.random() < 0.15:                     # exact ties of the grid for pow2 ranges
        e = F32(2.0 ** int(rng.integers(-8, 2)))
        k = rng.integers(-130, 130, x.size).astype(np.float64)
        x = ((k + 0.5) * e).astype(F32).reshape(shape)
    return x


def check_config(rep, L, rng, bits, sym, strategy, info_zero):
    torch = L["torch"]
    kind = "symmetric" if sym else "asymmetric"
    gs = GROUP_SIZES if strategy == "group" else (None,)
    label = {"tensor": "tensor", "channel": "channel (rows)", "group": "group (4/8/16/32)",
             "token": "token (3-D)"}[strategy]
    chk = rep.check(f"compressed_tensors int{bits} {kind} {label}: qparams, quantize, dequantize, fake_quantize")
    n_zero_asym = 0
    for i in range(CASES):
        g = gs[i % len(gs)]
        if strategy == "token":
            shape = (int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.choice([1, 5, 16, 33])))
        else:
            cand = [s for s in SHAPES_2D if g is None or s[1] % g == 0]
            shape = cand[int(rng.integers(len(cand)))]
            if strategy == "group" and rng.random() < 0.2:
                shape = (int(rng.integers(1, 4)),) + shape     # 3-D (e.g. MoE experts)
        spec = _spec(bits, sym, strategy, g)
        split = None if sym else (spec.qmin, spec.qmax, g)
        x = _x(rng, shape, strategy, split) if i else np.zeros(shape, F32)
        args = _args(L, bits, sym, strategy, g)
        xt = torch.from_numpy(x.copy())
        s_lib, z_lib = _lib_qparams(L, xt, args, strategy)
        qp = rq.choose_qparams(x, spec)
        # all-zero slice, asymmetric: the library computes zp = qmin - 0/0 = NaN -> int8 (0 on
        # x86) before replacing the zero scale; refquant uses the fixed scale (zp = qmin).
        mn = _slice_min_max(x, spec)
        degenerate = ((mn[0] == 0) & (mn[1] == 0)) if not sym else np.zeros(qp.scale.shape, bool)
        s_np = s_lib.numpy().reshape(qp.scale.shape) if s_lib.numel() == qp.scale.size else s_lib.numpy()
        z_np = z_lib.numpy().reshape(qp.scale.shape) if z_lib.numel() == qp.scale.size else z_lib.numpy()
        if np.any(degenerate):
            n_zero_asym += 1
            art = spec.replace(degenerate_zero_point="zero", stack_artifacts=True)
            qa = rq.choose_qparams(x, art)
            info_zero.case([("scale", qa.scale, s_np, None), ("zero_point", qa.zero_point, z_np, None)],
                           {"x": x, "library zero_point": z_np, "refquant zero_point": qa.zero_point}, art,
                           extra="all-zero slice, asymmetric: library zp = round(clamp(qmin - 0/0)) cast "
                                 "to int8 (helpers.py calculate_qparams: zp computed before the eps fix)")
            # continue with the library's own parameters on both sides for the quantize ops
            qp = rq.QParams(s_np, z_np.astype(np.int32), spec)
        q_lib = L["quantize"](xt, s_lib, z_lib, args).numpy()
        q_ref = rq.quantize(x, qp)
        dq_lib = L["dequantize"](torch.from_numpy(q_ref.astype(np.int8)), s_lib, z_lib, args).numpy()
        fq_lib = L["fake_quantize"](xt, s_lib, z_lib, args).numpy()
        per = {"x": x, "scale": expand(qp.scale, x.shape, spec), "zero_point": expand(qp.zero_point, x.shape, spec)}
        chk.case([("scale", qp.scale, s_np, None),
                  ("zero_point", qp.zero_point, z_np, None),
                  ("quantize", q_ref, q_lib, per),
                  ("dequantize", rq.dequantize(q_ref, qp), dq_lib, {"q": q_ref, **per}),
                  ("fake_quantize", rq.fake_quant(x, qp), fq_lib, per)],
                 {"x": x, "library scale": s_lib.numpy(), "library zero_point": z_lib.numpy(),
                  "refquant scale": qp.scale, "refquant zero_point": qp.zero_point, "group_size": g}, spec)
    if not sym:
        chk.notes.append(f"{n_zero_asym} cases with an all-zero slice: compared with the library's "
                         "own scale / zero point (see the informational check)")


def _slice_min_max(x, spec):
    from refquant.quant import _reduce
    return (_reduce(x, spec, np.min, "x"), _reduce(x, spec, np.max, "x"))


def check_given(rep, L, rng):
    """Random scales and zero points (odd ones: the zero point is added before rounding) fed
    straight to quantize / dequantize / fake_quantize."""
    torch = L["torch"]
    chk = rep.check("compressed_tensors quantize/dequantize/fake_quantize, given scale/zero point (ties)")
    ties = C.TieStats()
    for i in range(GIVEN_CASES):
        bits = (8, 4)[i % 2]
        strategy = ("tensor", "channel", "group")[i % 3]
        g = GROUP_SIZES[int(rng.integers(len(GROUP_SIZES)))] if strategy == "group" else None
        cand = [s for s in SHAPES_2D if g is None or s[1] % g == 0]
        shape = cand[int(rng.integers(len(cand)))]
        sym = rng.random() < 0.3
        spec = _spec(bits, sym, strategy, g)
        args = _args(L, bits, sym, strategy, g)
        pshape = rq.quant.param_shape(shape, spec)
        n = int(np.prod(pshape))
        scale = np.array([C.random_scale(rng) for _ in range(n)], F32).reshape(pshape)
        zp = (np.zeros(pshape, np.int64) if sym else
              rng.integers(spec.qmin, spec.qmax + 1, pshape))
        s_full = expand(scale, shape, spec)
        z_full = expand(zp, shape, spec)
        x = C.values_for(rng, s_full, z_full, spec.qmin, spec.qmax)
        ties.add(x, s_full)
        # the library's shapes: tensor (1,), channel (rows, 1), group (rows, groups)
        lib_shape = {"tensor": (1,), "channel": (shape[0], 1), "group": pshape}[strategy]
        s_t = torch.from_numpy(scale.reshape(lib_shape).copy())
        z_t = torch.from_numpy(zp.reshape(lib_shape).astype(np.int8))
        xt = torch.from_numpy(x.copy())
        qp = rq.QParams(scale, zp, spec)
        q_ref = rq.quantize(x, qp)
        q_lib = L["quantize"](xt, s_t, z_t, args).numpy()
        dq_lib = L["dequantize"](torch.from_numpy(q_ref.astype(np.int8)), s_t, z_t, args).numpy()
        fq_lib = L["fake_quantize"](xt, s_t, z_t, args).numpy()
        per = {"x": x, "scale": s_full, "zero_point": z_full}
        chk.case([("quantize", q_ref, q_lib, per),
                  ("dequantize", rq.dequantize(q_ref, qp), dq_lib, {"q": q_ref, **per}),
                  ("fake_quantize", rq.fake_quant(x, qp), fq_lib, per)],
                 {"x": x, "scale": scale, "zero_point": zp, "bits": bits, "strategy": strategy,
                  "group_size": g}, spec)
    chk.notes.append(ties.note())


def check_token_2d(rep, L, rng):
    """A 2-D input under strategy token: the library reduces over dims other than {0, 1}, i.e.
    none, and falls back to one per-tensor scale; refquant reproduces it only with
    stack_artifacts=True (token_2d_per_tensor)."""
    torch = L["torch"]
    chk = rep.check("compressed_tensors token on a 2-D input vs dialect(stack_artifacts=True)")
    for i in range(120):
        bits, sym = (8, 4)[i % 2], bool(i % 3)
        shape = SHAPES_2D[int(rng.integers(len(SHAPES_2D)))]
        x = _x(rng, shape, "token")
        args = _args(L, bits, sym, "token")
        spec = _spec(bits, sym, "token", stack_artifacts=True)
        xt = torch.from_numpy(x.copy())
        s_lib, z_lib = L["dynamic"](xt, args, module=None)
        qp = rq.choose_qparams(x, spec)
        if not sym and not np.any(x):
            continue   # all-zero asymmetric: see the informational check
        # the library keeps ONE value (shape (1,)); refquant's token shape repeats it per row
        s_np = np.broadcast_to(s_lib.numpy().reshape(()), qp.scale.shape)
        z_np = np.broadcast_to(z_lib.numpy().reshape(()), qp.scale.shape)
        fq_lib = L["fake_quantize"](xt, s_lib, z_lib, args).numpy()
        q_lib = L["quantize"](xt, s_lib, z_lib, args).numpy()
        chk.case([("scale", qp.scale, s_np, None), ("zero_point", qp.zero_point, z_np, None),
                  ("quantize", rq.quantize(x, qp), q_lib, {"x": x}),
                  ("fake_quantize", rq.fake_quant(x, qp), fq_lib, {"x": x})],
                 {"x": x, "library scale": s_lib.numpy(), "library zero_point": z_lib.numpy()}, spec)


def check_partial_group(rep, L, rng):
    """cols < group_size: docs/stacks.md says compressed-tensors accepts one short group; the
    installed library (0.20.0) refuses it, and so does the dialect."""
    torch = L["torch"]
    chk = rep.check("compressed_tensors group with cols < group_size: both refuse")
    for i in range(20):
        g = int(rng.choice([8, 16, 32, 128]))
        cols = int(rng.integers(1, g))
        shape = (int(rng.integers(1, 6)), cols)
        x = _x(rng, shape, "group")
        args = _args(L, 8, True, "group", g)
        spec = _spec(8, True, "group", g)
        try:
            qp = rq.choose_qparams(x, spec)
            rq.quantize(x, qp)
            ref_ok = "accepts"
        except rq.ShapeError:
            ref_ok = "refuses"
        errs = []
        try:
            L["dynamic"](torch.from_numpy(x.copy()), args, module=None)
            errs.append("compute_dynamic_scales_and_zp accepts")
        except Exception as e:  # noqa: BLE001
            errs.append(f"compute_dynamic_scales_and_zp raises {type(e).__name__}: {e}")
        try:
            L["quantize"](torch.from_numpy(x.copy()), torch.ones(shape[0], 1), torch.zeros(shape[0], 1, dtype=torch.int8), args)
            errs.append("quantize accepts")
        except Exception as e:  # noqa: BLE001
            errs.append(f"quantize raises {type(e).__name__}: {e}")
        lib_ok = "accepts" if all(e.endswith("accepts") for e in errs) else "refuses"
        if lib_ok == ref_ok:
            chk.cases += 1
            chk.exact += 1
        else:
            chk.error_case(f"shape {shape}, group_size {g}: refquant {ref_ok}, library {lib_ok} "
                           f"({'; '.join(errs)})", {"x": x}, spec)


def run() -> C.Report:
    rep = C.Report("compressed_tensors")
    try:
        L = _lib()
    except ImportError as e:
        return rep.skip_missing("compressed-tensors (or torch)", e)
    rng = np.random.default_rng(C.SEED + 2)
    info_zero = rep.check("compressed_tensors all-zero slice, asymmetric: scale / zero point vs "
                          "dialect(stack_artifacts=True)")
    first = True
    for bits in (8, 4):
        for sym in (True, False):
            for strategy in ("tensor", "channel", "group", "token"):
                check_config(rep, L, rng, bits, sym, strategy, info_zero)
                if first:
                    rep.checks[-1].notes.insert(0, f"compressed-tensors {L['version']}, torch "
                                                   f"{L['torch'].__version__} (CPU path)")
                    first = False
    check_given(rep, L, rng)
    check_token_2d(rep, L, rng)
    check_partial_group(rep, L, rng)
    # informational checks last in the listing
    rep.checks.remove(info_zero)
    rep.checks.append(info_zero)
    return rep.finish()


if __name__ == "__main__":
    C.script_main(run)
