"""QuantSpec: every choice on which quantization stacks disagree, as one frozen record.

Each field is one rule of the numeric contract (docs/DESIGN.md); the numbers in
brackets below are the contract's rule numbers. Nothing here computes: the
arithmetic lives in ``refquant.quant`` and reads these fields.

Conventions (rule 1): ``scale`` is the step size, ``x ~= scale * (q - zero_point)``.
Stacks that write the inverse (NVIDIA's and Q8BERT's ``S = qmax / amax``) are
reproduced with ``mapping="multiplier"``; the QParams then also carry that
multiplier, so that no bit is lost converting between the two.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from weights_io.errors import ConfigError

GRANULARITIES = ("tensor", "channel", "group", "token")
GROUP_KINDS = ("input", "rows")
ROUNDINGS = ("half_even", "half_away")
MAPPINGS = ("divide", "reciprocal", "multiplier")
DENOMINATORS = ("qmax", "half_range", "pow2")
ZERO_POINT_ADDS = ("after_round", "before_round", "fma_before_round", "float_offset")
ZERO_POINT_RULES = ("offset_then_round", "round_then_offset")
UNSIGNED_SYMMETRIC = ("offset", "nonnegative")
PARTIAL_GROUPS = ("refuse", "allow", "if_smaller")
NONFINITE = ("raise", "onnx_int32_cast", "torch_int64_cast", "nan_to_qmin", "nan_to_qmax", "propagate")
DEGENERATE_ZERO_POINTS = ("computed", "zero")
DEGENERATE_OUTPUTS = ("scale", "zero")
MULTIPLIER_FORMS = ("d_over_amax", "reciprocal_times_d")
FAKE_QUANT_DOMAINS = ("integer", "float")

FLOAT32_EPS = 1.1920928955078125e-07  # np.finfo(np.float32).eps == torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor, rule by rule.

    Range and grid
      bits        2..8. Integer values are held in int8 (signed) or uint8 (unsigned).
      signed      int range [-2^(b-1), 2^(b-1)-1]; unsigned [0, 2^b-1].
      narrow      [4] signed only: drop the most negative code, giving [-(2^(b-1)-1), 2^(b-1)-1].
      symmetric   zero_point fixed (0 for signed); scale from max|x|. Else affine: scale and
                  zero_point from [min, max].

    Granularity [7]
      granularity "tensor" | "channel" (one scale per index of ``axis``, default 0) |
                  "group" | "token" (one scale per row of the last dimension; always dynamic).
      group_kind  for "group" only; the two kinds are different things, named apart:
                  "input": ``group_size`` consecutive elements along ``axis`` (default -1, the
                           input/reduction dimension of a [out, in] weight): compressed-tensors,
                           GPTQ, ONNX blocked quantization.
                  "rows":  ZeroQuant/DeepSpeed: the row-major tensor is cut into ``num_groups``
                           equal contiguous pieces (``x.reshape(num_groups, -1)``), i.e. blocks of
                           out/num_groups output rows of a [out, in] weight. A GEMM weight takes
                           them only as whole rows (num_groups divides out): a recipe refuses
                           other sites (refquant.quant.row_block_rows, contract rule 7).
      partial_group  "input" groups when the axis length is not a multiple of group_size:
                  "refuse" (raise ShapeError) | "allow" (the last group is shorter: ONNX) |
                  "if_smaller" (allowed only when the whole axis is shorter than one group:
                  compressed-tensors).
      dynamic     scales computed from each tensor as it arrives (activations), not calibrated.

    Arithmetic
      rounding    [2] "half_even" (np.rint) | "half_away".
      mapping     [3] x -> q as "divide" rint(x / scale) | "reciprocal" rint(x * (1/scale)),
                  the reciprocal rounded to float32 first | "multiplier" rint(x * (d/amax)) and
                  dequantize q / (d/amax).
      multiplier_form  how d/amax is computed in float32: "d_over_amax" (one division:
                  ModelOpt's tensor / tensor) | "reciprocal_times_d" ((1/amax) * d: PyTorch's
                  ``int / tensor`` is ``tensor.reciprocal() * int``, which Q8BERT's
                  ``127 / threshold`` hits).
      denominator [4] d in scale = amax / d for symmetric: "qmax" (2^(b-1)-1: NVIDIA, Q8BERT) |
                  "half_range" ((qmax-qmin)/2: 127.5 for full-range int8, PyTorch and
                  compressed-tensors) | "pow2" (2^(b-1): DeepSpeed). Affine: "pow2" divides the
                  range by 2^b (DeepSpeed), the other two by qmax-qmin.
      unsigned_symmetric  symmetric and unsigned: "offset" (zero_point 2^(b-1), PyTorch quint8) |
                  "nonnegative" (zero_point 0, d = 2^b-1, inputs must be >= 0: NVIDIA).
      zero_point_add  [5] "after_round" rint(x/s) + zp (ONNX, PyTorch) | "before_round"
                  rint(x/s + zp) (compressed-tensors, torch.quantize_per_channel) |
                  "fma_before_round" rint(fma(x, 1/s, zp)): x * (1/s) + zp with ONE float32
                  rounding (torch.quantize_per_tensor on x86: FBGEMM's LEGACY AVX2 path) |
                  "float_offset" rint((x - (-zp)*s) / s),
                  dequantize q*s + (-zp)*s (DeepSpeed's AsymQuantizer).
      zero_point_rule  affine zero point: "offset_then_round" rint(clip(qmin - min/s)) (ONNX,
                  compressed-tensors) | "round_then_offset" clip(qmin - rint(min/s)) (PyTorch).
      include_zero  affine range extended to contain 0 (every stack but DeepSpeed's Asym).

    Degenerate input [6]
      amax_floor    amax := max(amax, amax_floor) first (PyTorch per-token helper: 1e-5).
      scale_floor   scale := max(scale, scale_floor) (PyTorch observers: float32 eps).
      degenerate_amax  a slice with amax <= this (or whose scale rounds to 0) gets zero_scale.
      zero_scale    the step size of a degenerate slice: 1.0 by default, so zeros map to the
                    zero point and dequantize exactly.
      degenerate_output  "scale" (a degenerate slice is quantized with zero_scale) | "zero"
                    (every value of it becomes 0: ModelOpt sets the multiplier to 0 and divides
                    by 1.0; mapping "multiplier" only).
      nonfinite     "raise" (NonFiniteError naming the tensor and the first index) |
                    "onnx_int32_cast" (ONNX's reference: rint(x/s) is cast to int32 before the
                    zero point is added (int32 arithmetic, wrapping) and before the clip, so NaN,
                    Inf and |x/s| >= 2^31 become INT32_MIN and then qmin) |
                    "torch_int64_cast" (PyTorch's CPU kernels: zp + nearbyint(x*inv) in float,
                    cast to int64 before the clamp: NaN, Inf, |.| >= 2^63 become qmin) |
                    "nan_to_qmin" / "nan_to_qmax" (Inf and huge values saturate, NaN becomes qmin:
                    torch.fake_quantize_per_tensor_affine; or qmax: torch.quantize_per_tensor) |
                    "propagate" (float-domain stacks: NaN stays NaN in fake_quant, Inf
                    saturates; quantize to integers still raises).
      degenerate_zero_point  affine, degenerate slice: "computed" (from the replaced scale) |
                    "zero" (compressed-tensors computes 0/0 = NaN, which its int8 cast makes 0).
      fake_quant_domain  "integer": fake_quant is dequantize(quantize(x)) (+0.0 for zero) |
                    "float": computed in float like ModelOpt, compressed-tensors, DeepSpeed and
                    Q8BERT (rint(-0.4) = -0.0 survives into the output).

    Provenance
      dialect     the preset this spec came from ("" for a hand-made spec).
      stack_artifacts  the dialect reproduces its stack's artifacts (documented per dialect).
      token_2d_per_tensor  compressed-tensors' artifact: its "token" strategy reduces over the
                  dims other than {0, 1}, so a 2-D input gets ONE scale (per tensor).
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow: bool = False
    granularity: str = "tensor"
    axis: int | None = None
    group_size: int | None = None
    num_groups: int | None = None
    group_kind: str = "input"
    partial_group: str = "refuse"
    dynamic: bool = False
    rounding: str = "half_even"
    mapping: str = "divide"
    denominator: str = "qmax"
    unsigned_symmetric: str = "offset"
    zero_point_add: str = "after_round"
    zero_point_rule: str = "offset_then_round"
    include_zero: bool = True
    amax_floor: float = 0.0
    scale_floor: float = 0.0
    degenerate_amax: float = 0.0
    zero_scale: float = 1.0
    nonfinite: str = "raise"
    fake_quant_domain: str = "integer"
    dialect: str = ""
    stack_artifacts: bool = False
    token_2d_per_tensor: bool = False
    degenerate_zero_point: str = "computed"
    degenerate_output: str = "scale"
    multiplier_form: str = "d_over_amax"

    def __post_init__(self):
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_choice("group_kind", self.group_kind, GROUP_KINDS)
        _check_choice("partial_group", self.partial_group, PARTIAL_GROUPS)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("mapping", self.mapping, MAPPINGS)
        _check_choice("denominator", self.denominator, DENOMINATORS)
        _check_choice("unsigned_symmetric", self.unsigned_symmetric, UNSIGNED_SYMMETRIC)
        _check_choice("zero_point_add", self.zero_point_add, ZERO_POINT_ADDS)
        _check_choice("zero_point_rule", self.zero_point_rule, ZERO_POINT_RULES)
        _check_choice("nonfinite", self.nonfinite, NONFINITE)
        _check_choice("fake_quant_domain", self.fake_quant_domain, FAKE_QUANT_DOMAINS)
        _check_choice("degenerate_zero_point", self.degenerate_zero_point, DEGENERATE_ZERO_POINTS)
        _check_choice("degenerate_output", self.degenerate_output, DEGENERATE_OUTPUTS)
        _check_choice("multiplier_form", self.multiplier_form, MULTIPLIER_FORMS)
        if self.degenerate_output == "zero" and self.mapping != "multiplier":
            raise ConfigError("QuantSpec: degenerate_output 'zero' is expressed as a zero multiplier; "
                              "it needs mapping 'multiplier'")
        if self.zero_point_add == "fma_before_round" and self.mapping == "divide":
            raise ConfigError("QuantSpec: zero_point_add 'fma_before_round' fuses a multiply; it needs "
                              "mapping 'reciprocal' or 'multiplier', not 'divide'")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 2 <= self.bits <= 8:
            raise ConfigError(f"QuantSpec.bits: expected an int in 2..8, got {self.bits!r}")
        if self.narrow and not self.signed:
            raise ConfigError("QuantSpec.narrow: narrow range is defined for signed types only")
        if self.granularity == "token" and not self.dynamic:
            raise ConfigError("QuantSpec: granularity 'token' is always dynamic; pass dynamic=True")
        if self.granularity == "group":
            if self.group_kind == "input":
                if not _positive_int(self.group_size):
                    raise ConfigError("QuantSpec: granularity 'group' (group_kind 'input') needs "
                                      f"group_size, a positive int; got {self.group_size!r}")
            elif not _positive_int(self.num_groups):
                raise ConfigError("QuantSpec: granularity 'group' (group_kind 'rows') needs "
                                  f"num_groups, a positive int; got {self.num_groups!r}")
        if self.mapping == "multiplier" and not self.symmetric:
            raise ConfigError("QuantSpec: mapping 'multiplier' (x * qmax/amax) is defined for "
                              "symmetric quantization only")
        if self.zero_point_add == "float_offset" and self.symmetric:
            raise ConfigError("QuantSpec: zero_point_add 'float_offset' is for affine specs")
        for name in ("amax_floor", "scale_floor", "degenerate_amax"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"QuantSpec.{name}: expected a finite float >= 0, got {value!r}")
        if not (math.isfinite(self.zero_scale) and self.zero_scale > 0):
            raise ConfigError(f"QuantSpec.zero_scale: expected a finite float > 0, got {self.zero_scale!r}")

    # -- the integer grid -------------------------------------------------------------------
    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def storage_dtype(self) -> str:
        """NumPy dtype name of quantized values (int4 values are held in int8 / uint8)."""
        return "int8" if self.signed else "uint8"

    def replace(self, **changes) -> "QuantSpec":
        """A copy with some fields changed (validated like a new spec)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"QuantSpec has no field {unknown[0]!r}; fields are "
                              + ", ".join(f.name for f in dataclasses.fields(self)))
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line listing the fields that differ from the defaults."""
        default = QuantSpec()
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if getattr(self, f.name) != getattr(default, f.name) or f.name in ("bits", "granularity")]
        return "QuantSpec(" + ", ".join(parts) + ")"


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"QuantSpec.{name}: expected one of {', '.join(map(repr, choices))}; got {value!r}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


__all__ = ["QuantSpec", "FLOAT32_EPS"]
