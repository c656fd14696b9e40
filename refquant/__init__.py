"""refquant: the golden reference for integer quantization of transformers.

Public API v1 (docs/DESIGN.md):

    import refquant as rq
    spec = rq.dialect("onnx")                       # or rq.QuantSpec(...)
    qp = rq.choose_qparams(x, spec)
    q = rq.quantize(x, qp); y = rq.dequantize(q, qp); y = rq.fake_quant(x, qp)
    m = rq.load(path); qm = rq.quantize_model(m, "nvidia-ptq-percentile", calib=batches)
"""
from .dialects import DIALECTS, dialect, dialect_doc
from .errors import (ConfigError, DTypeError, MissingTensorError, NonFiniteError, OutOfRangeError, TrainingError,
                     RefquantError, ShapeError, WeightsFormatError)
from .quant import (QParams, choose_qparams, dequantize, fake_quant, qparams_from_amax,
                    qparams_from_minmax, quantize)
from .spec import QuantSpec
from .models import load
from .recipes import RECIPES, Recipe, SiteRule, recipe
from .quantized import QuantizedModel, quantize_model
from .checkpoint import load_quantized
from . import analysis, calib, kernels, onnx_ops   # documented as rq.calib.*, rq.kernels.* (cuda stays lazy)

__version__ = "0.1.0"

__all__ = ["load", "analysis", "calib", "kernels", "models", "onnx_ops", "TrainingError", "quantize_model", "QuantizedModel", "load_quantized", "recipe", "RECIPES", "Recipe", "SiteRule", "QuantSpec", "QParams", "dialect", "dialect_doc", "DIALECTS", "choose_qparams",
           "qparams_from_minmax", "qparams_from_amax", "quantize", "dequantize", "fake_quant",
           "RefquantError", "WeightsFormatError", "ConfigError", "ShapeError", "DTypeError",
           "NonFiniteError", "MissingTensorError", "OutOfRangeError", "__version__"]
