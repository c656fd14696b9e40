"""Safetensors reading and writing, one tensor at a time, with nothing unpickled.

The format (https://github.com/huggingface/safetensors, README "Format"):

    [8 bytes]  N, the header length, an unsigned little-endian 64-bit integer
    [N bytes]  a UTF-8 JSON object: {"TENSOR": {"dtype": "F32", "shape": [2, 3],
               "data_offsets": [BEGIN, END]}, ..., "__metadata__": {str: str}}
               (``__metadata__`` is optional)
    [rest]     the data section; BEGIN/END are byte offsets into it, relative
               to its start. All values are little-endian, rows in C order.

The reference library (``safetensors/src/tensor.rs``, ``validate``) also
requires that the tensors cover the data section exactly: sorted by offset,
each tensor starts where the previous one ended, the first at 0, the last
ending at the end of the file. :class:`SafetensorsFile` checks every one of
these rules when it opens a file, before any tensor is read, so a file that
lies about itself fails at once with a message that names the file, the
tensor and what was expected, instead of yielding garbage later.

Reading is lazy: opening reads only the header; :meth:`SafetensorsFile.get`
maps just the byte range of one tensor with ``numpy.memmap``, so a checkpoint
larger than RAM can be walked tensor by tensor.

Writing (:func:`write_safetensors`) is atomic: the bytes go to a temporary
file in the target's directory, which is flushed, fsync'ed and renamed over
the target, so a crash or an error leaves either the old file or the new one,
never half of one.

``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` / ``.pkl`` files are pickles (or zip
archives of pickles); :func:`refuse_pickle` rejects them with an explanation,
and nothing in this package ever unpickles anything.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from weights_io.errors import DTypeError, MissingTensorError, WeightsFormatError

__all__ = [
    "SAFETENSORS_DTYPES",
    "PICKLE_SUFFIXES",
    "SafetensorsFile",
    "Checkpoint",
    "open_checkpoint",
    "write_safetensors",
    "refuse_pickle",
    "bf16_bits_to_float32",
    "float32_to_bf16_bits",
]

# The safetensors dtype strings this package reads and writes, with the NumPy
# dtype of their raw little-endian storage. BF16 has no NumPy dtype: its raw
# storage is uint16 bits, and `get` decodes it to float32 (exactly).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# How a NumPy array's dtype is written; keyed by (kind, itemsize) so that
# either byte order of the input maps to the same (little-endian) storage.
_DTYPE_STRING_OF_NUMPY: dict[tuple[str, int], str] = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 8): "U64",
    ("u", 4): "U32",
    ("u", 2): "U16",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# The reference library refuses headers above 100 MB (MAX_HEADER_SIZE); a
# larger length is a corrupt file, and reading it would waste memory.
_MAX_HEADER_BYTES = 100_000_000

_PICKLE_ADVICE = (
    "refquant never unpickles files (unpickling runs arbitrary code); convert it "
    "to safetensors first, e.g. with transformers' save_pretrained(safe_serialization=True)"
)


# --------------------------------------------------------------------------
# bfloat16 <-> float32


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Decode bfloat16 bit patterns (uint16) into float32, exactly.

    bfloat16 is the top half of a float32, so ``float32 bits = bf16 bits << 16``;
    every bf16 value (NaN payloads, infinities, subnormals, -0.0 included) maps
    to the one float32 with those leading bits. Shape is kept.
    """
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise DTypeError(f"bf16_bits_to_float32 expects uint16 bit patterns, got {bits.dtype}")
    wide = bits.astype(np.uint32)
    np.left_shift(wide, np.uint32(16), out=wide)  # in place: a 0-d input stays a 0-d array
    return wide.view(np.float32)


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 and return the bit patterns (uint16).

    Rounding is to nearest, ties to even, on the 16 dropped mantissa bits:
    ``(u + 0x7FFF + ((u >> 16) & 1)) >> 16`` with ``u`` the float32 bits. This
    carries correctly into the exponent, so values beyond the largest bf16
    (about 3.3895e38) round to +-inf, and +-inf stay +-inf.
    Every NaN becomes the canonical quiet NaN 0x7FC0, as PyTorch's
    ``c10::BFloat16`` does (truncating a NaN could otherwise turn it into inf).
    Inputs of another float dtype are first converted to float32 (float64 is
    therefore rounded twice, as ``tensor.float().bfloat16()`` would do).
    """
    values = np.asarray(values)
    if values.dtype.kind != "f":
        raise DTypeError(f"float32_to_bf16_bits expects a float array, got {values.dtype}")
    x = np.array(values, dtype=np.float32, order="C", copy=None)  # keeps 0-d arrays 0-d
    is_nan = np.isnan(x)
    # NaNs are replaced before the addition so that the uint32 sum cannot wrap.
    u = np.where(is_nan, np.uint32(0), x.view(np.uint32)).astype(np.uint32)
    tie_to_even = (u >> np.uint32(16)) & np.uint32(1)
    rounded = ((u + np.uint32(0x7FFF) + tie_to_even) >> np.uint32(16)).astype(np.uint16)
    return np.where(is_nan, np.uint16(0x7FC0), rounded).astype(np.uint16).reshape(x.shape)


# --------------------------------------------------------------------------
# pickle refusal


def _starts_like_pickle_or_zip(head: bytes) -> bool:
    """True if ``head`` (a file's first bytes) is a pickle (protocol 2-5) or a zip archive.

    PyTorch's ``torch.save`` writes a zip archive (since 1.6) or a protocol-2
    pickle. A safetensors header length can begin with the same two bytes,
    but then byte 8 opens the JSON header with ``{``, which tells them apart.
    """
    is_zip = head[:4] == b"PK\x03\x04"
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    looks_like_safetensors = head[8:9] == b"{"
    return (is_zip or is_pickle) and not looks_like_safetensors


def _pickle_refusal(path: str, why: str) -> WeightsFormatError:
    return WeightsFormatError(f"{path}: refusing to load it ({why}). {_PICKLE_ADVICE}")


def refuse_pickle(path: str | os.PathLike) -> None:
    """Raise :class:`WeightsFormatError` if ``path`` is a pickle-based checkpoint.

    Refused: names ending in .bin, .pt, .pth, .ckpt, .pkl or .pickle (any case),
    and existing files whose first bytes are a pickle (0x80, protocol 2-5) or a
    zip archive (``PK\\x03\\x04``, PyTorch's format) whatever their name.
    The message says why and how to convert. Returns None for anything else.
    The file is never unpickled; at most its first 9 bytes are read.
    """
    path = os.fspath(path)
    if path.lower().endswith(PICKLE_SUFFIXES):
        suffix = os.path.splitext(path)[1]
        raise _pickle_refusal(path, f"a {suffix} file is a pickle-based PyTorch checkpoint")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(9)
        if _starts_like_pickle_or_zip(head):
            raise _pickle_refusal(path, "its first bytes are those of a pickle or a zip (PyTorch) archive")


# --------------------------------------------------------------------------
# header parsing and validation


@dataclass(frozen=True)
class _TensorEntry:
    """One validated header entry: where a tensor's bytes lie in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _describe(shape, dtype_string: str) -> str:
    return f"shape {list(shape)} {_friendly_dtype(dtype_string)}"


def _friendly_dtype(dtype_string: str) -> str:
    return "bfloat16" if dtype_string == "BF16" else SAFETENSORS_DTYPES[dtype_string].name


def _is_int(value) -> bool:
    # JSON true/false decode to bool, which is an int subclass; they are not sizes.
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _read_header(path: str) -> tuple[int, dict]:
    """Return (data section start, decoded header object); check length and JSON only."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsFormatError(
                f"{path}: truncated: the file has {file_size} bytes, fewer than the "
                f"8-byte header length that every safetensors file starts with"
            )
        header_length = int.from_bytes(head, "little")
        if header_length > file_size - 8:
            if _starts_like_pickle_or_zip(head + f.read(1)):
                raise _pickle_refusal(path, "it is a pickle or a zip (PyTorch) archive, not safetensors")
            raise WeightsFormatError(
                f"{path}: truncated or not safetensors: the header length field says "
                f"{header_length} bytes but only {file_size - 8} bytes follow it"
            )
        if header_length > _MAX_HEADER_BYTES:
            raise WeightsFormatError(
                f"{path}: header length {header_length} exceeds the safetensors limit of "
                f"{_MAX_HEADER_BYTES} bytes"
            )
        header_bytes = f.read(header_length)
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        if _starts_like_pickle_or_zip(head + header_bytes[:1]):
            raise _pickle_refusal(path, "it is a pickle or a zip (PyTorch) archive, not safetensors") from None
        raise WeightsFormatError(f"{path}: the {header_length}-byte header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WeightsFormatError(
            f"{path}: the header must be a JSON object (name -> tensor info), got {type(header).__name__}"
        )
    return 8 + header_length, header


def _validate_metadata(path: str, metadata) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise WeightsFormatError(
            f"{path}: __metadata__ must be a JSON object of str -> str, got {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise WeightsFormatError(
                f"{path}: __metadata__[{key!r}] must be a string, got {type(value).__name__} {value!r}"
            )
    return dict(metadata)


def _validate_entry(path: str, name: str, info, data_size: int) -> _TensorEntry:
    """Check one tensor's header entry on its own (not against its neighbours)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise WeightsFormatError(f"{where}: expected an object with dtype, shape, data_offsets, got {info!r}")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in info]
    if missing:
        raise WeightsFormatError(f"{where}: header entry lacks {', '.join(missing)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise WeightsFormatError(
            f"{where}: unsupported dtype {dtype!r}; supported: {', '.join(SAFETENSORS_DTYPES)}"
        )
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise WeightsFormatError(f"{where}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise WeightsFormatError(f"{where}: shape {shape} has a negative dimension")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise WeightsFormatError(f"{where}: data_offsets must be a pair of integers [begin, end], got {offsets!r}")
    begin, end = offsets
    if begin < 0 or end < 0:
        raise WeightsFormatError(f"{where}: data_offsets {offsets} are negative")
    if begin > end:
        raise WeightsFormatError(f"{where}: data_offsets {offsets} begin after they end")
    expected_bytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
    if end - begin != expected_bytes:
        raise WeightsFormatError(
            f"{where} declares {expected_bytes} bytes for {_describe(shape, dtype)} "
            f"but data_offsets {offsets} span {end - begin}"
        )
    if end > data_size:
        raise WeightsFormatError(
            f"{where}: truncated: data_offsets {offsets} end at byte {end} of the data section, "
            f"which has only {data_size} bytes"
        )
    return _TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_contiguous_cover(path: str, entries: dict[str, _TensorEntry], data_size: int) -> None:
    """Require that the tensors tile the data section [0, data_size) with no overlap and no gap."""
    position, previous = 0, None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < position:
            raise WeightsFormatError(
                f"{path}: tensor {name!r} (bytes {entry.begin}..{entry.end}) overlaps tensor "
                f"{previous!r}, which ends at byte {position}"
            )
        if entry.begin > position:
            after = f"after tensor {previous!r} " if previous is not None else "at the start "
            raise WeightsFormatError(
                f"{path}: the data section has a hole of {entry.begin - position} bytes {after}"
                f"(bytes {position}..{entry.begin}) before tensor {name!r}; safetensors requires "
                f"tensors to be stored contiguously"
            )
        position, previous = entry.end, name
    if position != data_size:
        raise WeightsFormatError(
            f"{path}: the data section has {data_size} bytes but its tensors cover only "
            f"{position}; {data_size - position} unexplained bytes follow the last tensor"
        )


def _close_names(name: str, names) -> str:
    names = list(names)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if close:
        return "close names: " + ", ".join(repr(c) for c in close)
    sample = ", ".join(repr(n) for n in sorted(names)[:5])
    return f"it holds {len(names)} tensors" + (f", e.g. {sample}" if names else "")


# --------------------------------------------------------------------------
# reading


class SafetensorsFile:
    """One .safetensors file, validated on open, read one tensor at a time.

    Opening reads and checks only the header (see the module docstring for the
    rules); no tensor data is read until :meth:`get` or :meth:`get_raw`, and
    then only that tensor's bytes are mapped. No file handle is kept open.

    Interface (shared with :class:`Checkpoint`): ``keys()``, ``in``, ``len``,
    iteration, ``shape(name)``, ``dtype(name)`` (the safetensors dtype string,
    e.g. ``"BF16"``), ``get(name, dtype=None)``, ``get_raw(name)``, ``metadata``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise WeightsFormatError(f"{self.path}: no such file")
        self._data_start, header = _read_header(self.path)
        data_size = os.path.getsize(self.path) - self._data_start
        metadata = header.pop("__metadata__", None)  # optional in the reference library: null means none
        self.metadata: dict[str, str] = {} if metadata is None else _validate_metadata(self.path, metadata)
        self._entries = {
            name: _validate_entry(self.path, name, info, data_size) for name, info in header.items()
        }
        _check_contiguous_cover(self.path, self._entries, data_size)

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self._entries)} tensors)"

    def keys(self) -> list[str]:
        """Tensor names in header order."""
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> _TensorEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise MissingTensorError(
                f"{self.path}: no tensor named {name!r}; {_close_names(name, self._entries)}"
            ) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> str:
        """The safetensors dtype string of ``name`` ("F32", "BF16", "I8", ...)."""
        return self._entry(name).dtype

    def get_raw(self, name: str) -> np.ndarray:
        """The stored values of ``name``, undecoded and read-only (BF16 -> uint16 bits).

        The array is a ``numpy.memmap`` of just this tensor's byte range (as a
        plain ndarray view), so only the pages actually touched are read.
        """
        entry = self._entry(name)
        storage = SAFETENSORS_DTYPES[entry.dtype]
        if entry.end == entry.begin:
            # mmap cannot map zero bytes; an empty tensor has nothing to read.
            empty = np.zeros(entry.shape, dtype=storage)
            empty.flags.writeable = False
            return empty
        try:
            mapped = np.memmap(
                self.path,
                dtype=storage,
                mode="r",
                offset=self._data_start + entry.begin,
                shape=(math.prod(entry.shape),),
            )
        except (ValueError, OSError) as exc:  # the file shrank since its header was read
            raise WeightsFormatError(f"{self.path}: tensor {name!r}: truncated since it was opened ({exc})") from None
        return mapped.view(np.ndarray).reshape(entry.shape)

    def get(self, name: str, dtype=None) -> np.ndarray:
        """The values of ``name`` as a NumPy array.

        BF16 is decoded exactly to float32 (:func:`bf16_bits_to_float32`); every
        other dtype comes back in its own NumPy dtype, little-endian, read-only
        and memory-mapped. With ``dtype`` given the result is converted with
        ``astype`` (a copy, unless it already has that dtype).
        """
        raw = self.get_raw(name)
        values = bf16_bits_to_float32(raw) if self.dtype(name) == "BF16" else raw
        if dtype is not None:
            values = values.astype(dtype, copy=False)
        return values


class Checkpoint:
    """Tensors spread over one or more safetensors files, with the same lazy interface.

    Made by :func:`open_checkpoint`. ``config_path`` is the config.json next to
    the weights, or None. ``metadata`` is the file's ``__metadata__`` for a
    single file and the index's ``metadata`` object for a sharded one.
    ``file_of(name)`` says which file holds a tensor.
    """

    def __init__(self, source: str, files_by_tensor: dict[str, SafetensorsFile],
                 config_path: str | None, metadata: Mapping):
        self.source = source
        self._files_by_tensor = files_by_tensor
        self.config_path = config_path
        self.metadata = dict(metadata)

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r}, {len(self._files_by_tensor)} tensors)"

    def keys(self) -> list[str]:
        return list(self._files_by_tensor)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files_by_tensor)

    def __len__(self) -> int:
        return len(self._files_by_tensor)

    def __contains__(self, name) -> bool:
        return name in self._files_by_tensor

    @property
    def files(self) -> list[str]:
        """Paths of the safetensors files, each once, in first-use order."""
        return list(dict.fromkeys(f.path for f in self._files_by_tensor.values()))

    def file_of(self, name: str) -> SafetensorsFile:
        try:
            return self._files_by_tensor[name]
        except KeyError:
            raise MissingTensorError(
                f"{self.source}: no tensor named {name!r}; {_close_names(name, self._files_by_tensor)}"
            ) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.file_of(name).shape(name)

    def dtype(self, name: str) -> str:
        return self.file_of(name).dtype(name)

    def get_raw(self, name: str) -> np.ndarray:
        return self.file_of(name).get_raw(name)

    def get(self, name: str, dtype=None) -> np.ndarray:
        return self.file_of(name).get(name, dtype=dtype)


INDEX_FILE_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"


def _sibling_config(directory: str) -> str | None:
    candidate = os.path.join(directory, "config.json")
    return candidate if os.path.isfile(candidate) else None


def _open_sharded(index_path: str) -> Checkpoint:
    """Open the shards named by a ``model.safetensors.index.json`` (HF's sharding index)."""
    directory = os.path.dirname(index_path) or "."
    try:
        with open(index_path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsFormatError(f"{index_path}: not valid UTF-8 JSON: {exc}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightsFormatError(
            f"{index_path}: expected an object with a 'weight_map' of tensor name -> shard file name"
        )
    shards: dict[str, SafetensorsFile] = {}
    files_by_tensor: dict[str, SafetensorsFile] = {}
    for tensor, shard_name in weight_map.items():
        # The index is data, not trusted: a shard must be a plain file name in this directory.
        if os.path.basename(shard_name) != shard_name or shard_name in ("", ".", ".."):
            raise WeightsFormatError(
                f"{index_path}: tensor {tensor!r} names shard {shard_name!r}, which is not a plain file name"
            )
        if shard_name not in shards:
            shard_path = os.path.join(directory, shard_name)
            refuse_pickle(shard_path)
            if not os.path.isfile(shard_path):
                raise WeightsFormatError(
                    f"{index_path}: tensor {tensor!r} is mapped to shard {shard_name!r}, which does not exist"
                )
            shards[shard_name] = SafetensorsFile(shard_path)
        shard = shards[shard_name]
        if tensor not in shard:
            raise WeightsFormatError(
                f"{index_path}: tensor {tensor!r} is mapped to shard {shard_name!r}, which does not contain it"
            )
        files_by_tensor[tensor] = shard
    metadata = index.get("metadata") or {}
    return Checkpoint(index_path, files_by_tensor, _sibling_config(directory),
                      metadata if isinstance(metadata, dict) else {})


def _open_files(source: str, paths: list[str], config_path: str | None) -> Checkpoint:
    """Union of unsharded files; a tensor name found in two files is an error."""
    files_by_tensor: dict[str, SafetensorsFile] = {}
    opened = [SafetensorsFile(p) for p in paths]
    for file in opened:
        for name in file.keys():
            if name in files_by_tensor:
                raise WeightsFormatError(
                    f"{source}: tensor {name!r} is in both {files_by_tensor[name].path} and {file.path}"
                )
            files_by_tensor[name] = file
    metadata = opened[0].metadata if len(opened) == 1 else {}
    return Checkpoint(source, files_by_tensor, config_path, metadata)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint directory or file for lazy, tensor-at-a-time reading.

    ``path`` may be:
    - a directory holding ``model.safetensors.index.json`` (sharded: each
      tensor is read from the shard its ``weight_map`` names; the index is
      authoritative, so shard tensors it does not name are not listed), else
      ``model.safetensors``, else any ``*.safetensors`` files (their union);
      ``config.json`` beside them becomes ``config_path``;
    - a ``.safetensors`` file or a ``*.index.json`` file (``config_path`` is a
      ``config.json`` in the same directory, if there is one).
    Pickle-based weights (``pytorch_model.bin`` and the like) are refused with
    :func:`refuse_pickle`'s message; nothing is unpickled.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _open_directory(path)
    if not os.path.exists(path):
        raise WeightsFormatError(f"{path}: no such file or directory")
    refuse_pickle(path)
    if path.endswith(".index.json"):
        return _open_sharded(path)
    return _open_files(path, [path], _sibling_config(os.path.dirname(path) or "."))


def _open_directory(directory: str) -> Checkpoint:
    config_path = _sibling_config(directory)
    index_path = os.path.join(directory, INDEX_FILE_NAME)
    if os.path.isfile(index_path):
        return _open_sharded(index_path)
    single = os.path.join(directory, SINGLE_FILE_NAME)
    if os.path.isfile(single):
        return _open_files(directory, [single], config_path)
    names = sorted(os.listdir(directory))
    safetensors_paths = [os.path.join(directory, n) for n in names if n.endswith(".safetensors")]
    if safetensors_paths:
        return _open_files(directory, safetensors_paths, config_path)
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        refuse_pickle(os.path.join(directory, pickles[0]))
    raise WeightsFormatError(
        f"{directory}: no weights found: expected {SINGLE_FILE_NAME}, or {INDEX_FILE_NAME} "
        f"with its shards, or some other *.safetensors file"
    )


# --------------------------------------------------------------------------
# writing


def _storage_of(name: str, value, store_as: str | None) -> tuple[str, np.ndarray]:
    """Return (safetensors dtype string, array to convert on write) for one tensor.

    Raises DTypeError, naming the tensor, for dtypes safetensors cannot hold.
    ``store_as="BF16"`` takes float input (rounded to nearest even) or uint16
    input (taken as bf16 bit patterns, as ``get_raw`` returns them).
    """
    array = np.asarray(value)
    if store_as is not None:
        if store_as != "BF16":
            raise DTypeError(
                f"tensor {name!r}: dtypes may only ask for 'BF16' (got {store_as!r}); "
                f"cast other tensors with astype before writing"
            )
        if array.dtype.kind != "f" and array.dtype != np.uint16:
            raise DTypeError(f"tensor {name!r}: BF16 needs float values or uint16 bf16 bits, got {array.dtype}")
        return "BF16", array
    dtype_string = _DTYPE_STRING_OF_NUMPY.get((array.dtype.kind, array.dtype.itemsize))
    if dtype_string is None:
        raise DTypeError(
            f"tensor {name!r}: dtype {array.dtype} cannot be stored in safetensors; supported: "
            f"{', '.join(sorted({str(SAFETENSORS_DTYPES[s].name) for s in _DTYPE_STRING_OF_NUMPY.values()}))}"
            f" and bfloat16 via dtypes={{name: 'BF16'}}"
        )
    return dtype_string, array


def _storage_bytes(dtype_string: str, array: np.ndarray) -> np.ndarray:
    """The little-endian, C-contiguous bytes of ``array`` stored as ``dtype_string`` (uint8, 1-D)."""
    if dtype_string == "BF16":
        stored = array if array.dtype == np.uint16 else float32_to_bf16_bits(array)
    else:
        stored = array
    stored = np.ascontiguousarray(stored, dtype=SAFETENSORS_DTYPES[dtype_string])
    return stored.reshape(-1).view(np.uint8)


def _header_bytes(layout: list[tuple[str, str, tuple, int, int]], metadata: dict | None) -> bytes:
    """The JSON header, padded with spaces so that the data section starts 8-byte aligned.

    Padding to a multiple of 8 is what the reference library writes; readers
    accept trailing whitespace because it is JSON.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype_string, shape, begin, end in layout:
        header[name] = {"dtype": dtype_string, "shape": list(shape), "data_offsets": [begin, end]}
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return encoded + b" " * (-len(encoded) % 8)


def fsync_path(path: str) -> None:
    """fsync a file, or a directory (which makes a rename in it durable); best effort: some
    platforms cannot open a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """The mode a newly created file gets here (0o666 less the umask), as open() would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write a file whole or not at all: ``write(f)`` fills a temporary file (binary) in the same
    directory, which is flushed, fsync'ed and renamed over ``path``; on any error (Ctrl-C
    included) the temporary file is removed and an existing ``path`` is left untouched. The file
    keeps an existing file's mode, else gets the mode a new file gets (not mkstemp's 0600), so
    every output refquant writes has the same mode."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else new_file_mode())
        with os.fdopen(fd, "wb") as f:
            fd = -1  # now owned (and closed) by f
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    fsync_path(directory)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None, *,
                      dtypes: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` as a safetensors file, atomically.

    - Tensors are stored sorted by name, contiguously, little-endian, C order
      (non-contiguous or big-endian inputs are converted, not refused).
    - Supported NumPy dtypes: float64/32/16, int64/32/16/8, uint64/32/16/8,
      bool. ``dtypes={"name": "BF16"}`` stores that tensor as bfloat16: float
      input is rounded to nearest even (:func:`float32_to_bf16_bits`), uint16
      input is taken as bf16 bit patterns. Anything else (object, complex,
      strings...) raises DTypeError naming the tensor, before any file is made.
    - ``metadata`` becomes ``__metadata__`` (str -> str only).
    - The header is padded with spaces to a multiple of 8 bytes.
    - Atomic (:func:`atomic_write`): whole or not at all, the usual file mode.
    """
    path = os.fspath(path)
    dtypes = dict(dtypes or {})
    unknown = sorted(set(dtypes) - set(tensors))
    if unknown:
        raise DTypeError(f"{path}: dtypes names tensors that are not being written: {unknown}")
    if metadata is not None:
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise WeightsFormatError(f"{path}: safetensors metadata must map str to str; bad entries: {bad!r}")
        metadata = dict(metadata)

    layout, arrays, position = [], [], 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise WeightsFormatError(f"{path}: invalid tensor name {name!r}")
        dtype_string, array = _storage_of(name, tensors[name], dtypes.get(name))
        nbytes = array.size * SAFETENSORS_DTYPES[dtype_string].itemsize
        layout.append((name, dtype_string, array.shape, position, position + nbytes))
        arrays.append((dtype_string, array))
        position += nbytes
    header = _header_bytes(layout, metadata)

    def write(f):
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for dtype_string, array in arrays:
            f.write(_storage_bytes(dtype_string, array))

    atomic_write(path, write)
