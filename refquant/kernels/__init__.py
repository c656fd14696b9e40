"""Integer inference kernels: int8 / int4 GEMMs with their float32 epilogue, activation
quantization, fused LayerNorm -> quantize.

``refquant.kernels.reference`` defines each op in NumPy (the specification, docstrings
included); ``refquant.kernels.cpu`` computes the same bytes with Numba (AMX tiles or AVX-512
VNNI micro-kernels where the CPU has them, portable int32 loops elsewhere). Both export the
same names with the same signatures (cpu's take an extra ``path=`` and accept prepacked
weights).
"""
from . import cpu, reference

__all__ = ["reference", "cpu"]
