"""weights_io: bytes <-> arrays for refquant (the top layer; it never imports refquant).

- :mod:`weights_io.safetensors_io`: lazy, validated safetensors reading; atomic
  writing; checkpoint directories (sharded or not); refusal of pickles.
- :mod:`weights_io.int4`: packed int4 (and ONNX int2) layouts of ONNX, PyTorch (decomposed)
  and compressed-tensors.
- :mod:`weights_io.hf_config`: HF ``config.json`` -> typed configs.
- :mod:`weights_io.names`: HF tensor names <-> refquant names; float32 weights.
- :mod:`weights_io.errors`: the one exception hierarchy.
"""

from weights_io.errors import (
    ConfigError,
    DTypeError,
    MissingTensorError,
    NonFiniteError,
    OutOfRangeError,
    RefquantError,
    ShapeError,
    WeightsFormatError,
)
from weights_io.hf_config import BertConfig, GPT2Config, LlamaConfig, load_config
from weights_io.int4 import (
    compressed_tensors_packed_shape,
    integer_values,
    pack_compressed_tensors,
    pack_int2_onnx,
    pack_int4_onnx,
    pack_int4_torch_decomposed,
    unpack_compressed_tensors,
    unpack_int2_onnx,
    unpack_int4_onnx,
    unpack_int4_torch_decomposed,
)
from weights_io.names import (
    RefquantWeights,
    hf_to_refquant,
    load_weights,
    refquant_to_hf,
    required_refquant_names,
)
from weights_io.gguf_import import gguf_to_hf_llama
from weights_io.safetensors_io import (
    Checkpoint,
    SafetensorsFile,
    atomic_write,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    open_checkpoint,
    refuse_pickle,
    write_safetensors,
)

__all__ = [
    "gguf_to_hf_llama",
    "RefquantError", "WeightsFormatError", "ConfigError", "ShapeError", "DTypeError",
    "NonFiniteError", "MissingTensorError", "OutOfRangeError",
    "SafetensorsFile", "Checkpoint", "open_checkpoint", "write_safetensors", "atomic_write", "refuse_pickle",
    "bf16_bits_to_float32", "float32_to_bf16_bits",
    "load_config", "BertConfig", "GPT2Config", "LlamaConfig",
    "pack_int4_onnx", "unpack_int4_onnx", "pack_int2_onnx", "unpack_int2_onnx", "integer_values",
    "pack_int4_torch_decomposed", "unpack_int4_torch_decomposed",
    "pack_compressed_tensors", "unpack_compressed_tensors", "compressed_tensors_packed_shape",
    "hf_to_refquant", "refquant_to_hf", "required_refquant_names", "load_weights", "RefquantWeights",
]
