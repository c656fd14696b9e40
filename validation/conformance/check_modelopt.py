"""refquant's "modelopt" dialect vs NVIDIA Model Optimizer's own tensor_quant (CPU path).

Library: nvidia-modelopt, modelopt/torch/quantization/tensor_quant.py `_tensor_quant(inputs,
amax, num_bits, unsigned, narrow_range)`: multiplier = max_bound / amax, clamp(round(x *
multiplier)), output / multiplier, amax <= 2^-24 -> 0. Installs without its heavy
dependencies: `pip install --no-deps nvidia-modelopt requests urllib3 certifi omegaconf pulp`.

Compared bit for bit: fake-quant outputs for per-tensor and per-channel amax (axis 0), 8 and
4 bits, signed narrow / full range and unsigned, with ties of x * (max_bound / amax), amax
itself, saturation, zeros, -0.0 and tiny / zero amax.
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import refquant as rq  # noqa: E402

F32 = np.float32
CASES = 400


def _lib():
    warnings.simplefilter("ignore")
    import torch
    from modelopt.torch.quantization import tensor_quant
    C.set_threads()
    return torch, tensor_quant


def _amax(rng, n):
    r = rng.random()
    if r < 0.05:
        return np.zeros(n, F32)
    a = np.array([C.random_scale(rng) * F32(127) for _ in range(n)], F32)
    special = rng.random(n)
    a[special < 0.05] = F32(2.0 ** -24)              # exactly the threshold (<=: output 0)
    a[(special >= 0.05) & (special < 0.08)] = F32(2.0 ** -23)
    a[(special >= 0.08) & (special < 0.12)] = F32(0)
    return a


def _inputs(rng, shape, amax_full, bound, unsigned):
    mult = np.where(amax_full > 0, F32(bound) / amax_full, F32(1)).astype(F32)
    k = np.floor(rng.uniform(-bound - 3, bound + 3, shape))
    with np.errstate(all="ignore"):
        ties = ((k + 0.5) / mult.astype(np.float64)).astype(F32)          # x * m ~ k + 0.5
        grid = (k / mult.astype(np.float64)).astype(F32)
        rand = (rng.standard_normal(shape) * amax_full * 0.6).astype(F32)
        far = (rng.standard_normal(shape) * amax_full * 50).astype(F32)
    kind = rng.integers(0, 8, shape)
    x = np.select([kind == 0, kind == 1, kind == 2, kind == 3, kind == 4, kind == 5, kind == 6],
                  [ties, np.nextafter(ties, F32(np.inf)), grid, rand, far, amax_full, -amax_full],
                  default=np.where(rng.random(shape) < 0.5, F32(0), F32(-0.0))).astype(F32)
    x[~np.isfinite(x)] = 0
    return np.abs(x) if unsigned else x


def check_fake_quant(rep, torch, tq, rng, per_channel: bool):
    label = "per-channel amax (axis 0)" if per_channel else "per-tensor amax"
    chk = rep.check(f"modelopt _tensor_quant {label} (8/4 bits, narrow/full, unsigned)")
    ties = C.TieStats()
    for i in range(CASES):
        bits = (8, 4)[i % 2]
        unsigned = i % 5 == 0
        narrow = bool(rng.integers(2)) and not unsigned
        shape = C.ODD_SHAPES[int(rng.integers(len(C.ODD_SHAPES)))]
        if per_channel and len(shape) < 2:
            shape = (shape[0], 3)
        amax = _amax(rng, shape[0] if per_channel else 1)
        amax_t = amax.reshape((shape[0],) + (1,) * (len(shape) - 1)) if per_channel else amax.reshape(())
        amax_full = np.broadcast_to(amax_t, shape).astype(F32)
        bound = 2 ** (bits - 1 + int(unsigned)) - 1
        x = _inputs(rng, shape, amax_full, bound, unsigned)
        ties.add(x, np.where(amax_full > 0, amax_full / F32(bound), F32(1)))
        lib = tq._tensor_quant(torch.from_numpy(x.copy()), torch.from_numpy(np.array(amax_t, F32)),
                               bits, unsigned, narrow).numpy()
        spec = rq.dialect("modelopt", bits=bits, signed=not unsigned, narrow=narrow,
                          granularity="channel" if per_channel else "tensor", axis=0 if per_channel else None)
        qp = rq.qparams_from_amax(amax if per_channel else amax.reshape(()), spec)
        chk.case([("fake_quant", rq.fake_quant(x, qp), lib, {"x": x, "amax": amax_full})],
                 {"x": x, "amax": amax, "bits": bits, "unsigned": unsigned, "narrow_range": narrow}, spec)
    chk.notes.append(ties.note())


def check_nonfinite(rep, torch, tq, rng):
    chk = rep.check("modelopt _tensor_quant NaN/Inf vs dialect(stack_artifacts=True)")
    for i in range(60):
        shape = (int(rng.integers(1, 40)),)
        amax = F32(C.random_scale(rng) * F32(127))
        x = _inputs(rng, shape, np.full(shape, amax, F32), 127, False)
        m = rng.random(shape) < 0.3
        x[m] = np.array([np.nan, np.inf, -np.inf], F32)[rng.integers(0, 3, int(m.sum()))]
        lib = tq._tensor_quant(torch.from_numpy(x.copy()), torch.tensor(amax), 8, False, False).numpy()
        spec = rq.dialect("modelopt", stack_artifacts=True)
        qp = rq.qparams_from_amax(amax, spec)
        chk.case([("fake_quant", rq.fake_quant(x, qp), lib, {"x": x})], {"x": x, "amax": amax}, spec)


def run() -> C.Report:
    rep = C.Report("modelopt")
    try:
        torch, tq = _lib()
    except ImportError as e:
        return rep.skip_missing("nvidia-modelopt", e, "pip install --no-deps nvidia-modelopt "
                                "requests urllib3 certifi omegaconf pulp")
    rng = np.random.default_rng(C.SEED + 3)
    check_fake_quant(rep, torch, tq, rng, per_channel=False)
    import modelopt
    rep.checks[0].notes.insert(0, f"nvidia-modelopt {modelopt.__version__}, torch {torch.__version__}")
    check_fake_quant(rep, torch, tq, rng, per_channel=True)
    check_nonfinite(rep, torch, tq, rng)
    return rep.finish()


if __name__ == "__main__":
    C.script_main(run)
