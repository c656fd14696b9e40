"""Dialects: QuantSpec presets that reproduce other stacks' quantization bit for bit.

``rq.dialect(name, **overrides)`` returns the preset as a ``QuantSpec``; keyword overrides
replace fields (``rq.dialect("torch", granularity="channel", axis=0)``). Each preset's
docstring below lists its rules and the source files they come from (facts collected in
docs/stacks.md; where a stack's code contradicts its docs, the code wins).

Artifacts. Where a stack's behaviour is an accident of its implementation (a float->int
cast before the clip, a 2-D "token" strategy collapsing to per-tensor), the preset by
default follows refquant's contract (NaN/Inf raise ``NonFiniteError``); pass
``stack_artifacts=True`` to reproduce the accident instead.

Degenerate (all-zero) slices. Q8BERT and DeepSpeed divide by zero there (their outputs
become NaN); their presets use refquant's scale 1.0 instead, which gives exact zeros, and
``stack_artifacts`` does not change that (a NaN scale cannot be represented in QParams).
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError
from .spec import FLOAT32_EPS, QuantSpec

ONNX_ZERO_RANGE_SCALE = float(np.float32(1) / np.float32(255))  # DynamicQuantizeLinear, all-zero input
ONNX_DEFAULT_AXIS = 1  # QuantizeLinear / DequantizeLinear attribute 'axis' (onnx/defs/quantization/defs.cc)


def _onnx() -> dict:
    """ONNX reference implementation (onnx/onnx, onnx/reference/ops).

    choose_qparams follows DynamicQuantizeLinear (op_dynamic_quantize_linear.py; spec
    onnx/defs/quantization/defs.cc): uint8, affine, range extended to contain 0,
    scale = (max - min) / 255 in float32, zero point rint(clip(0 - min / scale, 0, 255)) (clip
    before round). An all-zero input gets scale 1/255 = 0.003921569 (the code replaces a zero
    range by 1.0; its comment says scale 1.0 and the ONNX function body divides to 0: the code
    wins). quantize follows QuantizeLinear (op_quantize_linear.py): rint(x / scale) (divide,
    ties to even), then + zero_point as an integer, then clip to the full type range (no narrow
    range in ONNX); dequantize is (x - zero_point) * scale (op_dequantize_linear.py). Blocked
    quantization allows a partial last block (_quant_utils.reshape_input).

    Per-axis (granularity="channel") quantization defaults to axis 1, as QuantizeLinear's
    ``axis`` attribute does (refquant's own default is 0); pass axis=... to choose. rq.dialect()
    writes the 1 into the spec, so a spec switched to "channel" later with .replace() keeps
    axis None, refquant's 0: pass the axis there. Blocked
    quantization (granularity="group") keeps refquant's default axis -1, the input dimension,
    which is ONNX's axis 1 for a 2-D [out, in] weight; for other shapes pass the axis.

    Integer matrix products (MatMulInteger, QLinearMatMul) are refquant.onnx_ops.

    Overrides: signed=True gives int8 with the zero point on [-128, 127]; symmetric=True has no
    ONNX op and uses onnxruntime's quantization-tool convention amax / 127.5 (half range).

    stack_artifacts=True: QuantizeLinear casts rint(x / scale) to int32 *before* adding the
    zero point and clipping, so NaN, +-Inf and |x / scale| >= 2^31 become INT32_MIN and clip to
    qmin (e.g. [1e10, -1e10, inf, nan, 300] -> [-128, -128, -128, -128, 127] for int8).
    """
    return dict(bits=8, signed=False, symmetric=False, narrow=False, mapping="divide",
                denominator="half_range", zero_point_add="after_round",
                zero_point_rule="offset_then_round", zero_scale=ONNX_ZERO_RANGE_SCALE,
                partial_group="allow", fake_quant_domain="integer")


def _torch() -> dict:
    """PyTorch torch.ao.quantization (pytorch/pytorch).

    Default: qint8, per-tensor symmetric (default_weight_fake_quant), full range [-128, 127].
    - qparams (torch/ao/quantization/observer.py _calculate_qparams; utils.py determine_qparams):
      symmetric scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2), i.e. absmax / 127.5 for
      qint8, then scale = max(scale, eps) with eps = float32 eps 1.1920929e-07; zero point 0
      (quint8 symmetric: 128). Affine: scale = max((max_pos - min_neg) / (qmax - qmin), eps),
      zero_point = qmin - round(min_neg / scale) then clamp (round first, then offset).
      All-zero input: scale eps, zero point 0 / 128 / qmin (the docstring's "1.0 and 0" is
      contradicted by the code).
    - quantize (aten/src/ATen/native/quantized/AffineQuantizerBase.cpp, FakeQuantPerTensorAffine.cpp,
      kernels/QuantizedOpKernels.cpp fake_quantize_tensor_cachemask_kernel):
      inv_scale = 1.0f / scale (float32), q = nearbyint(x * inv_scale) + zero_point, clamp.
      Ties to even (nearbyint in the default FE mode). dequantize (q - zp) * scale.
    - reduce_range=True is bits=7 here ([-64, 63] qint8, [0, 127] quint8).
    - The [-127, 127] presets (weight_observer_range_neg_127_to_127) are narrow=True,
      denominator "half_range" (-> amax / 127) and scale_floor=2**-12.
    - quint8 affine activations (default_fake_quant): signed=False, symmetric=False.

    PyTorch is not consistent with itself where the zero point is added (checked against
    torch 2.13 on x86 by validation/conformance/check_torch.py); pick the operation with
    ``op=``:
    - "fake_quantize_per_tensor" / "fake_quantize_per_channel" (and the observers, and the
      quantized_decomposed ops): nearbyint(x * inv_scale) + zero_point, the default;
    - "quantize_per_tensor": FBGEMM's LEGACY AVX2 path (QuantUtilsAvx2.cc QuantizeAvx2:
      _mm256_fmadd_ps(x, inv_scale, zero_point), then round): the zero point is added before
      rounding inside ONE fused multiply-add (zero_point_add="fma_before_round");
    - "quantize_per_channel": nearbyint(zero_point + x * inv_scale), not fused
      (zero_point_add="before_round").
    They differ only for a nonzero zero point (quint8, affine).

    stack_artifacts=True reproduces each operation's handling of NaN / Inf:
    fake_quantize_per_tensor: +Inf and huge values saturate, NaN and -Inf -> qmin;
    fake_quantize_per_channel: the cast to int64 before the clamp sends NaN and +-Inf to qmin;
    quantize_per_tensor: NaN and +Inf -> qmax (FBGEMM's _mm256_min_ps returns its second
    operand for NaN). quantize_per_channel's NaN result (0 for qint8) is not reproduced.
    """
    return dict(bits=8, signed=True, symmetric=True, narrow=False, mapping="reciprocal",
                denominator="half_range", unsigned_symmetric="offset", zero_point_add="after_round",
                zero_point_rule="round_then_offset", scale_floor=FLOAT32_EPS, zero_scale=FLOAT32_EPS,
                partial_group="refuse", fake_quant_domain="integer")


def _modelopt() -> dict:
    """NVIDIA pytorch-quantization and Model Optimizer (symmetric, amax based).

    Sources: TensorRT tools/pytorch-quantization/pytorch_quantization/tensor_quant.py
    (_tensor_quant) and Model-Optimizer modelopt/torch/quantization/tensor_quant.py, config.py,
    nn/modules/tensor_quantizer.py, kernels .../tensor_quant_gpu.cu.
    - multiplier = max_bound / amax in float32 (max_bound = 2^(b-1) - 1, or 2^b - 1 unsigned);
      q = clamp(round(x * multiplier)), round half to even; fake-quant output q / multiplier
      (a division, which can differ by 1 ulp from q * (amax / 127)). Reported scale amax / 127.
    - narrow_range: False here, as ModelOpt's QuantizerAttributeConfig and pytorch-quantization's
      QuantDescriptor default; _tensor_quant and the CUDA kernel default to True (pass
      narrow=True, as NVIDIA's paper recommends).
    - amax <= 2^-24 (Python path; the CUDA kernel tests < 2^-24): the multiplier is set to 0,
      so every value of that slice becomes 0 (-0.0 for negative x), and the output is divided by
      1.0 (degenerate_output="zero"; the reported scale is 1.0, the export's step size).
    - unsigned: zero point 0, inputs must be >= 0 (TypeError in the stack, ConfigError here).
    - Computed in float (fake_quant_domain "float"): -0.0 survives.

    stack_artifacts=True: NaN propagates through fake_quant (Inf saturates).
    """
    return dict(bits=8, signed=True, symmetric=True, narrow=False, mapping="multiplier",
                denominator="qmax", unsigned_symmetric="nonnegative",
                degenerate_amax=2.0 ** -24, zero_scale=1.0, degenerate_output="zero",
                fake_quant_domain="float")


def _compressed_tensors() -> dict:
    """compressed-tensors (vllm-project/compressed-tensors) and llm-compressor's observers.

    Sources: src/compressed_tensors/quantization/utils/helpers.py (calculate_range,
    calculate_qparams), lifecycle/forward.py (_quantize / _dequantize), quant_args.py.
    - Range: always the signed full range [-2^(b-1), 2^(b-1) - 1], also for asymmetric.
    - Symmetric scale = absmax / ((qmax - qmin) / 2): /127.5 for int8, /7.5 for int4.
      Affine: scale = (max - min) / (qmax - qmin), zero_point = round(clamp(qmin - min / scale)).
      A zero scale is then replaced by the dtype's eps (float32: 1.1920929e-07).
    - quantize: x / scale + zero_point, clamp, round (divide; zero point added *before*
      rounding, which differs from round-then-add at ties when the zero point is odd);
      dequantize (q - zero_point) * scale, computed in float (-0.0 survives).
    - Groups run along the last (input) dimension and must divide it (0.20.0 also refuses a
      dimension shorter than one group: forward_helpers.py, helpers.py).
    - All-zero asymmetric input: the stack computes the zero point before the eps fix (0/0 =
      NaN); refquant computes it with the fixed scale (zero point -128).

    stack_artifacts=True: NaN propagates in fake_quant; the "token" strategy on a 2-D input
    reduces over dims other than {0, 1}, i.e. over nothing, and falls back to ONE per-tensor
    scale (compute_dynamic_scales_and_zp); an all-zero asymmetric slice gets zero point 0 (the
    NaN zero point cast to int8 on x86).
    """
    return dict(bits=8, signed=True, symmetric=True, narrow=False, mapping="divide",
                denominator="half_range", zero_point_add="before_round",
                zero_point_rule="offset_then_round", zero_scale=FLOAT32_EPS,
                partial_group="refuse", fake_quant_domain="float", axis=None)


def _q8bert() -> dict:
    """Q8BERT (IntelLabs/nlp-architect nlp_architect/nn/torch/quantization.py).

    - scale (a multiplier in their terms) = (2^(b-1) - 1) / threshold = 127 / max|x|, which
      PyTorch evaluates as threshold.reciprocal() * 127 (``int / tensor`` is __rtruediv__):
      multiplier_form "reciprocal_times_d", 1 ulp away from 127 / max|x| for some inputs;
      q = round(x * scale).clamp(-127, 127) (narrow; torch.round ties to even);
      dequantize q / scale. Per tensor (weights: max|W| of the whole tensor).
    - Computed in float (fake_quant_domain "float").
    - Activations take the threshold from an EMA of max|x| (refquant.calib); the dynamic
      baseline takes it from each input.
    - threshold 0 divides by zero in the stack (NaN output); refquant uses scale 1.0.
    """
    return dict(bits=8, signed=True, symmetric=True, narrow=True, mapping="multiplier",
                multiplier_form="reciprocal_times_d", denominator="qmax", zero_scale=1.0,
                fake_quant_domain="float")


def _deepspeed() -> dict:
    """DeepSpeed compression, ZeroQuant (microsoft/DeepSpeed deepspeed/compression/utils.py).

    SymQuantizer: x.reshape(num_groups, -1); max = amax(|x|) per group; scale = 2 * max / 2^b
    (= max / 2^(b-1): the "pow2" denominator, so +max maps to 2^(b-1) and is clipped one step:
    1.0 -> 0.9921875 at int8, 0.875 at int4); q = round(x / scale).clamp(-2^(b-1), 2^(b-1) - 1);
    output q * scale (float domain). ZeroQuant weights: granularity="group", group_kind="rows",
    num_groups=48 (BERT) or 64 (GPT-2); activations: granularity="token", dynamic=True.

    symmetric=False gives AsymQuantizer: scale = (max - min) / 2^b (range not extended to 0),
    zero_point_f = round(min / scale) * scale, q = round((x - zero_point_f) / scale).clamp(0,
    2^b - 1), output q * scale + zero_point_f (unsigned grid, float zero point).

    The straight-through backward is identity everywhere (no clip mask). An all-zero group
    divides by zero in the stack (NaN); refquant uses scale 1.0.
    """
    return dict(bits=8, signed=True, symmetric=True, narrow=False, mapping="divide",
                denominator="pow2", zero_scale=1.0, fake_quant_domain="float")


_ASYM_DEEPSPEED = dict(signed=False, include_zero=False, zero_point_add="float_offset")

_PRESETS = {
    "onnx": (_onnx, "onnx_int32_cast"),
    "torch": (_torch, None),  # chosen per op in dialect()
    "modelopt": (_modelopt, "propagate"),
    "compressed_tensors": (_compressed_tensors, "propagate"),
    "q8bert": (_q8bert, "propagate"),
    "deepspeed": (_deepspeed, "propagate"),
}
_ALIASES = {"compressed-tensors": "compressed_tensors", "pytorch": "torch",
            "pytorch-quantization": "modelopt", "nvidia": "modelopt", "zeroquant": "deepspeed",
            "nlp-architect": "q8bert"}

DIALECTS = tuple(_PRESETS)


TORCH_OPS = ("fake_quantize_per_tensor", "fake_quantize_per_channel", "quantize_per_tensor",
             "quantize_per_channel")


def dialect(name: str, stack_artifacts: bool = False, op: str | None = None, **overrides) -> QuantSpec:
    """The QuantSpec preset reproducing stack ``name`` (see each preset's docstring).

    name            one of "onnx", "torch", "modelopt", "compressed_tensors", "q8bert", "deepspeed".
    stack_artifacts reproduce the stack's accidental behaviour (non-finite inputs, ...).
    op              torch only: which PyTorch operation to reproduce (TORCH_OPS); they differ
                    in where the zero point is added and in what NaN becomes.
    overrides       any QuantSpec field, e.g. granularity="channel", axis=0, bits=4.
    """
    key = _ALIASES.get(name, name)
    if key not in _PRESETS:
        raise ConfigError(f"unknown dialect {name!r}; known: {', '.join(DIALECTS)}")
    make, artifact_mode = _PRESETS[key]
    fields = make()
    if key == "deepspeed" and overrides.get("symmetric") is False:
        fields.update(_ASYM_DEEPSPEED)
    if op is not None and key != "torch":
        raise ConfigError(f"dialect {key!r} has no op= variants (only 'torch' does)")
    if key == "torch":
        if op is None:
            op = ("fake_quantize_per_channel" if overrides.get("granularity") == "channel"
                  else "fake_quantize_per_tensor")
        if op not in TORCH_OPS:
            raise ConfigError(f"dialect 'torch': unknown op {op!r}; known: {', '.join(TORCH_OPS)}")
        fields["zero_point_add"] = {"quantize_per_tensor": "fma_before_round",
                                    "quantize_per_channel": "before_round"}.get(op, "after_round")
        artifact_mode = {"fake_quantize_per_tensor": "nan_to_qmin", "fake_quantize_per_channel":
                         "torch_int64_cast", "quantize_per_tensor": "nan_to_qmax"}.get(op)
        if stack_artifacts and artifact_mode is None and "nonfinite" not in overrides:
            raise ConfigError("dialect 'torch', op 'quantize_per_channel': its NaN/Inf behaviour "
                              "(NaN -> 0 for qint8 in torch 2.13) is not reproduced")
    fields.update(overrides)
    if key == "onnx" and fields.get("granularity") == "channel" and "axis" not in overrides:
        fields["axis"] = ONNX_DEFAULT_AXIS
    fields.setdefault("dialect", key)
    if stack_artifacts:
        fields.setdefault("nonfinite", artifact_mode)
        if key == "compressed_tensors":
            fields.setdefault("token_2d_per_tensor", True)
            fields.setdefault("degenerate_zero_point", "zero")
    fields["stack_artifacts"] = stack_artifacts
    return QuantSpec(**fields)


def dialect_doc(name: str) -> str:
    """The rules and sources of a dialect, as written in its preset's docstring."""
    key = _ALIASES.get(name, name)
    if key not in _PRESETS:
        raise ConfigError(f"unknown dialect {name!r}; known: {', '.join(DIALECTS)}")
    import inspect
    return inspect.getdoc(_PRESETS[key][0])


__all__ = ["dialect", "dialect_doc", "DIALECTS", "TORCH_OPS"]
