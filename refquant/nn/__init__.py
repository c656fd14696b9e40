"""Float ops of the transformer families, as forward functions that return (out, cache).

One op, one small pure function, the spec in its docstring (the onnx reference style);
each forward returns the cache its backward will need (the llm.c style; the backward
functions come with the training code). Everything is float32, as in the papers:
non-GEMM ops never get quantized here (numeric contract, rule 11).
"""
from .fused import split_heads
from .ops import (add_forward, attention_forward, embedding_forward, gelu_erf_forward, gelu_erf_reference,
                  gelu_tanh_forward, layer_norm_forward, linear_forward, residual_layer_norm_forward,
                  rms_norm_forward,
                  rope_forward, rope_tables, silu_forward, softmax_forward)

__all__ = ["linear_forward", "embedding_forward", "layer_norm_forward", "residual_layer_norm_forward", "rms_norm_forward",
           "gelu_erf_forward", "gelu_erf_reference", "gelu_tanh_forward", "silu_forward", "softmax_forward",
           "attention_forward", "split_heads", "rope_tables", "rope_forward", "add_forward"]
