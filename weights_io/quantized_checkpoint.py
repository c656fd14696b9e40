"""Quantized checkpoints in compressed-tensors' layout: tensor names, shapes and dtypes, the
compressed-tensors part of ``quantization_config``, and an all-or-nothing directory write.

This is the I/O half of :mod:`refquant.checkpoint` (which maps a QuantizedModel onto it); like
the rest of weights_io it never imports refquant. The facts it follows are those of
vllm-project/compressed-tensors (0.20; docs/stacks.md section 4):

- ``config.json`` -> ``quantization_config``: ``quant_method: "compressed-tensors"``,
  ``format``, ``config_groups`` {name: {targets, weights, input_activations, format}},
  ``ignore``. Its QuantizationConfig ignores unknown keys (``extra="ignore"``), so a
  ``refquant`` entry next to them is invisible to compressed-tensors.
- per quantized module ``M`` (a HF module path):
  ``M.weight`` int8 [out, in] (formats int-quantized / naive-quantized), or
  ``M.weight_packed`` int32 [out, ceil(in * b / 32)] + ``M.weight_shape`` int64 [2]
  (pack-quantized: offset binary, LSB first, weights_io.int4.pack_compressed_tensors);
  ``M.weight_scale`` float32 of shape (1,) tensor, (out, 1) channel, (out, ceil(in / g))
  group; ``M.weight_zero_point`` only for asymmetric weights (int8, same shape as the
  scale; pack-quantized group/channel zero points are packed along dim 0);
  ``M.input_scale`` float32 (1,) for static per-tensor activations (none for dynamic ones).
- symmetric zero points are not written (compressed-tensors drops them on compression).

Readers check every tensor they take (present, dtype, shape) and raise weights_io errors
naming the file and the tensor.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from weights_io.errors import ConfigError, DTypeError, MissingTensorError, OutOfRangeError, ShapeError, \
    WeightsFormatError
from weights_io.safetensors_io import fsync_path
from weights_io.int4 import compressed_tensors_packed_shape, pack_compressed_tensors, unpack_compressed_tensors
from weights_io.safetensors_io import write_safetensors

__all__ = [
    "QUANT_METHOD", "CT_STRATEGIES", "WEIGHT_STRATEGIES", "INPUT_STRATEGIES", "FORMAT_INT", "FORMAT_PACK",
    "FORMAT_NAIVE", "FORMAT_MIXED", "QPARAM_SUFFIXES", "CONFIG_FILE", "WEIGHTS_FILE", "TOKENIZER_FILES",
    "format_for_bits", "ct_scale_shape", "pack_weight", "read_tensor", "read_weight_values",
    "read_zero_point", "check_range", "check_quantization_args", "parse_quantization_config", "read_config",
    "module_schemes", "write_checkpoint_directory", "is_refquant_checkpoint",
]

QUANT_METHOD = "compressed-tensors"
# QuantizationStrategy values (quant_args.py)
CT_STRATEGIES = ("tensor", "channel", "group", "block", "token", "tensor_group", "attn_head")
WEIGHT_STRATEGIES = ("tensor", "channel", "group")      # the ones read here
INPUT_STRATEGIES = ("tensor", "token")
FORMAT_INT = "int-quantized"        # int8 `weight` (the same compressor as naive-quantized)
FORMAT_NAIVE = "naive-quantized"
FORMAT_PACK = "pack-quantized"      # sub-8-bit values packed in int32 words
FORMAT_MIXED = "mixed-precision"    # the top-level format when config groups differ
CT_FORMATS = (FORMAT_INT, FORMAT_NAIVE, FORMAT_PACK)
# parameter names that are quantization state, not weights (compressed-tensors' and refquant's)
QPARAM_SUFFIXES = ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight_g_idx",
                   "weight_global_scale", "input_scale", "input_zero_point", "input_global_scale",
                   "output_scale", "output_zero_point", "weight_multiplier", "weight_offset",
                   "input_multiplier", "input_offset")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# copied from the float checkpoint's directory when present (tokenizer.json is what refquant reads)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model")

_ARGS_FIELDS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic",
                "actorder", "scale_dtype", "zp_dtype", "observer", "observer_kwargs"}


def format_for_bits(bits: int) -> str:
    """int-quantized for 8-bit weights (an int8 ``weight``), pack-quantized below 8 bits."""
    return FORMAT_INT if bits == 8 else FORMAT_PACK


def ct_scale_shape(strategy: str, weight_shape, group_size: int | None = None) -> tuple[int, ...]:
    """Shape of ``weight_scale`` (and an unpacked ``weight_zero_point``) for a 2-D weight."""
    out, cols = (int(d) for d in weight_shape)
    if strategy == "tensor":
        return (1,)
    if strategy == "channel":
        return (out, 1)
    if strategy == "group":
        return (out, math.ceil(cols / group_size))
    raise ConfigError(f"strategy {strategy!r}: no weight scale layout here (supported: {', '.join(WEIGHT_STRATEGIES)})")


def pack_weight(values: np.ndarray, num_bits: int) -> dict[str, np.ndarray]:
    """``weight_packed`` (int32) and ``weight_shape`` (int64) for signed ``num_bits``-bit values."""
    values = np.asarray(values)
    return {"weight_packed": pack_compressed_tensors(values, num_bits),
            "weight_shape": np.asarray(values.shape, dtype=np.int64)}


# ---------------------------------------------------------------------------------------
# reading tensors
# ---------------------------------------------------------------------------------------
def _file_of(ckpt, name: str) -> str:
    try:
        return ckpt.file_of(name).path
    except (AttributeError, MissingTensorError):
        return getattr(ckpt, "source", None) or getattr(ckpt, "path", None) or repr(ckpt)


def read_tensor(ckpt, name: str, dtypes, shape=None, what: str = "") -> np.ndarray:
    """Tensor ``name`` of ``ckpt`` (a Checkpoint or SafetensorsFile), checked: it must exist,
    have one of the safetensors ``dtypes`` ("I8", "F32", ...) and, if given, ``shape``.
    Returns an in-memory copy (not a memory map)."""
    where = f" ({what})" if what else ""
    if name not in ckpt:
        source = getattr(ckpt, "source", None) or getattr(ckpt, "path", None) or repr(ckpt)
        raise MissingTensorError(f"{source}: no tensor {name!r}{where}; a quantized checkpoint needs it")
    path = _file_of(ckpt, name)
    dtype = ckpt.dtype(name)
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    if dtype not in dtypes:
        raise DTypeError(f"{path}: tensor {name!r}{where} is {dtype}, expected {' or '.join(dtypes)}")
    got = tuple(ckpt.shape(name))
    if shape is not None and got != tuple(shape):
        raise ShapeError(f"{path}: tensor {name!r}{where} has shape {list(got)}, expected {list(shape)}")
    return np.array(ckpt.get(name))


def read_weight_values(ckpt, module: str, num_bits: int, signed: bool = True) -> tuple[np.ndarray, list[str]]:
    """The integer weight values of ``module`` and the tensor names read.

    8 bits: ``module.weight`` (int8; uint8 for unsigned values, a refquant extension).
    Fewer: ``module.weight_packed`` + ``module.weight_shape`` (pack-quantized), unpacked to int8
    (unsigned values were stored offset by -2^(b-1) and are returned as uint8).
    """
    if num_bits == 8:
        name = f"{module}.weight"
        values = read_tensor(ckpt, name, "I8" if signed else "U8", what="8-bit quantized weight")
        if values.ndim != 2:
            raise ShapeError(f"{_file_of(ckpt, name)}: tensor {name!r} has shape {list(values.shape)}, "
                             "expected a 2-D [out, in] weight")
        return values, [name]
    shape_name, packed_name = f"{module}.weight_shape", f"{module}.weight_packed"
    shape = read_tensor(ckpt, shape_name, ("I64", "I32"), (2,), what="original weight shape")
    if np.any(shape < 0):
        raise ShapeError(f"{_file_of(ckpt, shape_name)}: tensor {shape_name!r} holds a negative size {shape.tolist()}")
    expected = compressed_tensors_packed_shape(tuple(int(d) for d in shape), num_bits)
    packed = read_tensor(ckpt, packed_name, "I32", expected, what=f"{num_bits}-bit packed weight")
    values = unpack_compressed_tensors(packed, tuple(int(d) for d in shape), num_bits)
    if not signed:
        values = (values.astype(np.int16) + (1 << (num_bits - 1))).astype(np.uint8)
    return values, [shape_name, packed_name]


def read_zero_point(ckpt, name: str, shape, num_bits: int, packed: bool) -> np.ndarray:
    """A weight zero point: int8 or int32 of ``shape``, or (``packed``) int32 words packed along
    dim 0 in pack-quantized's layout, unpacked to ``shape``."""
    if not packed:
        return read_tensor(ckpt, name, ("I8", "I32"), shape, what="zero point").astype(np.int32)
    words = compressed_tensors_packed_shape(shape, num_bits, axis=0)
    raw = read_tensor(ckpt, name, "I32", words, what=f"zero point packed along dim 0 ({num_bits}-bit)")
    return unpack_compressed_tensors(raw, tuple(shape), num_bits, axis=0).astype(np.int32)


def check_range(values: np.ndarray, low: int, high: int, path: str, name: str) -> None:
    """OutOfRangeError naming the tensor if a value lies outside [low, high]."""
    if values.size and (values.min() < low or values.max() > high):
        bad = values[(values < low) | (values > high)].reshape(-1)[0]
        raise OutOfRangeError(f"{path}: tensor {name!r} holds {int(bad)}, outside the quantized range "
                              f"[{low}, {high}] of its spec")


# ---------------------------------------------------------------------------------------
# quantization_config
# ---------------------------------------------------------------------------------------
def check_quantization_args(args, where: str, kind: str) -> dict:
    """Validate one QuantizationArgs object (``kind`` "weights" or "input_activations") as far as
    refquant reads it; returns it with defaults filled (type int, symmetric True, dynamic False)."""
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: expected an object of QuantizationArgs, got {type(args).__name__}")
    unknown = sorted(set(args) - _ARGS_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown QuantizationArgs field(s) {', '.join(map(repr, unknown))}")
    out = {"num_bits": args.get("num_bits", 8), "type": args.get("type", "int"),
           "symmetric": args.get("symmetric", True), "strategy": args.get("strategy"),
           "group_size": args.get("group_size"), "dynamic": args.get("dynamic", False)}
    bits = out["num_bits"]
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ConfigError(f"{where}: num_bits must be an integer in 1..8 for integer quantization, got {bits!r}")
    if out["type"] != "int":
        raise ConfigError(f"{where}: type {out['type']!r} is not supported (refquant checkpoints are 'int')")
    if not isinstance(out["symmetric"], bool):
        raise ConfigError(f"{where}: symmetric must be true or false, got {out['symmetric']!r}")
    if out["strategy"] is None:  # compressed-tensors' inference from group_size
        g = out["group_size"]
        out["strategy"] = "tensor" if g is None else ("channel" if g == -1 else "group")
    strategy = out["strategy"]
    if strategy not in CT_STRATEGIES:
        raise ConfigError(f"{where}: unknown strategy {strategy!r}; compressed-tensors' strategies are "
                          f"{', '.join(CT_STRATEGIES)}")
    allowed = WEIGHT_STRATEGIES if kind == "weights" else INPUT_STRATEGIES
    if strategy not in allowed:
        raise ConfigError(f"{where}: strategy {strategy!r} is not supported for {kind} here "
                          f"(supported: {', '.join(allowed)})")
    if strategy == "group":
        g = out["group_size"]
        if not isinstance(g, int) or isinstance(g, bool) or g <= 0:
            raise ConfigError(f"{where}: strategy 'group' needs a positive integer group_size, got {g!r}")
    if out["dynamic"] not in (True, False):
        raise ConfigError(f"{where}: dynamic must be true or false here, got {out['dynamic']!r}")
    if kind == "weights" and out["dynamic"]:
        raise ConfigError(f"{where}: dynamic weights are not a stored checkpoint")
    if strategy == "token" and not out["dynamic"]:
        raise ConfigError(f"{where}: strategy 'token' requires dynamic: true (compressed-tensors refuses "
                          "static per-token quantization)")
    return out


def parse_quantization_config(config: dict, source: str) -> dict:
    """The validated ``quantization_config`` of a decoded config.json (``source`` names it in
    errors): quant_method, format, config_groups (each with targets, weights or
    input_activations), ignore."""
    qc = config.get("quantization_config")
    if qc is None:
        raise ConfigError(f"{source}: no 'quantization_config': not a quantized checkpoint")
    if not isinstance(qc, dict):
        raise ConfigError(f"{source}: quantization_config must be an object, got {type(qc).__name__}")
    if qc.get("quant_method") != QUANT_METHOD:
        raise ConfigError(f"{source}: quantization_config.quant_method is {qc.get('quant_method')!r}, "
                          f"expected {QUANT_METHOD!r}")
    groups = qc.get("config_groups")
    if not isinstance(groups, dict):
        raise ConfigError(f"{source}: quantization_config.config_groups must be an object of groups")
    top = qc.get("format")
    for gname, group in groups.items():
        where = f"{source}: quantization_config.config_groups.{gname}"
        if not isinstance(group, dict):
            raise ConfigError(f"{where}: expected a QuantizationScheme object, got {type(group).__name__}")
        targets = group.get("targets")
        if not (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
            raise ConfigError(f"{where}: targets must be a non-empty list of module names")
        for kind in ("weights", "input_activations"):
            if group.get(kind) is not None:
                group[kind] = check_quantization_args(group[kind], f"{where}.{kind}", kind)
        if group.get("output_activations") is not None:
            raise ConfigError(f"{where}: output_activations are not supported")
        fmt = group.get("format") or top
        if group.get("weights") is not None and fmt not in CT_FORMATS:
            raise ConfigError(f"{where}: format {fmt!r} is not one this reader knows "
                              f"({', '.join(CT_FORMATS)})")
    ignore = qc.get("ignore", [])
    if not (isinstance(ignore, list) and all(isinstance(i, str) for i in ignore)):
        raise ConfigError(f"{source}: quantization_config.ignore must be a list of module names")
    return qc


def module_schemes(qc: dict, source: str) -> dict[str, tuple[str, dict]]:
    """{module name: (group name, scheme)} from config_groups; the targets must be plain module
    names (as refquant writes them), each in one group only."""
    out: dict[str, tuple[str, dict]] = {}
    for gname, group in qc["config_groups"].items():
        for target in group["targets"]:
            if target.startswith("re:") or target in ("Linear", "Embedding"):
                raise ConfigError(f"{source}: config_groups.{gname} targets {target!r}; refquant reads "
                                  "checkpoints whose targets are module names")
            if target in out:
                raise ConfigError(f"{source}: module {target!r} is a target of both config_groups."
                                  f"{out[target][0]} and config_groups.{gname}")
            out[target] = (gname, group)
    return out


def read_config(directory) -> tuple[dict, str]:
    """(decoded config.json, its path) of a checkpoint directory."""
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    if not os.path.isdir(os.fspath(directory)):
        raise WeightsFormatError(f"{os.fspath(directory)}: not a directory (a quantized checkpoint is a "
                                 f"directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: missing; a quantized checkpoint directory needs its config.json")
    try:
        with open(path, "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid UTF-8 JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return config, path


def is_refquant_checkpoint(directory, key: str = "refquant") -> bool:
    """True if ``directory`` holds a config.json whose quantization_config has ``key``."""
    try:
        config, _ = read_config(directory)
    except (ConfigError, WeightsFormatError):
        return False
    qc = config.get("quantization_config")
    return isinstance(qc, dict) and isinstance(qc.get(key), dict)


# ---------------------------------------------------------------------------------------
# writing a directory, all or nothing
# ---------------------------------------------------------------------------------------
def write_checkpoint_directory(directory, config: dict, tensors: dict, *, dtypes: dict | None = None,
                               copy_files=(), replace_if=None) -> Path:
    """Write ``directory`` (config.json, model.safetensors, copies of ``copy_files``) so that it
    appears complete or not at all.

    Everything is written into a fresh temporary directory beside the target (each file atomic
    and fsync'ed), which is then renamed onto ``directory``. An existing empty directory is
    replaced; an existing non-empty one only if ``replace_if(directory)`` says so (the old one
    is moved aside, the new one renamed in, the old one deleted); otherwise ConfigError and
    nothing is touched. On any error the temporary directory is removed.
    """
    target = Path(os.fspath(directory)).absolute()
    if target.exists():
        if not target.is_dir():
            raise ConfigError(f"{target}: exists and is not a directory; refusing to replace it")
        if any(target.iterdir()) and not (replace_if and replace_if(target)):
            raise ConfigError(f"{target}: exists and is not empty (nor a refquant quantized checkpoint); "
                              "refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        config_bytes = (json.dumps(config, indent=2, allow_nan=False) + "\n").encode("utf-8")
        with open(tmp / CONFIG_FILE, "wb") as f:
            f.write(config_bytes)
            f.flush()
            os.fsync(f.fileno())
        write_safetensors(tmp / WEIGHTS_FILE, tensors, metadata={"format": "pt"}, dtypes=dtypes)
        for src in copy_files:
            dst = tmp / Path(src).name
            shutil.copyfile(src, dst)
            fsync_path(str(dst))
        fsync_path(str(tmp))
        if target.exists() and any(target.iterdir()):
            old = Path(f"{tmp}.old")
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)  # an empty directory is replaced
        fsync_path(str(target.parent))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
