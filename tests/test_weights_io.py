"""Tests of weights_io: safetensors reading/writing, checkpoints, pickle refusal, configs, names.

No network; every file lives under pytest's tmp_path (or a TemporaryDirectory
inside hypothesis tests, which cannot share a function-scoped fixture).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import pickle
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weights_io
from weights_io import (
    BertConfig,
    ConfigError,
    DTypeError,
    GPT2Config,
    LlamaConfig,
    MissingTensorError,
    SafetensorsFile,
    WeightsFormatError,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    hf_to_refquant,
    load_config,
    load_weights,
    open_checkpoint,
    refquant_to_hf,
    refuse_pickle,
    write_safetensors,
)
from weights_io import safetensors_io

safetensors_numpy = pytest.importorskip("safetensors.numpy")

ALL_NUMPY_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                    np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, same dtype, and the very same bytes (NaN payloads and -0.0 included)."""
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


def write_raw_safetensors(path, header, data: bytes = b"", header_length: int | None = None) -> str:
    """Write a file byte by byte: 8-byte length, header (object -> JSON, or raw bytes), data."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(header_bytes) if header_length is None else header_length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", length) + header_bytes + data)
    return str(path)


def leftover_temporaries(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


# --------------------------------------------------------------------------
# round trips and interop


@pytest.mark.parametrize("dtype", ALL_NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_byte_exactly(tmp_path, dtype):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=5 * 3 * np.dtype(dtype).itemsize, dtype=np.uint8)
    values = raw.view(dtype).reshape(5, 3) if dtype is not np.bool_ else (raw % 2).astype(bool).reshape(5, 3)
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": values, "scalar": values.reshape(-1)[:1].reshape(()),
                             "empty": values[:0]})
    f = SafetensorsFile(path)
    assert same_bytes(f.get("x"), values)
    assert same_bytes(f.get("scalar"), values.reshape(-1)[:1].reshape(()))
    assert same_bytes(f.get("empty"), values[:0])
    assert same_bytes(safetensors_numpy.load_file(str(path))["x"], values)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=st.dictionaries(
    st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=12),
    hnp.arrays(dtype=st.sampled_from(ALL_NUMPY_DTYPES),
               shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    max_size=4))
def test_write_read_round_trip_property(arrays):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.safetensors")
        write_safetensors(path, arrays, metadata={"format": "np"})
        f = SafetensorsFile(path)
        assert sorted(f.keys()) == sorted(arrays)
        assert f.metadata == {"format": "np"}
        for name, value in arrays.items():
            assert f.shape(name) == value.shape
            assert same_bytes(f.get(name), value)
        official = safetensors_numpy.load_file(path)
        for name, value in arrays.items():
            assert same_bytes(official[name], value)


def test_reads_files_written_by_the_official_library(tmp_path):
    path = str(tmp_path / "official.safetensors")
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.array([-1, 2], dtype=np.int8),
               "h": np.array([1.5, -0.0], dtype=np.float16)}
    safetensors_numpy.save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    f = SafetensorsFile(path)
    assert f.metadata == {"format": "pt", "note": "x"}
    assert {n: f.dtype(n) for n in f} == {"w": "F32", "i": "I8", "h": "F16"}
    for name, value in tensors.items():
        assert same_bytes(f.get(name), value)


def test_written_header_is_sorted_padded_and_contiguous(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"b": np.zeros(3, np.float32), "a": np.ones(2, np.int8)})
    data = path.read_bytes()
    header_length = struct.unpack("<Q", data[:8])[0]
    assert header_length % 8 == 0
    header = json.loads(data[8:8 + header_length])
    assert list(header) == ["a", "b"]
    assert header["a"]["data_offsets"] == [0, 2] and header["b"]["data_offsets"] == [2, 14]
    assert len(data) == 8 + header_length + 14


def test_non_contiguous_and_big_endian_inputs_are_stored_little_endian_c_order(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"t": base.T, "s": base[:, ::2], "be": base.astype(">f4")})
    f = SafetensorsFile(path)
    assert same_bytes(f.get("t"), np.ascontiguousarray(base.T))
    assert same_bytes(f.get("s"), np.ascontiguousarray(base[:, ::2]))
    assert same_bytes(f.get("be"), base)


def test_get_returns_read_only_arrays_and_converts_on_request(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": np.arange(4, dtype=np.int32)})
    f = SafetensorsFile(path)
    x = f.get("x")
    assert not x.flags.writeable
    assert same_bytes(f.get("x", dtype=np.float32), np.arange(4, dtype=np.float32))


# --------------------------------------------------------------------------
# bfloat16


def test_bf16_known_values():
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001, 0x7F7F], dtype=np.uint16)
    decoded = bf16_bits_to_float32(bits)
    expected = np.array([1.0, -2.0, np.inf, -np.inf, 0.0, -0.0, 2.0 ** -133, 3.3895313892515355e38], np.float32)
    assert same_bytes(decoded, expected)
    nan = bf16_bits_to_float32(np.array([0x7FC0, 0xFFC1, 0x7F81], dtype=np.uint16))
    assert np.isnan(nan).all()
    assert same_bytes(nan.view(np.uint32), np.array([0x7FC00000, 0xFFC10000, 0x7F810000], np.uint32))


def test_bf16_decode_matches_a_hand_bit_shift_for_all_65536_patterns():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    by_hand = np.frombuffer(b"".join(struct.pack("<I", int(b) << 16) for b in bits), dtype="<f4")
    assert same_bytes(bf16_bits_to_float32(bits), by_hand.astype(np.float32))


def test_bf16_encode_is_exact_on_every_bf16_value_and_keeps_nan():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = bf16_bits_to_float32(bits)
    encoded = float32_to_bf16_bits(values)
    is_nan = np.isnan(values)
    assert np.array_equal(encoded[~is_nan], bits[~is_nan])
    assert np.all(encoded[is_nan] == 0x7FC0)  # canonical quiet NaN, as c10::BFloat16


def test_bf16_encode_rounds_to_nearest_even():
    one = 0x3F800000
    cases = {
        one + 0x7FFF: 0x3F80,   # just below half: down
        one + 0x8000: 0x3F80,   # tie, even neighbour below
        one + 0x18000: 0x3F82,  # tie, odd 0x3F81 -> even 0x3F82
        one + 0x8001: 0x3F81,   # just above half: up
        0x7F7FFFFF: 0x7F80,     # float32 max rounds to inf
        0x807FFFFF: 0x8080,     # negative subnormal rounds up in magnitude to -min normal
    }
    inputs = np.array(list(cases), dtype=np.uint32).view(np.float32)
    assert [hex(b) for b in float32_to_bf16_bits(inputs)] == [hex(b) for b in cases.values()]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_bf16_encode_picks_the_nearer_neighbour(u):
    x = np.array([u], dtype=np.uint32).view(np.float32)
    if np.isnan(x[0]):
        return
    result = int(float32_to_bf16_bits(x)[0])
    down, up = u >> 16, (u >> 16) + 1
    remainder = u & 0xFFFF
    expected = down if remainder < 0x8000 or (remainder == 0x8000 and down % 2 == 0) else up
    assert result == expected


def test_bf16_write_and_read(tmp_path):
    values = np.array([[1.0, -2.5, 1.00390625], [np.inf, np.nan, 3e38]], dtype=np.float32)
    path = tmp_path / "bf16.safetensors"
    write_safetensors(path, {"w": values, "raw": np.array([0x3F80], np.uint16)}, dtypes={"w": "BF16", "raw": "BF16"})
    f = SafetensorsFile(path)
    assert f.dtype("w") == "BF16" and f.dtype("raw") == "BF16"
    assert same_bytes(f.get_raw("w"), float32_to_bf16_bits(values))
    assert same_bytes(f.get("w"), bf16_bits_to_float32(float32_to_bf16_bits(values)))
    assert f.get("raw").tolist() == [1.0]
    # The official parser accepts the header (NumPy itself has no bfloat16 to decode into).
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as official:
        assert sorted(official.keys()) == ["raw", "w"]
    # get_raw -> write -> read keeps the bits exactly
    write_safetensors(tmp_path / "again.safetensors", {"w": f.get_raw("w")}, dtypes={"w": "BF16"})
    assert same_bytes(SafetensorsFile(tmp_path / "again.safetensors").get_raw("w"), f.get_raw("w"))


def test_bf16_file_from_the_official_writer_decodes(tmp_path):
    # Build the official layout by hand (safetensors.numpy cannot write bf16): a BF16 entry of 2 values.
    bits = np.array([0x3F80, 0xC000], dtype="<u2")
    path = write_raw_safetensors(tmp_path / "b.safetensors",
                                 {"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, bits.tobytes())
    assert SafetensorsFile(path).get("x").tolist() == [1.0, -2.0]


# --------------------------------------------------------------------------
# malformed files


def _good_entry(shape=(2,), dtype="F32", offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _expect_format_error(path, *fragments):
    with pytest.raises(WeightsFormatError) as info:
        SafetensorsFile(path)
    message = str(info.value)
    assert os.fspath(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_file_shorter_than_8_bytes_is_truncated(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    _expect_format_error(path, "truncated")


def test_header_length_larger_than_file(tmp_path):
    path = write_raw_safetensors(tmp_path / "long.safetensors", {"x": _good_entry()}, b"\0" * 8, header_length=10**6)
    _expect_format_error(path, "1000000")


def test_corrupt_json_header(tmp_path):
    path = write_raw_safetensors(tmp_path / "bad.safetensors", b'{"x": {"dtype": "F32", ', b"")
    _expect_format_error(path, "not valid UTF-8 JSON")


def test_header_that_is_not_an_object(tmp_path):
    path = write_raw_safetensors(tmp_path / "list.safetensors", [1, 2])
    _expect_format_error(path, "JSON object")


def test_duplicate_tensor_names_in_header(tmp_path):
    path = write_raw_safetensors(tmp_path / "dup.safetensors",
                                 b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                 b'"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0")
    _expect_format_error(path, "duplicate")


@pytest.mark.parametrize("entry, fragment", [
    (_good_entry(dtype="F8_E4M3", offsets=(0, 2)), "unsupported dtype 'F8_E4M3'"),
    (_good_entry(dtype="Q4"), "unsupported dtype"),
    ({"dtype": "F32", "shape": [2]}, "lacks data_offsets"),
    (_good_entry(offsets=(0, 8, 9)), "pair of integers"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}, "pair of integers"),
    (_good_entry(offsets=(8, 0)), "begin after they end"),
    (_good_entry(shape=(-2,)), "negative dimension"),
    (_good_entry(shape=("2",)), "list of integers"),
    (_good_entry(offsets=(0, 6)), "declares 8 bytes for shape [2] float32 but data_offsets [0, 6] span 6"),
])
def test_lying_entries_are_refused(tmp_path, entry, fragment):
    path = write_raw_safetensors(tmp_path / "lies.safetensors", {"bert.x": entry}, b"\0" * 8)
    message = _expect_format_error(path, fragment)
    assert "'bert.x'" in message


def test_size_mismatch_message_names_tensor_shape_and_both_sizes(tmp_path):
    path = write_raw_safetensors(tmp_path / "model.safetensors",
                                 {"bert.x": _good_entry(shape=(32, 32), offsets=(0, 4000))}, b"\0" * 4000)
    _expect_format_error(path, "tensor 'bert.x' declares 4096 bytes for shape [32, 32] float32 but data_offsets",
                         "span 4000")


def test_offsets_beyond_the_data_section_are_truncation(tmp_path):
    path = tmp_path / "cut.safetensors"
    write_safetensors(path, {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    _expect_format_error(path, "truncated", "'b'")


def test_overlapping_tensors(tmp_path):
    path = write_raw_safetensors(tmp_path / "overlap.safetensors",
                                 {"a": _good_entry(offsets=(0, 8)), "b": _good_entry(offsets=(4, 12))}, b"\0" * 12)
    _expect_format_error(path, "overlaps", "'a'", "'b'")


def test_hole_between_tensors(tmp_path):
    path = write_raw_safetensors(tmp_path / "hole.safetensors",
                                 {"a": _good_entry(offsets=(0, 8)), "b": _good_entry(offsets=(12, 20))}, b"\0" * 20)
    _expect_format_error(path, "hole of 4 bytes", "'b'")


def test_trailing_bytes_after_the_last_tensor(tmp_path):
    path = write_raw_safetensors(tmp_path / "trail.safetensors", {"a": _good_entry()}, b"\0" * 12)
    _expect_format_error(path, "4 unexplained bytes")


def test_metadata_must_be_strings(tmp_path):
    path = write_raw_safetensors(tmp_path / "meta.safetensors",
                                 {"__metadata__": {"format": 1}, "a": _good_entry()}, b"\0" * 8)
    _expect_format_error(path, "__metadata__['format']")


def test_file_truncated_after_open_is_reported(tmp_path):
    path = tmp_path / "shrinks.safetensors"
    write_safetensors(path, {"a": np.ones(4096, np.float32)})
    f = SafetensorsFile(path)
    with open(path, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(WeightsFormatError, match="truncated"):
        f.get("a")


# --------------------------------------------------------------------------
# missing tensors


def test_missing_tensor_names_file_and_close_names(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"encoder.layer.0.query.weight": np.zeros(1, np.float32),
                             "encoder.layer.1.query.weight": np.zeros(1, np.float32)})
    f = SafetensorsFile(path)
    with pytest.raises(MissingTensorError) as info:
        f.get("encoder.layer.0.querry.weight")
    message = str(info.value)
    assert str(path) in message and "'encoder.layer.0.query.weight'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, WeightsFormatError)
    assert "x" not in f and len(f) == 2


# --------------------------------------------------------------------------
# atomic writes


def test_unsupported_dtype_leaves_no_file(tmp_path):
    path = tmp_path / "new.safetensors"
    with pytest.raises(DTypeError, match="'bad'"):
        write_safetensors(path, {"good": np.zeros(3, np.float32), "bad": np.array([object()], dtype=object)})
    assert not path.exists() and leftover_temporaries(tmp_path) == []
    with pytest.raises(DTypeError, match="'c'"):
        write_safetensors(path, {"c": np.zeros(2, np.complex64)})
    assert not path.exists()


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a": np.arange(3, dtype=np.int32)})
    before = path.read_bytes()
    with pytest.raises(DTypeError):
        write_safetensors(path, {"a": np.array(["text"])})
    assert path.read_bytes() == before and leftover_temporaries(tmp_path) == []


def test_failure_in_the_middle_of_writing_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a": np.arange(3, dtype=np.int32)})
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    # fsync runs after every byte has been written, just before the rename.
    monkeypatch.setattr(safetensors_io.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_safetensors(path, {"a": np.zeros(1000, np.float64)})
    monkeypatch.undo()
    assert path.read_bytes() == before and leftover_temporaries(tmp_path) == []

    def failing_conversion(dtype_string, array):
        raise RuntimeError("boom while writing tensor bytes")

    monkeypatch.setattr(safetensors_io, "_storage_bytes", failing_conversion)
    with pytest.raises(RuntimeError, match="boom"):
        write_safetensors(tmp_path / "other.safetensors", {"a": np.zeros(3)})
    assert not (tmp_path / "other.safetensors").exists() and leftover_temporaries(tmp_path) == []


def test_write_argument_errors(tmp_path):
    with pytest.raises(DTypeError, match="not being written"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2, np.float32)}, dtypes={"b": "BF16"})
    with pytest.raises(DTypeError, match="only ask for 'BF16'"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2, np.float32)}, dtypes={"a": "F16"})
    with pytest.raises(DTypeError, match="BF16 needs float"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2, np.int32)}, dtypes={"a": "BF16"})
    with pytest.raises(WeightsFormatError, match="str to str"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2)}, metadata={"n": 1})
    with pytest.raises(WeightsFormatError, match="invalid tensor name"):
        write_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.zeros(2)})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# pickle refusal


class _WouldRunCode:
    """Unpickling this creates a directory: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".BIN"])
def test_pickle_suffixes_are_refused_with_the_reason(tmp_path, suffix):
    path = tmp_path / f"pytorch_model{suffix}"
    marker = tmp_path / "unpickled"
    path.write_bytes(pickle.dumps(_WouldRunCode(str(marker)), protocol=2))
    for opener in (refuse_pickle, open_checkpoint):
        with pytest.raises(WeightsFormatError) as info:
            opener(path)
        message = str(info.value)
        assert str(path) in message
        assert "refquant never unpickles files (unpickling runs arbitrary code)" in message
        assert "save_pretrained(safe_serialization=True)" in message
    assert not marker.exists()


@pytest.mark.parametrize("head", [pickle.dumps({"a": 1}, protocol=2), pickle.dumps([1], protocol=5),
                                  b"PK\x03\x04" + b"\0" * 40])
def test_pickle_or_zip_content_is_refused_whatever_the_name(tmp_path, head):
    path = tmp_path / "weights"
    path.write_bytes(head)
    with pytest.raises(WeightsFormatError, match="never unpickles"):
        refuse_pickle(path)
    with pytest.raises(WeightsFormatError, match="never unpickles"):
        open_checkpoint(path)
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(head)
    with pytest.raises(WeightsFormatError, match="never unpickles"):
        SafetensorsFile(renamed)


def test_safetensors_file_whose_header_length_starts_like_pickle_is_accepted(tmp_path):
    # A header length of 0x0280 + k begins with bytes 0x80 0x02, like a pickle; byte 8 is "{".
    path = tmp_path / "x.safetensors"
    header = json.dumps({"a": _good_entry(shape=(1,), dtype="U8", offsets=(0, 1))}).encode()
    header += b" " * (0x0280 - len(header))
    write_raw_safetensors(path, header, b"\x07")
    refuse_pickle(path)
    assert open_checkpoint(path).get("a").tolist() == [7]


def test_directory_with_only_pickles_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(WeightsFormatError, match="never unpickles"):
        open_checkpoint(tmp_path)


# --------------------------------------------------------------------------
# checkpoints


def _write_sharded(directory, weight_map_override=None):
    a = {"model.embed_tokens.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    b = {"model.norm.weight": np.ones(3, np.float16), "lm_head.weight": np.zeros((2, 3), np.float32)}
    write_safetensors(directory / "model-00001-of-00002.safetensors", a)
    write_safetensors(directory / "model-00002-of-00002.safetensors", b)
    weight_map = {name: "model-00001-of-00002.safetensors" for name in a}
    weight_map.update({name: "model-00002-of-00002.safetensors" for name in b})
    weight_map.update(weight_map_override or {})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 48}, "weight_map": weight_map}))
    (directory / "config.json").write_text("{}")
    return {**a, **b}


def test_sharded_directory_via_index(tmp_path):
    tensors = _write_sharded(tmp_path)
    checkpoint = open_checkpoint(tmp_path)
    assert sorted(checkpoint.keys()) == sorted(tensors)
    assert checkpoint.config_path == str(tmp_path / "config.json")
    assert checkpoint.metadata == {"total_size": 48}
    for name, value in tensors.items():
        assert checkpoint.shape(name) == value.shape
        assert same_bytes(checkpoint.get(name), value)
    assert checkpoint.dtype("model.norm.weight") == "F16"
    assert checkpoint.file_of("lm_head.weight").path.endswith("model-00002-of-00002.safetensors")
    assert len(checkpoint.files) == 2
    assert sorted(open_checkpoint(tmp_path / "model.safetensors.index.json").keys()) == sorted(tensors)
    with pytest.raises(MissingTensorError, match="model.norm.weight"):
        checkpoint.get("model.norm.weigth")


def test_index_naming_a_missing_shard(tmp_path):
    _write_sharded(tmp_path, {"model.norm.weight": "model-00003-of-00002.safetensors"})
    with pytest.raises(WeightsFormatError) as info:
        open_checkpoint(tmp_path)
    message = str(info.value)
    assert "'model.norm.weight'" in message and "model-00003-of-00002.safetensors" in message
    assert "does not exist" in message


def test_index_naming_the_wrong_shard(tmp_path):
    _write_sharded(tmp_path, {"model.norm.weight": "model-00001-of-00002.safetensors"})
    with pytest.raises(WeightsFormatError) as info:
        open_checkpoint(tmp_path)
    message = str(info.value)
    assert "'model.norm.weight'" in message and "model-00001-of-00002.safetensors" in message
    assert "does not contain it" in message


def test_index_may_not_point_outside_the_directory(tmp_path):
    _write_sharded(tmp_path, {"model.norm.weight": "../elsewhere.safetensors"})
    with pytest.raises(WeightsFormatError, match="not a plain file name"):
        open_checkpoint(tmp_path)


def test_single_file_directory_and_single_file(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", {"w": np.ones(2, np.float32)}, metadata={"format": "pt"})
    for path in (tmp_path, tmp_path / "model.safetensors"):
        checkpoint = open_checkpoint(path)
        assert checkpoint.keys() == ["w"] and checkpoint.metadata == {"format": "pt"}
        assert checkpoint.config_path is None
    (tmp_path / "config.json").write_text("{}")
    assert open_checkpoint(tmp_path).config_path == str(tmp_path / "config.json")


def test_directory_without_weights_and_missing_path(tmp_path):
    with pytest.raises(WeightsFormatError, match="no weights found"):
        open_checkpoint(tmp_path)
    with pytest.raises(WeightsFormatError, match="no such file"):
        open_checkpoint(tmp_path / "absent.safetensors")


def test_unindexed_files_with_the_same_tensor_are_refused(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {"w": np.ones(2, np.float32)})
    write_safetensors(tmp_path / "b.safetensors", {"w": np.ones(2, np.float32)})
    with pytest.raises(WeightsFormatError, match="'w' is in both"):
        open_checkpoint(tmp_path)


# --------------------------------------------------------------------------
# laziness


def _resident_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc to measure RSS")
def test_reading_one_small_tensor_does_not_load_the_file(tmp_path):
    # Measured on the development machine (Linux, numpy 2.4.6, 3 runs alike): for a
    # 292,968 KiB file, RSS grew by 40 KiB to open it and read the 64-byte tensor
    # (and map, untouched, the 300 MB one), and by 294,036 KiB once the big tensor
    # was summed, which shows the probe does see file pages when they are touched.
    path = tmp_path / "big.safetensors"
    big = np.zeros(75_000_000, dtype=np.float32)  # 300 MB
    write_safetensors(path, {"big": big, "small": np.arange(16, dtype=np.float32)})
    del big
    gc.collect()
    file_kib = os.path.getsize(path) // 1024

    before = _resident_kib()
    f = SafetensorsFile(path)
    small = f.get("small")
    assert small.tolist() == list(range(16))
    assert f.get("big").shape == (75_000_000,)  # mapping it touches nothing
    grown_kib = _resident_kib() - before
    assert grown_kib < file_kib // 20, f"RSS grew by {grown_kib} KiB reading 64 bytes of a {file_kib} KiB file"

    big_mapped = f.get("big")  # kept alive: unmapping would return its pages
    assert big_mapped.sum() == 0.0
    grown_after_full_read = _resident_kib() - before
    print(f"RSS growth: {grown_kib} KiB for the small tensor, {grown_after_full_read} KiB after "
          f"summing the big one, file {file_kib} KiB")
    assert grown_after_full_read > file_kib // 2  # the probe is sensitive


# --------------------------------------------------------------------------
# config.json


BERT = {"model_type": "bert", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 256}
GPT2 = {"model_type": "gpt2", "vocab_size": 100, "n_positions": 32, "n_embd": 48, "n_layer": 2, "n_head": 4}
LLAMA = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 172,
         "num_hidden_layers": 2, "num_attention_heads": 8}


def test_bert_config_minimal_and_defaults():
    config = load_config(BERT)
    assert isinstance(config, BertConfig)
    assert (config.hidden_act, config.max_position_embeddings, config.type_vocab_size) == ("gelu", 512, 2)
    assert config.layer_norm_eps == 1e-12 and config.pad_token_id == 0 and config.head_dim == 16
    assert config.raw == BERT and config.source == "<dict>"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 3


def test_gpt2_config_minimal_and_defaults():
    config = load_config(GPT2)
    assert isinstance(config, GPT2Config)
    assert config.n_inner == 4 * 48 and config.tie_word_embeddings is True
    assert config.activation_function == "gelu_new" and config.layer_norm_epsilon == 1e-5
    assert load_config({**GPT2, "n_inner": None}).n_inner == 192
    assert load_config({**GPT2, "n_inner": 100}).n_inner == 100


def test_llama_config_minimal_defaults_and_gqa():
    config = load_config(LLAMA)
    assert isinstance(config, LlamaConfig)
    assert config.num_key_value_heads == 8 and config.head_dim == 8
    assert (config.rope_theta, config.rms_norm_eps, config.tie_word_embeddings) == (10000.0, 1e-6, False)
    assert (config.attention_bias, config.mlp_bias, config.hidden_act) == (False, False, "silu")
    gqa = load_config({**LLAMA, "num_key_value_heads": 2, "rope_theta": 500000, "head_dim": 16,
                       "tie_word_embeddings": True, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert gqa.num_key_value_heads == 2 and gqa.rope_theta == 500000.0 and gqa.head_dim == 16
    assert gqa.rope_scaling == {"rope_type": "llama3", "factor": 8.0}


def test_config_family_from_architectures_and_from_files(tmp_path):
    raw = {key: value for key, value in GPT2.items() if key != "model_type"}
    assert isinstance(load_config({**raw, "architectures": ["GPT2LMHeadModel"]}), GPT2Config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA))
    assert load_config(path).source == str(path)
    assert isinstance(load_config(tmp_path), LlamaConfig)


@pytest.mark.parametrize("raw, fragments", [
    ({**BERT, "model_type": "roberta"}, ["'roberta'", "bert, gpt2, llama"]),
    ({"architectures": ["MistralForCausalLM"]}, ["MistralForCausalLM", "bert, gpt2, llama"]),
    ({"architectures": ["BertGenerationEncoder"]}, ["bert, gpt2, llama"]),
    ({k: v for k, v in BERT.items() if k != "intermediate_size"}, ["'intermediate_size'", "missing"]),
    ({**BERT, "hidden_size": "64"}, ["'hidden_size'", "int"]),
    ({**BERT, "hidden_size": True}, ["'hidden_size'", "int"]),
    ({**BERT, "layer_norm_eps": "small"}, ["'layer_norm_eps'"]),
    ({**BERT, "num_attention_heads": 5}, ["'hidden_size'", "'num_attention_heads'", "divisible"]),
    ({**GPT2, "n_head": 5}, ["'n_embd'", "divisible"]),
    ({**GPT2, "n_layer": 0}, ["'n_layer'", "positive"]),
    ({**LLAMA, "num_key_value_heads": 3}, ["'num_attention_heads'", "'num_key_value_heads'", "divisible"]),
    ({**LLAMA, "tie_word_embeddings": "yes"}, ["'tie_word_embeddings'", "bool"]),
])
def test_config_errors_name_the_field(tmp_path, raw, fragments):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_config_file_that_is_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.json")


# --------------------------------------------------------------------------
# tensor names and float32 weights


@pytest.mark.parametrize("arch, hf_name, refquant_name", [
    ("bert", "bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("bert", "embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("bert", "bert.encoder.layer.3.attention.self.query.weight", "encoder.layer.3.attention.self.query.weight"),
    ("bert", "bert.encoder.layer.0.output.LayerNorm.gamma", "encoder.layer.0.output.LayerNorm.weight"),
    ("bert", "bert.embeddings.LayerNorm.beta", "embeddings.LayerNorm.bias"),
    ("bert", "cls.predictions.bias", "cls.predictions.bias"),
    ("bert", "bert.embeddings.position_ids", None),
    ("gpt2", "transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"),
    ("gpt2", "wte.weight", "wte.weight"),
    ("gpt2", "h.11.attn.bias", None),
    ("gpt2", "transformer.h.2.attn.masked_bias", None),
    ("gpt2", "h.2.attn.c_proj.bias", "h.2.attn.c_proj.bias"),
    ("llama", "model.layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.weight"),
    ("llama", "model.embed_tokens.weight", "embed_tokens.weight"),
    ("llama", "model.norm.weight", "norm.weight"),
    ("llama", "lm_head.weight", "lm_head.weight"),
    ("llama", "model.layers.5.self_attn.rotary_emb.inv_freq", None),
])
def test_hf_to_refquant(arch, hf_name, refquant_name):
    assert hf_to_refquant(arch, hf_name) == refquant_name


def test_refquant_to_hf_inverts_the_modern_names():
    assert refquant_to_hf("bert", "encoder.layer.1.output.dense.weight") == "bert.encoder.layer.1.output.dense.weight"
    assert refquant_to_hf("bert", "cls.predictions.bias") == "cls.predictions.bias"
    assert refquant_to_hf("gpt2", "h.0.mlp.c_fc.weight", prefixed=False) == "h.0.mlp.c_fc.weight"
    assert refquant_to_hf("llama", "lm_head.weight") == "lm_head.weight"
    assert refquant_to_hf("llama", "norm.weight") == "model.norm.weight"
    config = load_config(LLAMA)
    for name in weights_io.required_refquant_names(config):
        assert hf_to_refquant(config, refquant_to_hf(config, name)) == name
    with pytest.raises(WeightsFormatError, match="unknown architecture"):
        hf_to_refquant("t5", "x")


def _tiny_gpt2_checkpoint(directory):
    config = load_config({**GPT2, "n_layer": 1, "n_embd": 4, "n_head": 2, "vocab_size": 5, "n_positions": 3})
    rng = np.random.default_rng(1)
    tensors = {}
    for name in weights_io.required_refquant_names(config):
        if name == "wte.weight":
            shape = (5, 4)
        elif name == "wpe.weight":
            shape = (3, 4)
        elif name.endswith("c_attn.weight"):
            shape = (4, 12)          # Conv1D: [in, out]
        elif name.endswith("c_fc.weight"):
            shape = (4, 16)
        elif name.endswith("mlp.c_proj.weight"):
            shape = (16, 4)
        elif name.endswith("attn.c_proj.weight"):
            shape = (4, 4)
        elif name.endswith("c_attn.bias"):
            shape = (12,)
        elif name.endswith("c_fc.bias"):
            shape = (16,)
        else:
            shape = (4,)
        tensors[name] = rng.standard_normal(shape).astype(np.float32)
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 3, 3), np.float32))  # causal-mask buffer
    write_safetensors(directory / "model.safetensors", tensors, dtypes={"wpe.weight": "BF16"})
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(config)["raw"]))
    return config, tensors


def test_load_weights_gpt2_transposes_conv1d_and_decodes(tmp_path):
    config, tensors = _tiny_gpt2_checkpoint(tmp_path)
    weights = load_weights(tmp_path, config)
    assert "h.0.attn.bias" not in weights and "h.0.attn.c_attn.bias" in weights
    assert weights["h.0.attn.c_attn.weight"].shape == (12, 4) == weights.shape("h.0.attn.c_attn.weight")
    assert np.array_equal(weights["h.0.attn.c_attn.weight"], tensors["h.0.attn.c_attn.weight"].T)
    assert weights["h.0.mlp.c_proj.weight"].shape == (4, 16)
    assert weights["h.0.mlp.c_fc.weight"].flags.c_contiguous
    assert np.array_equal(weights["h.0.attn.c_attn.bias"], tensors["h.0.attn.c_attn.bias"])
    assert weights["wpe.weight"].dtype == np.float32
    assert same_bytes(weights["wpe.weight"], bf16_bits_to_float32(float32_to_bf16_bits(tensors["wpe.weight"])))
    assert weights.hf_name("wte.weight") == "wte.weight"
    assert set(weights) == set(weights_io.required_refquant_names(config))
    with pytest.raises(MissingTensorError, match="h.0.attn.c_attn.weight"):
        weights["h.0.attn.c_atn.weight"]


def test_load_weights_reads_one_tensor_per_lookup(tmp_path):
    _, tensors = _tiny_gpt2_checkpoint(tmp_path)

    class CountingCheckpoint:
        def __init__(self, inner):
            self.inner, self.reads, self.source = inner, [], "counting"

        def keys(self):
            return self.inner.keys()

        def shape(self, name):
            return self.inner.shape(name)

        def dtype(self, name):
            return self.inner.dtype(name)

        def get(self, name):
            self.reads.append(name)
            return self.inner.get(name)

    counting = CountingCheckpoint(open_checkpoint(tmp_path))
    weights = load_weights(counting, "gpt2")
    assert counting.reads == []
    weights["ln_f.bias"]
    assert counting.reads == ["ln_f.bias"]


def test_load_weights_errors(tmp_path):
    write_safetensors(tmp_path / "both.safetensors",
                      {"bert.pooler.dense.bias": np.zeros(2, np.float32), "pooler.dense.bias": np.zeros(2, np.float32)})
    with pytest.raises(WeightsFormatError, match="both map to refquant name 'pooler.dense.bias'"):
        load_weights(tmp_path / "both.safetensors", "bert")
    write_safetensors(tmp_path / "ints.safetensors", {"model.embed_tokens.weight": np.zeros((2, 2), np.int8)})
    with pytest.raises(DTypeError, match="I8"):
        load_weights(tmp_path / "ints.safetensors", "llama")["embed_tokens.weight"]
    with pytest.raises(MissingTensorError, match="missing llama weights: 'layers.0.input_layernorm.weight'"):
        load_weights(tmp_path / "ints.safetensors", load_config(LLAMA))


def test_configs_built_directly_resolve_defaults_and_validate():
    assert GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2).n_inner == 32
    llama = LlamaConfig(vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4)
    assert (llama.num_key_value_heads, llama.head_dim) == (4, 4)
    with pytest.raises(ConfigError, match="'num_key_value_heads'"):
        LlamaConfig(vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="divisible"):
        BertConfig(vocab_size=10, hidden_size=10, num_hidden_layers=1, num_attention_heads=4, intermediate_size=8)


def test_llama_rope_parameters_of_transformers_5_are_read():
    from weights_io import load_config
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16,
                num_hidden_layers=1, num_attention_heads=2)
    cfg = load_config({**base, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}})
    assert cfg.rope_theta == 100000.0 and cfg.rope_scaling is None
    cfg = load_config({**base, "rope_theta": 500000.0})
    assert cfg.rope_theta == 500000.0
    cfg = load_config({**base, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}})
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["rope_type"] == "llama3"
    with pytest.raises(ConfigError, match="disagree"):
        load_config({**base, "rope_theta": 1.0, "rope_parameters": {"rope_theta": 2.0}})
