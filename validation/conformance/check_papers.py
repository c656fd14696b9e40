"""refquant's "q8bert" and "deepspeed" dialects vs the papers' own code, run in torch.

- Q8BERT: IntelLabs nlp-architect, nlp_architect/nn/torch/quantization.py (get_dynamic_scale,
  quantize, dequantize, FakeLinearQuantizationWithSTE). Installs with
  `pip install --no-deps nlp-architect` (its own code imports only torch here).
- ZeroQuant: DeepSpeed's compression quantizers, deepspeed/compression/utils.py (SymQuantizer,
  AsymQuantizer). That file was removed from newer releases: install
  `DS_BUILD_OPS=0 pip install --no-deps --no-build-isolation deepspeed==0.16.4`; the file is
  loaded by path (it imports only torch), without importing the deepspeed package.

Compared bit for bit: fake-quant outputs (and Q8BERT's integer values and scale), for
per-tensor, row-group (num_groups) and, for DeepSpeed, static min/max ranges.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import refquant as rq  # noqa: E402

F32 = np.float32
CASES = 400


def _tensor(rng):
    shape = C.ODD_SHAPES[int(rng.integers(len(C.ODD_SHAPES)))]
    x = C.data_for_qparams(rng, shape).astype(F32)
    if not np.any(x):                      # both stacks divide by zero on all-zero input
        x.reshape(-1)[0] = F32(1)
    return x


def _with_ties(rng, x, scale_of):
    """Replace some elements by exact ties / grid points of the scale the stack will pick."""
    s = scale_of(x)
    flat = x.reshape(-1)
    m = rng.random(flat.size) < 0.3
    k = rng.integers(-127, 127, int(m.sum())).astype(np.float64)
    flat[m] = ((k + 0.5) * float(s)).astype(F32)
    amax = np.max(np.abs(x))
    flat[np.argmax(np.abs(flat))] = amax   # keep the max where it was (the scale must not move)
    return x


def check_q8bert(rep, torch, q, rng):
    chk_fq = rep.check("q8bert FakeLinearQuantizationWithSTE (scale = 127 / max|x|)")
    chk_q = rep.check("q8bert quantize / dequantize (integer values, scale)")
    for i in range(CASES):
        bits = (8, 4, 8, 6)[i % 4]
        x = _tensor(rng)
        spec = rq.dialect("q8bert", bits=bits)
        x = _with_ties(rng, x, lambda v: np.max(np.abs(v)) / F32(2 ** (bits - 1) - 1))
        xt = torch.from_numpy(x.copy())
        scale = q.get_dynamic_scale(xt, bits)
        fq_lib = q.FakeLinearQuantizationWithSTE.apply(xt, scale, bits).numpy()
        q_lib = q.quantize(xt, scale, bits).numpy()
        dq_lib = q.dequantize(q.quantize(xt, scale, bits), scale).numpy()
        qp = rq.choose_qparams(x, spec)
        inputs = {"x": x, "bits": bits}
        chk_fq.case([("fake_quant", rq.fake_quant(x, qp), fq_lib, {"x": x})], inputs, spec)
        chk_q.case([("multiplier", qp.multiplier, np.asarray(scale.numpy(), F32), None),
                    ("q", rq.quantize(x, qp).astype(F32), q_lib + F32(0), {"x": x}),  # lib keeps -0.0
                    ("dequantize", rq.fake_quant(x, qp), dq_lib, {"x": x})], inputs, spec)


def _load_deepspeed_utils():
    spec = importlib.util.find_spec("deepspeed")
    if spec is None:
        raise ImportError("deepspeed is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "compression", "utils.py")
    if not os.path.exists(path):
        raise ImportError(f"{path} is missing (removed from newer deepspeed releases; "
                          "install deepspeed==0.16.4 with --no-deps)")
    mod_spec = importlib.util.spec_from_file_location("ds_compression_utils", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def check_deepspeed(rep, torch, ds, rng):
    chk_sym = rep.check("deepspeed SymQuantizer (dynamic, num_groups rows)")
    chk_static = rep.check("deepspeed SymQuantizer (static min/max)")
    chk_asym = rep.check("deepspeed AsymQuantizer (dynamic, num_groups rows)")
    for i in range(CASES):
        bits = (8, 4)[i % 2]
        x = _tensor(rng)
        divisors = [d for d in (1, 2, 3, 4, 8, 48) if x.size % d == 0]
        ng = int(rng.choice(divisors))
        g = x.reshape(ng, -1)
        if np.any(np.all(g == 0, axis=1)):   # an all-zero group: both stacks divide by zero
            g[np.all(g == 0, axis=1), 0] = F32(0.5)
        kind = dict(granularity="group", group_kind="rows", num_groups=ng) if ng > 1 else {}
        xt = torch.from_numpy(x.copy())
        spec = rq.dialect("deepspeed", bits=bits, **kind)
        lib = ds.SymQuantizer.apply(xt, bits, None, None, ng).numpy()
        chk_sym.case([("fake_quant", rq.fake_quant(x, rq.choose_qparams(x, spec)), lib, {"x": x})],
                     {"x": x, "bits": bits, "num_groups": ng}, spec)
        # static: a calibrated [min, max] (possibly narrower than the data: saturation)
        lo, hi = F32(-abs(rng.standard_normal()) * 2), F32(abs(rng.standard_normal()) * 2)
        lib_s = ds.SymQuantizer.apply(xt, bits, torch.tensor([lo]), torch.tensor([hi]), 1).numpy()
        spec_s = rq.dialect("deepspeed", bits=bits)
        qp_s = rq.qparams_from_minmax(np.array(lo, F32), np.array(hi, F32), spec_s)
        chk_static.case([("fake_quant", rq.fake_quant(x, qp_s), lib_s, {"x": x})],
                        {"x": x, "bits": bits, "min": lo, "max": hi}, spec_s)
        # asymmetric: ranges must not be degenerate in the stack (max == min divides by zero)
        gmin, gmax = g.min(axis=1), g.max(axis=1)
        if np.any(gmax == gmin):
            continue
        spec_a = rq.dialect("deepspeed", bits=bits, symmetric=False, **kind)
        lib_a = ds.AsymQuantizer.apply(xt, bits, None, None, ng).numpy()
        try:
            qp_a = rq.choose_qparams(x, spec_a)
        except rq.ConfigError as e:   # float zero point beyond int32: refused, say so
            chk_asym.error_case(f"refquant refused: {e}", {"x": x}, spec_a)
            continue
        chk_asym.case([("fake_quant", rq.fake_quant(x, qp_a), lib_a, {"x": x})],
                      {"x": x, "bits": bits, "num_groups": ng}, spec_a)


def run() -> C.Report:
    rep = C.Report("papers")
    warnings.simplefilter("ignore")
    try:
        import torch
    except ImportError as e:
        return rep.skip_missing("torch", e)
    C.set_threads()
    rng = np.random.default_rng(C.SEED + 4)
    try:
        from nlp_architect.nn.torch import quantization as q8
        check_q8bert(rep, torch, q8, rng)
    except ImportError as e:
        rep.skip_missing("nlp-architect", e, "pip install --no-deps nlp-architect", part="q8bert")
    try:
        ds = _load_deepspeed_utils()
        check_deepspeed(rep, torch, ds, rng)
    except ImportError as e:
        rep.skip_missing("deepspeed 0.16.4", e, "DS_BUILD_OPS=0 pip install --no-deps --no-build-isolation "
                         "deepspeed==0.16.4", part="deepspeed")
    if not rep.checks:   # both parts skipped: nothing was checked
        rep.skipped, rep.skipped_parts = "; ".join(rep.skipped_parts), []
    return rep.finish()


if __name__ == "__main__":
    C.script_main(run)
