"""Packed int4 (and other sub-byte) storage layouts of three stacks, bit for bit.

Unpacked values are held one per element in ordinary integer arrays: signed
int4 in int8 ([-8, 7]), unsigned int4 in uint8 ([0, 15]). The stacks disagree
on where the first element goes, so each layout has its own pair of functions:

| layout | container | element order | value stored |
|---|---|---|---|
| ONNX (``onnx/onnx.in.proto``, INT4/UINT4) | uint8, whole tensor flattened | first element in the LOW nibble | two's-complement nibble (int4) or the value (uint4) |
| ONNX (INT2/UINT2, ``onnx.numpy_helper._pack_2bitx4``) | uint8, whole tensor flattened | four per byte, first element in the LOWEST 2 bits | two's-complement pair of bits (int2) or the value (uint2) |
| PyTorch decomposed (``torch/ao/quantization/fx/_decomposed.py``, ``pack_int4_from_int8``) | uint8, along the last dim | first element in the HIGH nibble | the value, which must already be in [0, 15] (no offset) |
| compressed-tensors pack-quantized (``compressors/pack_quantized/helpers.py``, ``pack_to_int32``) | int32 words, along the last dim | element i at bits b*i.. of a little-endian bit stream (LSB first) | offset binary ``q + 2^(b-1)`` |

Every function takes NumPy integer arrays, or the ml_dtypes int4 / uint4 / int2 / uint2
arrays that ``onnx.numpy_helper.to_array`` returns (converted to int8 / uint8 by
:func:`integer_values`, the one place that knows those dtypes; ml_dtypes is never imported).
Every function refuses a float array (DTypeError) and a value its layout
cannot hold (OutOfRangeError, naming the value and its index); unpacking
checks the packed array's shape against the original one (ShapeError).
Round trips are exact for every shape, the empty one included.
"""

from __future__ import annotations

import math

import numpy as np

from weights_io.errors import ConfigError, DTypeError, OutOfRangeError, ShapeError

__all__ = [
    "integer_values",
    "pack_int4_onnx",
    "unpack_int4_onnx",
    "pack_int2_onnx",
    "unpack_int2_onnx",
    "pack_int4_torch_decomposed",
    "unpack_int4_torch_decomposed",
    "pack_compressed_tensors",
    "unpack_compressed_tensors",
    "compressed_tensors_packed_shape",
]


# ml_dtypes' sub-byte integer dtypes (kind "V", one value per byte) -> the NumPy dtype holding them
_SUBBYTE_INTEGERS = {"int2": np.int8, "int4": np.int8, "uint2": np.uint8, "uint4": np.uint8}


def integer_values(values, name: str) -> np.ndarray:
    """``values`` as a NumPy integer array: NumPy integers pass unchanged; ml_dtypes int4 / int2
    arrays (what ``onnx.numpy_helper.to_array`` returns for INT4 / INT2 tensors) become int8 and
    uint4 / uint2 become uint8, value for value. Anything else (float, float8, bool) raises
    DTypeError naming ``name``: codes and zero points are integers (numeric contract rule 5)."""
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        return array
    wide = _SUBBYTE_INTEGERS.get(array.dtype.name) if array.dtype.kind == "V" else None
    if wide is not None:
        return array.astype(wide)
    raise DTypeError(f"{name}: expected integers (a NumPy integer dtype, or ml_dtypes int4/uint4/int2/uint2), "
                     f"got dtype {array.dtype}; float and float8 values are not integer codes or zero points "
                     "(numeric contract rule 5)")


def _integer_array(values, function: str) -> np.ndarray:
    return integer_values(values, function)


def _check_range(array: np.ndarray, low: int, high: int, function: str, what: str) -> None:
    """Raise OutOfRangeError naming the first value outside [low, high] and its index."""
    wide = array.astype(np.int64)
    outside = (wide < low) | (wide > high)
    if outside.any():
        index = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(outside)[0]), array.shape))
        raise OutOfRangeError(
            f"{function}: value {int(wide[index])} at index {index} is outside the {what} range [{low}, {high}]"
        )


def _require_uint8(packed, function: str) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise DTypeError(f"{function}: packed bytes must be uint8, got dtype {packed.dtype}")
    return packed


def _as_shape(shape_or_count) -> tuple[int, ...]:
    if isinstance(shape_or_count, (int, np.integer)):
        return (int(shape_or_count),)
    return tuple(int(d) for d in shape_or_count)


# --------------------------------------------------------------------------
# ONNX


def _pack_onnx(values, bits: int, signed: bool | None, function: str) -> np.ndarray:
    """ONNX's sub-byte packing: 8 // bits values per byte, flattened row-major, first element
    in the least significant bits; the unused high bits of the last byte are 0."""
    array = _integer_array(values, function)
    if signed is None:
        signed = array.dtype.kind == "i"
    half = 1 << (bits - 1)
    low, high = (-half, half - 1) if signed else (0, 2 * half - 1)
    _check_range(array, low, high, function, f"{'' if signed else 'u'}int{bits}")
    per_byte = 8 // bits
    fields = (array.reshape(-1).astype(np.int64) & ((1 << bits) - 1)).astype(np.uint8)  # two's complement
    fields = np.append(fields, np.zeros(-fields.size % per_byte, np.uint8)).reshape(-1, per_byte)
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(fields << shifts, axis=1).astype(np.uint8)


def _unpack_onnx(packed, n, bits: int, signed: bool, function: str) -> np.ndarray:
    packed = _require_uint8(packed, function)
    shape = _as_shape(n)
    count = math.prod(shape)
    per_byte = 8 // bits
    if packed.size != -(-count // per_byte):
        raise ShapeError(
            f"{function}: {count} int{bits} values need {-(-count // per_byte)} bytes, got {packed.size}"
        )
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    fields = ((packed.reshape(-1, 1) >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:count]
    if signed:
        half = 1 << (bits - 1)
        return np.where(fields >= half, fields.astype(np.int16) - 2 * half, fields).astype(np.int8).reshape(shape)
    return fields.reshape(shape)


def pack_int4_onnx(values, signed: bool | None = None) -> np.ndarray:
    """Pack int4/uint4 values two per byte, first element in the low nibble (ONNX).

    Spec (onnx.in.proto): "The first element is stored in the 4 least
    significant bits (LSB), and the second element is stored in the 4 most
    significant bits (MSB)." The tensor is flattened in row-major order; an
    odd count leaves the last byte's high nibble 0.
    ``signed`` (default: from the dtype, int -> True, uint -> False) picks the
    range: signed [-8, 7] stored as two's-complement nibbles, unsigned [0, 15].
    Returns a 1-D uint8 array of ``ceil(values.size / 2)`` bytes.
    """
    return _pack_onnx(values, 4, signed, "pack_int4_onnx")


def unpack_int4_onnx(packed, n, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_int4_onnx`: low nibble first, ``n`` elements.

    ``n`` is the true element count (an odd count drops the last high nibble)
    or the original shape, which the result then takes. ``signed=True``
    sign-extends each nibble into int8 [-8, 7]; ``signed=False`` returns uint8
    [0, 15]. ``packed`` must be uint8 with exactly ``ceil(count / 2)`` bytes.
    """
    return _unpack_onnx(packed, n, 4, signed, "unpack_int4_onnx")


def pack_int2_onnx(values, signed: bool | None = None) -> np.ndarray:
    """Pack int2/uint2 values four per byte, first element in the lowest two bits (ONNX).

    Spec (onnx.in.proto, INT2/UINT2; ``onnx.numpy_helper._pack_2bitx4``): the tensor is
    flattened row-major and element i goes to bits ``2 * (i % 4)`` and ``2 * (i % 4) + 1`` of
    byte ``i // 4``; a count not divisible by 4 leaves the last byte's high bits 0.
    ``signed`` (default: from the dtype) picks the range: signed [-2, 1] as two's-complement
    pairs of bits (-1 -> 0b11), unsigned [0, 3]. Returns ``ceil(values.size / 4)`` uint8 bytes.
    """
    return _pack_onnx(values, 2, signed, "pack_int2_onnx")


def unpack_int2_onnx(packed, n, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_int2_onnx`: lowest bits first, ``n`` elements (a count or the
    original shape). ``signed=True`` sign-extends into int8 [-2, 1]; ``signed=False`` returns
    uint8 [0, 3]. ``packed`` must be uint8 with exactly ``ceil(count / 4)`` bytes."""
    return _unpack_onnx(packed, n, 2, signed, "unpack_int2_onnx")


# --------------------------------------------------------------------------
# PyTorch decomposed (torch.ao.quantization.fx._decomposed)


def pack_int4_torch_decomposed(values) -> np.ndarray:
    """Pack uint4 values two per byte along the last dim, first element in the HIGH nibble.

    Spec (``pack_int4_from_int8``): ``byte = (d[..., ::2] << 4) | d[..., 1::2]``.
    There is no offset: values must already be in [0, 15] (add the zero point
    first); a negative value is refused rather than silently wrapped. The last
    dim must be even, as torch requires. Returns uint8 of shape
    ``values.shape[:-1] + (values.shape[-1] // 2,)``.
    """
    array = _integer_array(values, "pack_int4_torch_decomposed")
    if array.ndim == 0 or array.shape[-1] % 2:
        raise ShapeError(
            f"pack_int4_torch_decomposed: the last dim must have an even length (torch packs pairs "
            f"along it), got shape {array.shape}"
        )
    _check_range(array, 0, 15, "pack_int4_torch_decomposed",
                 "uint4 (torch's layout has no offset: add the zero point, e.g. +8, before packing)")
    u = array.astype(np.uint8)
    return ((u[..., 0::2] << np.uint8(4)) | u[..., 1::2]).astype(np.uint8)


def unpack_int4_torch_decomposed(packed) -> np.ndarray:
    """Inverse of :func:`pack_int4_torch_decomposed` (``unpack_int4_to_int8``: ``(b >> 4, b & 0xF)``).

    Returns uint8 values in [0, 15] of shape ``packed.shape[:-1] + (2 * packed.shape[-1],)``.
    """
    packed = _require_uint8(packed, "unpack_int4_torch_decomposed")
    if packed.ndim == 0:
        raise ShapeError("unpack_int4_torch_decomposed: packed bytes must have at least one dimension")
    values = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), dtype=np.uint8)
    values[..., 0::2] = packed >> np.uint8(4)
    values[..., 1::2] = packed & np.uint8(0x0F)
    return values


# --------------------------------------------------------------------------
# compressed-tensors pack-quantized


def _check_num_bits(num_bits: int, function: str) -> None:
    if not (isinstance(num_bits, (int, np.integer)) and 1 <= num_bits <= 8):
        raise ConfigError(f"{function}: num_bits must be an integer in [1, 8], got {num_bits!r}")


def compressed_tensors_packed_shape(weight_shape, num_bits: int = 4, axis: int = -1) -> tuple[int, ...]:
    """Shape of the int32 words for ``weight_shape``: ``axis`` becomes ``ceil(len * num_bits / 32)``."""
    shape = list(_as_shape(weight_shape))
    if not shape:
        raise ShapeError("compressed-tensors packing needs at least one dimension, got a scalar")
    axis = axis % len(shape)
    shape[axis] = math.ceil(shape[axis] * num_bits / 32)
    return tuple(shape)


def pack_compressed_tensors(values, num_bits: int = 4, axis: int = -1) -> np.ndarray:
    """Pack signed ``num_bits``-bit values into int32 words, compressed-tensors' pack-quantized layout.

    Spec (``compressors/pack_quantized/helpers.py``, ``pack_to_int32``):
    - offset binary: ``u = q + 2^(b-1)`` (int4: ``q + 8`` in [0, 15]); so q
      must lie in [-2^(b-1), 2^(b-1) - 1];
    - along ``axis`` (the library's ``packed_dim=1``, the last dim; its
      ``packed_dim=0`` for 2-D zero points is ``axis=0``), each line of ``L``
      values is one bit stream: element i occupies bits ``b*i .. b*i+b-1``,
      least significant bit first, in little-endian int32 words, giving
      ``ceil(L * b / 32)`` words per line; the tail bits of the last word are 0;
    - the packing is dense: for b in {1, 2, 4, 8} that is ``32 / b`` values
      per word (element 0 in bits 0..b-1); for b in {3, 5, 6, 7} values cross
      word boundaries (low bits in word k, high bits in word k+1), as in the
      current library; the old neuralmagic layout padded instead, and is
      incompatible for those widths.
    Returns int32 of :func:`compressed_tensors_packed_shape`; the words are the
    bit patterns, so a word with bit 31 set is negative.
    """
    _check_num_bits(num_bits, "pack_compressed_tensors")
    array = _integer_array(values, "pack_compressed_tensors")
    packed_shape = compressed_tensors_packed_shape(array.shape, num_bits, axis)
    offset = 1 << (num_bits - 1)
    _check_range(array, -offset, offset - 1, "pack_compressed_tensors", f"signed int{num_bits}")
    lines = np.moveaxis(array, axis, -1)
    length, words = lines.shape[-1], math.ceil(lines.shape[-1] * num_bits / 32)
    unsigned = (lines.astype(np.int64) + offset).astype(np.uint8)
    # Each value's b low bits, LSB first, laid end to end: the bit stream of its line.
    bits = np.unpackbits(unsigned[..., np.newaxis], axis=-1, bitorder="little")[..., :num_bits]
    stream = np.zeros(lines.shape[:-1] + (words * 32,), dtype=np.uint8)
    stream[..., : length * num_bits] = bits.reshape(lines.shape[:-1] + (length * num_bits,))
    word_bytes = np.packbits(stream, axis=-1, bitorder="little")  # 4 bytes per word, little-endian
    packed = np.ascontiguousarray(word_bytes).view("<i4").astype(np.int32)
    return np.ascontiguousarray(np.moveaxis(packed, -1, axis)).reshape(packed_shape)


def unpack_compressed_tensors(packed, weight_shape, num_bits: int = 4, axis: int = -1) -> np.ndarray:
    """Inverse of :func:`pack_compressed_tensors` (``unpack_from_int32``).

    ``weight_shape`` is the original shape (the checkpoint's ``weight_shape``
    tensor); the bits past the last value of each line are ignored. ``packed``
    must be int32 of :func:`compressed_tensors_packed_shape`. Returns int8
    values ``u - 2^(b-1)`` in [-2^(b-1), 2^(b-1) - 1].
    """
    _check_num_bits(num_bits, "unpack_compressed_tensors")
    packed = np.asarray(packed)
    if packed.dtype != np.int32:
        raise DTypeError(f"unpack_compressed_tensors: packed words must be int32, got dtype {packed.dtype}")
    shape = _as_shape(weight_shape)
    expected = compressed_tensors_packed_shape(shape, num_bits, axis)
    if packed.shape != expected:
        raise ShapeError(
            f"unpack_compressed_tensors: weight shape {list(shape)} with {num_bits}-bit values packs to "
            f"{list(expected)} int32 words, got {list(packed.shape)}"
        )
    lines_shape = np.moveaxis(np.empty(shape, dtype=np.uint8), axis, -1).shape
    length = lines_shape[-1]
    word_bytes = np.ascontiguousarray(np.moveaxis(packed, axis, -1), dtype="<i4").view(np.uint8)
    stream = np.unpackbits(word_bytes, axis=-1, bitorder="little")[..., : length * num_bits]
    bits = stream.reshape(lines_shape[:-1] + (length, num_bits))
    unsigned = np.packbits(bits, axis=-1, bitorder="little")[..., 0]  # num_bits <= 8: one byte each
    values = (unsigned.astype(np.int16) - (1 << (num_bits - 1))).astype(np.int8)
    return np.ascontiguousarray(np.moveaxis(values, -1, axis))
