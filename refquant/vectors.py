"""python -m refquant.vectors OUTDIR: test vectors for quantization stacks in any language.

Writes, deterministically (the same bytes on every run and machine), safetensors files of
inputs and refquant's expected outputs plus ``manifest.json`` describing each case:

quantize/   per dialect x granularity x bits: x (float32 with ties at .5 of the step, values
            past both ends of the range, signed zeros, an all-zero row, ordinary values), the
            qparams refquant chooses (scale, zero_point[, multiplier]), q = quantize(x),
            dequantized = dequantize(q), fake_quant(x). The spec's every field is in the manifest.
quantize_given/  the same with GIVEN qparams (scale 0.125, a power of two, so every tie at
            k + 0.5 steps is exact and the dialect's rounding rule alone decides it; values
            past both ends saturate; signed zeros).
gemm/       int8 GEMMs and their epilogues (numeric contract rules 8-9): a, w, s_a, s_w, bias,
            q_bias -> acc (int32), y = linear_i8, y_gelu (GELU epilogue), y_int32_bias
            (Q8BERT's int32 bias), at shapes with M = 1, K off the tile sizes, values at -128/127.
int4/       the int4 packings: values -> refquant pack_w4, ONNX, PyTorch decomposed,
            compressed-tensors (the layouts differ in nibble order and sign handling).
calib/      calibrators on fixed histograms (hist, edges): amax by entropy (ModelOpt's KL search),
            percentile (99.9, 99.99) and MSE, and max of the fixed input.

A stack passes a case when its outputs equal the expected tensors byte for byte (floats
compared as bit patterns). Errors: one line on stderr, exit code 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

import weights_io
from weights_io.errors import ConfigError, RefquantError

from . import __version__
from ._cli import OneLineErrorParser
from .calib.histogram import compute_amax_entropy, compute_amax_mse, compute_amax_percentile
from .dialects import DIALECTS, dialect
from .kernels import reference as ref
from .quant import choose_qparams, dequantize, fake_quant, quantize

F32 = np.float32
FORMAT = "refquant-vectors-1"
GRANULARITIES = {"tensor": {}, "channel": {"axis": 0}, "token": {"dynamic": True},
                 "group": {"group_kind": "input", "group_size": 4}}


def _x(seed: int) -> np.ndarray:
    """[6, 16] float32: row 0 ties at k + 0.5 of a power-of-two step, row 1 past both ends,
    row 2 all zero (with -0.0), rows 3-5 ordinary values of different magnitudes."""
    rng = np.random.default_rng(seed)
    x = np.empty((6, 16), F32)
    x[0] = (np.arange(-8, 8) + 0.5) * F32(0.25)
    x[0, 0] = 2.0  # the row's max: step 2/127 etc.; the ties stay exact binary fractions
    x[1] = np.where(np.arange(16) % 2 == 0, 1.0, -1.0) * np.linspace(0.1, 40.0, 16, dtype=F32)
    x[2] = 0.0
    x[2, 3] = -0.0
    x[3] = rng.standard_normal(16).astype(F32)
    x[4] = (rng.standard_normal(16) * 1e-3).astype(F32)
    x[5] = rng.uniform(-300, 300, 16).astype(F32)
    return x


def spec_fields(spec) -> dict:
    return {k: (v if not isinstance(v, float) or np.isfinite(v) else str(v))
            for k, v in dataclasses.asdict(spec).items()}


def _dialect_cases(kind: str, make_x, make_qparams, given: bool, describe):
    """One case per dialect x granularity x {int8, int4} the dialect defines: x = make_x(spec, bits,
    granularity), qp = make_qparams(x, spec), then quantize, dequantize and fake_quant. The
    qparams are inputs of the case when ``given``, outputs otherwise."""
    for name in sorted(DIALECTS):
        for gran, extra in GRANULARITIES.items():
            for bits in (8, 4):
                try:
                    spec = dialect(name, bits=bits, granularity=gran, **extra)
                    x = make_x(spec, bits, gran)
                    if spec.symmetric and not spec.signed and spec.unsigned_symmetric == "nonnegative":
                        x = np.abs(x)
                    qp = make_qparams(x, spec)
                    q = quantize(x, qp)
                except RefquantError:
                    continue  # a combination the dialect does not define
                tensors = {"x": x, "scale": np.asarray(qp.scale, F32), "zero_point": np.asarray(qp.zero_point, np.int32),
                           "q": q, "dequantized": dequantize(q, qp), "fake_quant": fake_quant(x, qp)}
                if qp.multiplier is not None:
                    tensors["multiplier"] = np.asarray(qp.multiplier, F32)
                inputs = sorted(set(tensors) - {"q", "dequantized", "fake_quant"}) if given else ["x"]
                yield (f"{kind}/{name}_{gran}_int{bits}", tensors,
                       {"kind": kind, "dialect": name, "spec": spec_fields(spec), "inputs": inputs,
                        "outputs": sorted(set(tensors) - set(inputs)),
                        "description": f"{name} {gran} int{bits}" + describe(qp)})


def quantize_cases():
    return _dialect_cases("quantize", lambda spec, bits, gran: _x(bits * 7 + len(gran)), choose_qparams, False,
                          lambda qp: ": qparams from x (the spec's own rule), then quantize, dequantize, fake_quant")


GIVEN_SCALE = F32(0.125)  # a power of two: x / scale, x * (1 / scale) and x * 8 are all exact


def _given_x(spec) -> np.ndarray:
    """[4, 16] float32 for a given step of 0.125: row 0 exact ties (k + 0.5 steps, k = -8..7,
    shifted into the range), row 1 past both ends (+-(qmax + 3) steps), row 2 zeros and -0.0,
    row 3 ordinary values."""
    s = float(GIVEN_SCALE)
    x = np.empty((4, 16), F32)
    lo = spec.qmin if spec.signed else 0
    k = np.arange(16) + (lo if not spec.signed else -8)
    x[0] = (k + 0.5) * s
    big = (spec.qmax - spec.qmin + 3) * s
    x[1] = np.where(np.arange(16) % 2 == 0, big, -big).astype(F32)
    x[2] = 0.0
    x[2, 1::2] = -0.0
    x[3] = np.linspace(-(spec.qmax + 1) * s, (spec.qmax + 1) * s, 16, dtype=F32)
    return x


def _given_qparams(x, spec):
    from .quant import QParams, _symmetric_zero_point, param_shape
    shape = param_shape(x.shape, spec)
    zp = _symmetric_zero_point(spec) if spec.symmetric else (3 if spec.signed else spec.qmin + 3)
    return QParams(np.full(shape, GIVEN_SCALE, F32), np.full(shape, zp, np.int32), spec)


def given_cases():
    return _dialect_cases("quantize_given", lambda spec, bits, gran: _given_x(spec), _given_qparams, True,
                          lambda qp: f" with given qparams (scale 0.125, zero point {int(qp.zero_point.reshape(-1)[0])}): "
                                     "exact ties at .5 of a step (the rounding rule decides), values past both "
                                     "ends (saturation), signed zeros")


def gemm_cases():
    for M, K, N in ((1, 1, 1), (1, 67, 5), (5, 64, 48), (17, 130, 33)):
        rng = np.random.default_rng(M * 1000 + K * 10 + N)
        a = rng.integers(-128, 128, (M, K), dtype=np.int8)
        w = rng.integers(-128, 128, (N, K), dtype=np.int8)
        a[0, :min(K, 3)] = -128
        w[0, :min(K, 3)] = -128  # -128 * -128 products
        if M > 2:
            a[1] = 0
        s_a = (rng.uniform(1, 2, M) * 2.0 ** rng.integers(-12, -4, M)).astype(F32)
        s_w = (rng.uniform(1, 2, N) * 2.0 ** rng.integers(-12, -4, N)).astype(F32)
        bias = rng.standard_normal(N).astype(F32)
        q_bias = rng.integers(-2 ** 20, 2 ** 20, N, dtype=np.int32)
        t = {"a": a, "w": w, "s_a": s_a, "s_w": s_w, "bias": bias, "q_bias": q_bias,
             "acc": ref.gemm_i8(a, w), "y": ref.linear_i8(a, s_a, w, s_w, bias),
             "y_gelu": ref.linear_i8(a, s_a, w, s_w, bias, "gelu_erf"),
             "y_int32_bias": ref.linear_i8_int32_bias(a, s_a, w, s_w, q_bias)}
        yield (f"gemm/i8_{M}x{K}x{N}", t,
               {"kind": "gemm", "inputs": ["a", "w", "s_a", "s_w", "bias", "q_bias"],
                "outputs": ["acc", "y", "y_gelu", "y_int32_bias"],
                "description": "acc = exact int32 a @ w.T; y = float32(acc) * (s_a[m] * s_w[n]) + bias[n] "
                               "(no FMA); y_gelu = gelu_erf(y) (erf with scipy's float32 bits); "
                               "y_int32_bias = float32(acc + q_bias[n]) * (s_a[m] * s_w[n])"})


def int4_cases():
    rng = np.random.default_rng(4)
    values = rng.integers(-8, 8, (5, 9), dtype=np.int8)
    values[0, :2] = (-8, 7)
    t = {"values": values, "refquant_pack_w4": ref.pack_w4(values),
         "onnx": weights_io.pack_int4_onnx(values.reshape(-1), signed=True),
         "torch_decomposed": weights_io.pack_int4_torch_decomposed((values[:, :8] + 8).astype(np.uint8)),
         "compressed_tensors": weights_io.pack_compressed_tensors(values[:, :8])}
    yield ("int4/packings", t, {"kind": "int4", "inputs": ["values"], "outputs": sorted(set(t) - {"values"}),
                                "description": "refquant_pack_w4: per row, byte j = w[2j] & 0xF | w[2j+1] << 4 "
                                               "(odd K padded); onnx: flat, low nibble first; torch_decomposed: "
                                               "values + 8 (uint4) of the first 8 columns, high nibble first; "
                                               "compressed_tensors: the first 8 columns in int32 words, offset "
                                               "binary, element 0 in bits 0-3"})


def calib_cases():
    rng = np.random.default_rng(7)
    data = np.abs(rng.laplace(0, 1, 200_000)).astype(F32)
    data[:3] = (25.0, 31.0, 40.0)  # outliers
    hist, edges = np.histogram(data, bins=2048, range=(0, float(data.max())))
    edges = edges.astype(F32)
    t = {"hist": hist.astype(np.int64), "edges": edges,
         "amax_entropy": np.asarray([compute_amax_entropy(hist, edges)], np.float64),
         "amax_percentile_99.9": np.asarray([compute_amax_percentile(hist, edges, 99.9)], np.float64),
         "amax_percentile_99.99": np.asarray([compute_amax_percentile(hist, edges, 99.99)], np.float64),
         "amax_mse": np.asarray([compute_amax_mse(hist, edges)], np.float64)}
    yield ("calib/laplace_2048", t, {"kind": "calib", "inputs": ["hist", "edges"],
                                     "outputs": sorted(set(t) - {"hist", "edges"}),
                                     "description": "ModelOpt's histogram calibrators (int8, start bin 128) "
                                                    "on a fixed 2048-bin histogram of |Laplace| with outliers"})


def write_suite(outdir: str) -> dict:
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{outdir}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ConfigError(f"{outdir}: directory is not writable")
    cases = []
    for gen in (quantize_cases, given_cases, gemm_cases, int4_cases, calib_cases):
        for name, tensors, info in gen():
            path = out / f"{name}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            weights_io.write_safetensors(path, tensors, metadata={"format": FORMAT, "case": name})
            cases.append({"name": name, "file": f"{name}.safetensors", **info,
                          "tensors": {k: {"dtype": str(np.asarray(v).dtype), "shape": list(np.asarray(v).shape)}
                                      for k, v in sorted(tensors.items())}})
    manifest = {"format": FORMAT, "refquant_version": __version__, "cases": cases,
                "compare": "byte for byte: floats as bit patterns, integers exactly"}
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    weights_io.atomic_write(out / "manifest.json", lambda f: f.write(text.encode("utf-8")))
    return manifest


def main(argv=None) -> int:
    p = OneLineErrorParser(prog="python -m refquant.vectors", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="directory to write the suite into (created if missing)")
    args = p.parse_args(argv)
    try:
        m = write_suite(args.outdir)
    except RefquantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.outdir}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    kinds = {}
    for c in m["cases"]:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    print(f"{len(m['cases'])} cases ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}) "
          f"written to {args.outdir} (manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
