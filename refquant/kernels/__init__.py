"""Integer inference kernels: int8 / int4 GEMMs with their float32 epilogue, activation
quantization, fused LayerNorm -> quantize.

``refquant.kernels.reference`` defines each op in NumPy (the specification, docstrings
included); ``refquant.kernels.cpu`` computes the same bytes with Numba on the CPU (AMX tiles or
AVX-512 VNNI micro-kernels where the CPU has them, portable int32 loops elsewhere) and
``refquant.kernels.cuda`` with numba.cuda on an NVIDIA GPU (or Numba's CUDA simulator). All
three export the same names with the same signatures; this module is the one dispatch point:

    rq.kernels.linear_i8(a_q, s_a, w_q, s_w, bias, backend="numpy")   # | "numba" | "cuda"

``backend_module(name)`` returns the module itself (cpu and cuda also accept their prepacked weights:
``cpu.prepack`` / ``cuda.prepack`` and the w4 variants). The cuda module is imported on first
use (importing numba.cuda takes a while and needs numba-cuda: pip install 'refquant[cuda]').
"""
from __future__ import annotations

import importlib

from weights_io.errors import ConfigError
from . import cpu, reference

BACKENDS = ("numpy", "numba", "cuda")
_MODULES = {"numpy": "reference", "numba": "cpu", "cuda": "cuda"}

__all__ = ["reference", "cpu", "BACKENDS", "backend_module", "gemm_i8", "linear_i8", "linear_i8_int32_bias",
           "linear_w4a8_rows", "linear_w4a8_groups", "quantize_rows", "quantize_activation",
           "quantize_dynamic", "quantize_linear_i8", "layer_norm_quantize_per_token"]


def backend_module(name: str):
    """The kernel module of backend ``name``: "numpy" (reference), "numba" (cpu), "cuda"."""
    if name not in _MODULES:
        raise ConfigError(f"unknown kernel backend {name!r}; known: {', '.join(BACKENDS)}")
    module = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    if name == "cuda" and not module.available():
        raise ConfigError(f"backend 'cuda': {module.unavailable_reason()}")
    return module


def gemm_i8(a, w, backend="numpy"):
    """int32 [M, N] = a @ w.T, exact (reference.gemm_i8)."""
    return backend_module(backend).gemm_i8(a, w)


def linear_i8(a, s_a, w, s_w, bias=None, activation=None, backend="numpy"):
    """float32 y = float32(acc) * (s_a[m] * s_w[n]) (+ bias[n]) (-> activation) (reference.linear_i8)."""
    return backend_module(backend).linear_i8(a, s_a, w, s_w, bias, activation)


def linear_i8_int32_bias(a, s_a, w, s_w, q_bias, backend="numpy"):
    """float32(acc + q_bias) * (s_a[m] * s_w[n]) (reference.linear_i8_int32_bias)."""
    return backend_module(backend).linear_i8_int32_bias(a, s_a, w, s_w, q_bias)


def linear_w4a8_rows(a, s_a, w_packed, K, s_w_rows, bias=None, activation=None, backend="numpy"):
    """W4A8, one weight step per output row (reference.linear_w4a8_rows)."""
    return backend_module(backend).linear_w4a8_rows(a, s_a, w_packed, K, s_w_rows, bias, activation)


def linear_w4a8_groups(a, s_a, w_packed, K, s_w_groups, group_size, bias=None, activation=None,
                       backend="numpy"):
    """W4A8 with input-dimension groups (reference.linear_w4a8_groups)."""
    return backend_module(backend).linear_w4a8_groups(a, s_a, w_packed, K, s_w_groups, group_size,
                                                            bias, activation)


def quantize_rows(x, param, mode, qmin, qmax, rounding="half_even", backend="numpy"):
    """int8 clip(round(x / param or x * param)) per row (reference.quantize_rows)."""
    return backend_module(backend).quantize_rows(x, param, mode, qmin, qmax, rounding)


def quantize_activation(x, qp, backend="numpy"):
    """(q, s_a) for given QParams (reference.quantize_activation)."""
    return backend_module(backend).quantize_activation(x, qp)


def quantize_dynamic(x, spec, backend="numpy"):
    """(q, s_a), dynamic per token or per tensor (reference.quantize_dynamic)."""
    return backend_module(backend).quantize_dynamic(x, spec)


def quantize_linear_i8(x, quant, w, s_w, bias=None, activation=None, backend="numpy"):
    """quantize (dynamic spec or QParams) then linear_i8 (reference.quantize_linear_i8)."""
    return backend_module(backend).quantize_linear_i8(x, quant, w, s_w, bias, activation)


def layer_norm_quantize_per_token(x, gamma, beta, eps, spec, backend="numpy"):
    """(y, q, s_a): LayerNorm then dynamic quantization (reference.layer_norm_quantize_per_token)."""
    return backend_module(backend).layer_norm_quantize_per_token(x, gamma, beta, eps, spec)
