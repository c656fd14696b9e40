"""Tests of weights_io.int4: three packed layouts, checked against known vectors and
against independent bit-by-bit references written with Python integers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from weights_io import (
    ConfigError,
    DTypeError,
    OutOfRangeError,
    ShapeError,
    compressed_tensors_packed_shape,
    pack_compressed_tensors,
    pack_int4_onnx,
    pack_int4_torch_decomposed,
    unpack_compressed_tensors,
    unpack_int4_onnx,
    unpack_int4_torch_decomposed,
)

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)
int4_arrays = hnp.arrays(np.int8, shapes, elements=st.integers(-8, 7))
uint4_arrays = hnp.arrays(np.uint8, shapes, elements=st.integers(0, 15))


# --------------------------------------------------------------------------
# ONNX: first element in the low nibble


def onnx_reference(values, signed: bool) -> bytes:
    """Bytes by the spec's words, one element at a time."""
    flat = [int(v) for v in np.asarray(values).reshape(-1)]
    out = bytearray((len(flat) + 1) // 2)
    for i, v in enumerate(flat):
        nibble = v + 16 if (signed and v < 0) else v
        out[i // 2] |= nibble << (4 * (i % 2))
    return bytes(out)


def test_onnx_known_vectors():
    assert pack_int4_onnx(np.array([1, -1], np.int8)).tolist() == [0xF1]
    assert pack_int4_onnx(np.array([1, -1, 3], np.int8)).tolist() == [0xF1, 0x03]
    assert pack_int4_onnx(np.array([-8, 7], np.int8)).tolist() == [0x78]
    assert pack_int4_onnx(np.array([15, 0], np.uint8)).tolist() == [0x0F]
    assert unpack_int4_onnx(np.array([0xF1], np.uint8), 2).tolist() == [1, -1]
    assert unpack_int4_onnx(np.array([0xF1], np.uint8), 2, signed=False).tolist() == [1, 15]
    assert unpack_int4_onnx(np.array([0xF1, 0x03], np.uint8), 3).tolist() == [1, -1, 3]


def test_onnx_all_values():
    signed = np.arange(-8, 8, dtype=np.int8)
    assert np.array_equal(unpack_int4_onnx(pack_int4_onnx(signed), 16), signed)
    unsigned = np.arange(16, dtype=np.uint8)
    assert np.array_equal(unpack_int4_onnx(pack_int4_onnx(unsigned), 16, signed=False), unsigned)
    assert pack_int4_onnx(unsigned).tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]


@settings(max_examples=200, deadline=None)
@given(int4_arrays)
def test_onnx_signed_round_trip_and_layout(values):
    packed = pack_int4_onnx(values)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.tobytes() == onnx_reference(values, signed=True)
    unpacked = unpack_int4_onnx(packed, values.shape)
    assert unpacked.dtype == np.int8 and np.array_equal(unpacked, values)
    assert np.array_equal(unpack_int4_onnx(packed, values.size), values.reshape(-1))


@settings(max_examples=100, deadline=None)
@given(uint4_arrays)
def test_onnx_unsigned_round_trip_and_layout(values):
    packed = pack_int4_onnx(values)
    assert packed.tobytes() == onnx_reference(values, signed=False)
    unpacked = unpack_int4_onnx(packed, values.shape, signed=False)
    assert unpacked.dtype == np.uint8 and np.array_equal(unpacked, values)


def test_onnx_errors():
    with pytest.raises(OutOfRangeError, match=r"value 8 at index \(1, 0\).*\[-8, 7\]"):
        pack_int4_onnx(np.array([[0, 1], [8, 2]], np.int8))
    with pytest.raises(OutOfRangeError, match=r"value 16 at index \(2,\).*\[0, 15\]"):
        pack_int4_onnx(np.array([0, 1, 16], np.uint8))
    with pytest.raises(OutOfRangeError, match="value -1"):
        pack_int4_onnx(np.array([-1], np.int8), signed=False)
    with pytest.raises(DTypeError, match="float32"):
        pack_int4_onnx(np.array([1.0], np.float32))
    with pytest.raises(ShapeError, match="3 int4 values need 2 bytes, got 1"):
        unpack_int4_onnx(np.array([0x11], np.uint8), 3)
    with pytest.raises(DTypeError, match="uint8"):
        unpack_int4_onnx(np.array([0x11], np.int32), 2)


# --------------------------------------------------------------------------
# PyTorch decomposed: first element in the high nibble, no offset


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6).map(
    lambda s: s[:-1] + (2 * s[-1],)), elements=st.integers(0, 15)))
def test_torch_decomposed_round_trip_and_layout(values):
    packed = pack_int4_torch_decomposed(values)
    assert packed.shape == values.shape[:-1] + (values.shape[-1] // 2,) and packed.dtype == np.uint8
    flat_values, flat_packed = values.reshape(-1), packed.reshape(-1)
    for i in range(flat_packed.size):
        assert int(flat_packed[i]) == (int(flat_values[2 * i]) << 4) | int(flat_values[2 * i + 1])
    assert np.array_equal(unpack_int4_torch_decomposed(packed), values)


def test_torch_decomposed_known_vectors_and_errors():
    assert pack_int4_torch_decomposed(np.array([1, 2], np.uint8)).tolist() == [0x12]
    assert pack_int4_torch_decomposed(np.array([[15, 0], [0, 15]], np.int8)).tolist() == [[0xF0], [0x0F]]
    assert unpack_int4_torch_decomposed(np.array([0x12, 0xF0], np.uint8)).tolist() == [1, 2, 15, 0]
    with pytest.raises(OutOfRangeError, match=r"value -1 at index \(0, 1\).*no offset"):
        pack_int4_torch_decomposed(np.array([[1, -1]], np.int8))
    with pytest.raises(OutOfRangeError, match="value 16"):
        pack_int4_torch_decomposed(np.array([16, 0], np.int32))
    with pytest.raises(ShapeError, match="even"):
        pack_int4_torch_decomposed(np.array([1, 2, 3], np.uint8))
    with pytest.raises(ShapeError, match="even"):
        pack_int4_torch_decomposed(np.array(1, np.uint8))
    with pytest.raises(DTypeError):
        pack_int4_torch_decomposed(np.array([1.0, 2.0]))


# --------------------------------------------------------------------------
# compressed-tensors pack-quantized: offset binary, LSB-first int32 words


def compressed_tensors_reference(values: np.ndarray, num_bits: int) -> list[list[int]]:
    """Words (as unsigned Python ints) of each row of a 2-D array, by the bit-stream definition."""
    offset = 1 << (num_bits - 1)
    rows = []
    for row in values.reshape(math.prod(values.shape[:-1]), values.shape[-1]):
        stream = 0
        for i, q in enumerate(row):
            stream |= (int(q) + offset) << (num_bits * i)
        words = math.ceil(len(row) * num_bits / 32)
        rows.append([(stream >> (32 * w)) & 0xFFFFFFFF for w in range(words)])
    return rows


def test_compressed_tensors_known_vectors():
    # q = -8..-1 -> u = 0..7 -> element i in bits 4i..4i+3
    packed = pack_compressed_tensors(np.arange(-8, 0, dtype=np.int8).reshape(1, 8))
    assert packed.dtype == np.int32 and packed.shape == (1, 1)
    assert int(packed.view(np.uint32)[0, 0]) == 0x76543210
    packed = pack_compressed_tensors(np.arange(0, 8, dtype=np.int8).reshape(1, 8))
    assert int(packed.view(np.uint32)[0, 0]) == 0xFEDCBA98 and packed[0, 0] < 0
    # 9 values: the ninth starts a second word; the unused bits are 0
    nine = pack_compressed_tensors(np.array([[-8] * 8 + [7]], np.int8))
    assert nine.view(np.uint32).tolist() == [[0x00000000, 0x0000000F]]
    # 8-bit: q = [-128, 127, 0, 1] -> u = [0, 255, 128, 129]
    assert int(pack_compressed_tensors(np.array([[-128, 127, 0, 1]], np.int8), 8).view(np.uint32)[0, 0]) == 0x8180FF00
    # 3-bit: the 11th value (bits 30..32) crosses into the next word, low bits first
    crossing = pack_compressed_tensors(np.array([[-4] * 10 + [3]], np.int8), 3)
    assert crossing.view(np.uint32).tolist() == [[0xC0000000, 0x00000001]]


def test_compressed_tensors_all_int4_values():
    values = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    packed = pack_compressed_tensors(values)
    assert packed.view(np.uint32).tolist() == [[0x76543210], [0xFEDCBA98]]
    assert np.array_equal(unpack_compressed_tensors(packed, values.shape), values)


@st.composite
def packable(draw):
    num_bits = draw(st.integers(1, 8))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40))
    low, high = -(1 << (num_bits - 1)), (1 << (num_bits - 1)) - 1
    values = draw(hnp.arrays(np.int8, shape, elements=st.integers(low, high)))
    axis = draw(st.integers(-values.ndim, values.ndim - 1))
    return values, num_bits, axis


@settings(max_examples=200, deadline=None)
@given(packable())
def test_compressed_tensors_round_trip_and_layout(case):
    values, num_bits, axis = case
    packed = pack_compressed_tensors(values, num_bits, axis=axis)
    assert packed.dtype == np.int32
    assert packed.shape == compressed_tensors_packed_shape(values.shape, num_bits, axis)
    lines = np.moveaxis(values, axis, -1)
    expected = compressed_tensors_reference(lines, num_bits)
    words = math.ceil(lines.shape[-1] * num_bits / 32)
    got = np.moveaxis(packed, axis, -1).reshape(len(expected), words).view(np.uint32).tolist()
    assert got == expected
    unpacked = unpack_compressed_tensors(packed, values.shape, num_bits, axis=axis)
    assert unpacked.dtype == np.int8 and np.array_equal(unpacked, values)


def test_compressed_tensors_errors():
    with pytest.raises(OutOfRangeError, match=r"value 8 at index \(0, 2\).*signed int4 range \[-8, 7\]"):
        pack_compressed_tensors(np.array([[0, 1, 8]], np.int16))
    with pytest.raises(OutOfRangeError, match=r"value -3 .*\[-2, 1\]"):
        pack_compressed_tensors(np.array([[-3]], np.int8), num_bits=2)
    with pytest.raises(DTypeError, match="float64"):
        pack_compressed_tensors(np.zeros((2, 8)))
    with pytest.raises(ConfigError, match="num_bits"):
        pack_compressed_tensors(np.zeros((2, 8), np.int8), num_bits=9)
    with pytest.raises(ShapeError, match="scalar"):
        pack_compressed_tensors(np.array(1, np.int8))
    packed = pack_compressed_tensors(np.zeros((2, 9), np.int8))
    with pytest.raises(ShapeError, match=r"weight shape \[2, 17\] .* packs to \[2, 3\] int32 words, got \[2, 2\]"):
        unpack_compressed_tensors(packed, (2, 17))
    with pytest.raises(DTypeError, match="int32"):
        unpack_compressed_tensors(packed.astype(np.int64), (2, 9))
