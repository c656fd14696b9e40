"""Save a QuantizedModel as a compressed-tensors-style checkpoint directory, and load it back
exactly.

``save_quantized(qm, directory)`` writes

    directory/config.json        the float model's config.json plus ``quantization_config``
    directory/model.safetensors  integer weights, scales, static input scales, float tensors
    directory/tokenizer.json     (and the other tokenizer files) copied from the float checkpoint

``load_quantized(directory)`` returns a QuantizedModel whose quantized sites hold the same
bytes (weight_q, scales, zero points, multipliers, offsets, input ranges) and whose forward gives
the same bytes as the model that was saved.

The layout is compressed-tensors' (weights_io.quantized_checkpoint): per quantized module M
(the float checkpoint's own HF module name) ``M.weight`` int8 [out, in] for 8-bit weights
(format "int-quantized"), or ``M.weight_packed`` int32 + ``M.weight_shape`` for fewer bits
("pack-quantized"); ``M.weight_scale`` float32 (1,) / (out, 1) / (out, ceil(in / g)) for
strategy tensor / channel / group; ``M.weight_zero_point`` for asymmetric weights only;
``M.input_scale`` float32 (1,) for static activations. Biases stay float (the int32 bias of
Q8BERT-style recipes is derived at run time); float tensors keep the source checkpoint's names
and dtypes (their bytes are copied).

What compressed-tensors cannot express is kept in ``quantization_config.refquant`` (which
compressed-tensors ignores) and in tensors with refquant's own names:
- the recipe: its name, the options that rebuild it with refquant.recipe (null for a custom
  recipe), and every rule with each QuantSpec in full (dataclasses.asdict, dialect included);
- ``M.weight_multiplier`` / ``M.input_multiplier`` (float32, the scale's shape) for
  mapping="multiplier" specs (NVIDIA, Q8BERT quantize x * d/amax and dequantize q / (d/amax));
- ``M.weight_offset`` / ``M.input_offset`` for DeepSpeed's float zero point;
- ZeroQuant's row-block groups (num_groups blocks of whole output rows), which are not a
  compressed-tensors strategy: the config group says strategy "channel" and weight_scale holds
  each row's block scale (out, 1), which dequantizes to the same values; refquant takes the
  num_groups block scales back (and checks that the rows of a block agree);
- each static site's calibrated input_amax, the sites calibration never reached
  (``uncalibrated``), and the HF module name of every site.

GPT-2: refquant holds the Conv1D weights (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
transposed to [out, in]. Quantized ones are written [out, in], as nn.Linear (weight_shape says
[out, in]): compressed-tensors 0.20 compresses only nn.Linear and nn.Embedding modules
(COMPRESSIBLE_MODULE_TYPES), and its channel / group scales index an [out, in] weight; a
compressed-tensors checkpoint of a GPT-2 Conv1D therefore has no established layout, and this
one is the Linear layout. Float Conv1D weights keep HF's [in, out].

The directory appears complete or not at all (weights_io.quantized_checkpoint
.write_checkpoint_directory): an existing refquant quantized checkpoint there is replaced,
anything else non-empty is refused.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np

import weights_io.quantized_checkpoint as qio
from weights_io import load_config, open_checkpoint
from weights_io.errors import ConfigError, MissingTensorError, RefquantError, WeightsFormatError
from weights_io.int4 import pack_compressed_tensors
from weights_io.names import RefquantWeights, is_transposed_conv1d_weight, refquant_to_hf

from .models import FAMILIES
from .models.base import load_tokenizer
from .quant import QParams, dequantize, per_output_row, row_block_rows
from .quantized import QuantizedModel, QuantizedSite
from .recipes import RECIPES, Recipe, SiteRule, recipe as named_recipe
from .spec import QuantSpec

FORMAT_VERSION = 1
REFQUANT_KEY = "refquant"
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

__all__ = ["save_quantized", "load_quantized", "FORMAT_VERSION"]


# ---------------------------------------------------------------------------------------
# specs, rules, recipes <-> JSON
# ---------------------------------------------------------------------------------------
def _spec_from(d, where: str):
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a QuantSpec object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(QuantSpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown QuantSpec field(s) {', '.join(map(repr, unknown))}")
    try:
        return QuantSpec(**d)
    except RefquantError as e:
        raise ConfigError(f"{where}: {e}") from None


_TAGGED = {"SiteRule": SiteRule, "Recipe": Recipe}


def _encode(v):
    """JSON for a Recipe / SiteRule / QuantSpec, field by field (whatever fields they have), with
    tuples and frozensets tagged so that they come back as such."""
    if isinstance(v, QuantSpec):
        return {"QuantSpec": dataclasses.asdict(v)}
    for tag, cls in _TAGGED.items():
        if isinstance(v, cls):
            return {tag: {f.name: _encode(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, frozenset):
        return {"frozenset": sorted((_encode(x) for x in v), key=repr)}
    if isinstance(v, tuple):
        return {"tuple": [_encode(x) for x in v]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ConfigError(f"save_quantized: cannot write a {type(v).__name__} ({v!r}) of the recipe")


def _decode(v, where: str):
    if isinstance(v, dict) and len(v) == 1:
        (tag, body), = v.items()
        if tag == "QuantSpec":
            return _spec_from(body, where)
        if tag in ("tuple", "frozenset") and isinstance(body, list):
            items = [_decode(x, f"{where}[{i}]") for i, x in enumerate(body)]
            return tuple(items) if tag == "tuple" else frozenset(items)
        if tag in _TAGGED and isinstance(body, dict):
            cls = _TAGGED[tag]
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(body) - known)
            if unknown:
                raise ConfigError(f"{where}: unknown {tag} field(s) {', '.join(map(repr, unknown))}")
            try:
                return cls(**{k: _decode(x, f"{where}.{k}") for k, x in body.items()})
            except (TypeError, ValueError, RefquantError) as e:
                raise ConfigError(f"{where}: {e}") from None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ConfigError(f"{where}: unexpected value {v!r}")


def _recipe_json(rec: Recipe) -> dict:
    return _encode(rec)


def _recipe_from(d, where: str) -> Recipe:
    rec = _decode(d, where)
    if not isinstance(rec, Recipe):
        raise ConfigError(f"{where}: expected a {{\"Recipe\": {{...}}}} object")
    return rec


def _recipe_options(rec: Recipe):
    """Options with which refquant.recipe(rec.name, **options) rebuilds ``rec``, or None."""
    if rec.name not in RECIPES:
        return None
    rules = [r for r in (rec.attention, rec.ffn, rec.head) if r is not None]
    opts = {"quantize_embeddings": rec.embeddings is not None, "gelu10": rec.gelu10,
            "float_sites": sorted(rec.float_sites)}
    if rules:
        opts["bias"] = rules[0].bias
    if rec.name.startswith("zeroquant-") and rec.ffn is not None and rec.ffn.weight is not None:
        opts["num_groups"] = rec.ffn.weight.num_groups
    if rec.name == "nvidia-ptq-percentile" and rules:
        opts["percentile"] = dict(rules[0].calib_options).get("percentile")
    try:
        return opts if named_recipe(rec.name, **opts) == rec else None
    except RefquantError:
        return None


# ---------------------------------------------------------------------------------------
# refquant parameters <-> compressed-tensors tensors
# ---------------------------------------------------------------------------------------
def _ct_weight_layout(spec: QuantSpec, shape, what: str) -> tuple[str, int | None]:
    """(compressed-tensors strategy, group_size) storing ``spec``'s parameters of a 2-D weight."""
    if len(shape) != 2:
        raise ConfigError(f"{what}: only 2-D weights are stored, got shape {list(shape)}")
    g = spec.granularity
    if g == "tensor":
        return "tensor", None
    if g == "channel" and (0 if spec.axis is None else spec.axis) % 2 == 0:
        return "channel", None
    if g == "group" and spec.group_kind == "input" and (-1 if spec.axis is None else spec.axis) % 2 == 1:
        return "group", spec.group_size
    if g == "group" and spec.group_kind == "rows":
        row_block_rows(shape, spec, what)  # whole output rows, or refused: stored as per-row scales
        return "channel", None
    raise ConfigError(f"{what}: {spec.describe()} has no compressed-tensors weight layout "
                      "(tensor, channel along the output rows, groups along the input)")


def _ct_weight_args(spec: QuantSpec, shape, what: str) -> dict:
    strategy, group_size = _ct_weight_layout(spec, shape, what)
    return {"num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric, "strategy": strategy,
            "group_size": group_size, "dynamic": False}


def _ct_input_args(spec: QuantSpec, what: str) -> dict:
    if spec.granularity not in ("tensor", "token"):
        raise ConfigError(f"{what}: input granularity {spec.granularity!r} has no compressed-tensors "
                          "strategy here (tensor or token)")
    return {"num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric, "strategy": spec.granularity,
            "dynamic": bool(spec.dynamic)}


def _to_file(param: np.ndarray, spec: QuantSpec, shape) -> np.ndarray:
    """A natural-shape parameter (refquant.quant) in compressed-tensors' shape."""
    param = np.asarray(param)
    if shape is None or spec.granularity == "tensor":
        return param.reshape(1)
    if spec.granularity == "channel":
        return param.reshape(-1, 1)
    if spec.group_kind == "rows":
        return per_output_row(param, shape, spec).reshape(-1, 1)
    return param


def _from_file(arr: np.ndarray, spec: QuantSpec, shape, path: str, name: str) -> np.ndarray:
    """Inverse of _to_file; row-block parameters must repeat within each block."""
    if shape is None or spec.granularity == "tensor":
        return arr.reshape(())
    if spec.granularity == "channel":
        return arr.reshape(-1)
    if spec.group_kind == "rows":
        block = row_block_rows(shape, spec, name)
        flat = arr.reshape(-1)
        blocks = flat[::block].copy()
        if not np.array_equal(np.repeat(blocks, block).view(np.uint8), flat.view(np.uint8)):
            raise WeightsFormatError(f"{path}: tensor {name!r}: the per-row values of a row-block group "
                                     f"({spec.num_groups} blocks of {block} rows) differ within a block")
        return blocks
    return arr


def _symmetric_zero_point(spec: QuantSpec) -> int:
    return 0 if spec.signed or spec.unsigned_symmetric == "nonnegative" else 2 ** (spec.bits - 1)


def _packs_zero_point(spec: QuantSpec, strategy: str, base: str) -> bool:
    return (base == "weight" and spec.bits < 8 and spec.signed and spec.zero_point_add != "float_offset"
            and strategy in ("group", "channel"))


def _write_qparams(tensors: dict, module: str, base: str, qp: QParams, shape, strategy: str) -> None:
    """``base``_scale (and _zero_point, _multiplier, _offset where the spec has them)."""
    spec = qp.spec
    tensors[f"{module}.{base}_scale"] = _to_file(qp.scale, spec, shape).astype(np.float32)
    if not spec.symmetric:
        zp = _to_file(qp.zero_point, spec, shape)
        if _packs_zero_point(spec, strategy, base):
            zp = pack_compressed_tensors(zp.astype(np.int8), spec.bits, axis=0)
        elif spec.signed and spec.zero_point_add != "float_offset":
            zp = zp.astype(np.int8)
        else:
            zp = zp.astype(np.int32)
        tensors[f"{module}.{base}_zero_point"] = zp
    if qp.multiplier is not None:
        tensors[f"{module}.{base}_multiplier"] = _to_file(qp.multiplier, spec, shape).astype(np.float32)
    if qp.offset is not None:
        tensors[f"{module}.{base}_offset"] = _to_file(qp.offset, spec, shape).astype(np.float32)


def _read_qparams(ckpt, module: str, base: str, spec: QuantSpec, shape, consumed: set) -> QParams:
    path = getattr(ckpt, "source", str(ckpt))
    if base == "weight":
        strategy, group_size = _ct_weight_layout(spec, shape, f"{path}: {module}")
        fshape = qio.ct_scale_shape(strategy, shape, group_size)
    else:
        strategy, fshape = "tensor", (1,)

    def take(suffix, dtypes, what):
        name = f"{module}.{base}_{suffix}"
        consumed.add(name)
        arr = qio.read_tensor(ckpt, name, dtypes, fshape, what=what)
        return _from_file(arr, spec, shape, ckpt.file_of(name).path, name)

    scale = take("scale", "F32", f"{base} scale")
    if spec.symmetric:
        zp = np.full(scale.shape, _symmetric_zero_point(spec), np.int32)
    else:
        name = f"{module}.{base}_zero_point"
        consumed.add(name)
        raw = qio.read_zero_point(ckpt, name, fshape, spec.bits, _packs_zero_point(spec, strategy, base))
        zp = _from_file(raw, spec, shape, ckpt.file_of(name).path, name)
    mult = take("multiplier", "F32", f"{base} multiplier (mapping 'multiplier')") \
        if spec.mapping == "multiplier" else None
    offset = take("offset", "F32", f"{base} float zero point (DeepSpeed)") \
        if spec.zero_point_add == "float_offset" else None
    try:
        return QParams(scale, zp, spec, mult, offset)
    except RefquantError as e:
        raise type(e)(f"{path}: quantization parameters of {module}.{base}: {e}") from None


def _write_weight(tensors: dict, module: str, q: np.ndarray, qp: QParams, what: str) -> dict:
    spec = qp.spec
    args = _ct_weight_args(spec, q.shape, what)
    if spec.bits == 8:
        tensors[f"{module}.weight"] = np.ascontiguousarray(q)
    else:
        values = q if spec.signed else (q.astype(np.int16) - 2 ** (spec.bits - 1)).astype(np.int8)
        for k, v in qio.pack_weight(values, spec.bits).items():
            tensors[f"{module}.{k}"] = v
    _write_qparams(tensors, module, "weight", qp, q.shape, args["strategy"])
    return args


def _read_weight(ckpt, module: str, spec: QuantSpec, consumed: set):
    values, names = qio.read_weight_values(ckpt, module, spec.bits, spec.signed)
    consumed.update(names)
    qio.check_range(values, spec.qmin, spec.qmax, ckpt.file_of(names[-1]).path, names[-1])
    return values, _read_qparams(ckpt, module, "weight", spec, values.shape, consumed)


def _check_args(scheme_args, expected: dict, where: str) -> None:
    if scheme_args is None and expected is None:
        return
    if scheme_args is None or expected is None:
        raise ConfigError(f"{where}: config_groups says {scheme_args!r} but the refquant recipe says "
                          f"{expected!r}")
    got = {k: scheme_args.get(k) for k in expected}
    if got != expected:
        diff = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
        raise ConfigError(f"{where}: config_groups disagrees with the refquant spec: "
                          + ", ".join(f"{k} is {a!r}, the spec needs {b!r}" for k, (a, b) in diff.items()))


# ---------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------
def _hf_name(model, name: str) -> str:
    w = model.weights
    if hasattr(w, "hf_name") and name in w:
        return w.hf_name(name)
    return refquant_to_hf(model.family, name, prefixed=False)


def _module_of(model, site: str) -> str:
    return _hf_name(model, site + ".weight")[: -len(".weight")]


def _float_tensor(model, name: str, quantized_names: set):
    """(HF name, array, "BF16" or None): the float tensor's source bytes where the weights come
    from a checkpoint, else its float32 values in HF layout (GPT-2 Conv1D back to [in, out])."""
    w = model.weights
    hf = _hf_name(model, name)
    ckpt = getattr(w, "checkpoint", None)
    if ckpt is not None and name not in quantized_names and hf in ckpt and ckpt.dtype(hf) in _FLOAT_DTYPES:
        return hf, ckpt.get_raw(hf), ("BF16" if ckpt.dtype(hf) == "BF16" else None)
    values = np.asarray(w[name], dtype=np.float32)
    if is_transposed_conv1d_weight(model.family, name):
        values = np.ascontiguousarray(values.T)
    return hf, values, None


def _tokenizer_files(model) -> list[Path]:
    if not model.source:
        return []
    src = Path(model.source)
    directory = src if src.is_dir() else src.parent
    return [directory / f for f in qio.TOKENIZER_FILES if (directory / f).is_file()]


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------
def save_quantized(qm: QuantizedModel, directory) -> Path:
    """Write ``qm`` to ``directory`` (module docstring); returns the directory's path."""
    if not isinstance(qm, QuantizedModel):
        raise ConfigError(f"save_quantized: expected a QuantizedModel, got {type(qm).__name__}")
    model, rec = qm.float_model, qm.recipe
    raw = getattr(model.config, "raw", None)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("save_quantized: the float model's config has no raw config.json to write")
    if model.source:
        src = Path(model.source)
        src_dir = (src if src.is_dir() else src.parent).resolve()
        if Path(directory).resolve() == src_dir:
            raise ConfigError(f"{directory}: this is the directory the model was read from; save to another one")
    config = {k: v for k, v in raw.items() if k != "quantization_config"}
    tensors, dtypes, groups = {}, {}, {}
    quantized_names: set = set()
    sites_meta, embed_meta, ignore, notes = {}, {}, [], set()

    def add_to_group(module, wargs, iargs):
        fmt = qio.format_for_bits(wargs["num_bits"]) if wargs else None
        key = repr((sorted(wargs.items()) if wargs else None, sorted(iargs.items()) if iargs else None, fmt))
        group = groups.setdefault(key, {"targets": [], "weights": wargs, "input_activations": iargs,
                                        "output_activations": None, "format": fmt})
        group["targets"].append(module)

    def note_spec(spec, shape):
        if spec.granularity == "group" and spec.group_kind == "rows":
            notes.add("row_blocks")
        if spec.mapping == "multiplier":
            notes.add("multiplier")
        if spec.narrow:
            notes.add("narrow")
        if shape is not None and spec.granularity == "group" and spec.group_kind == "input" \
                and shape[1] % spec.group_size:
            notes.add("partial_group")

    for site in model.sites():
        q = qm.quantized_sites.get(site)
        if q is None:
            ignore.append(_module_of(model, site))
            continue
        if q.rule != rec.rule(site):
            raise ConfigError(f"save_quantized: site {site}'s rule differs from what recipe {rec.name} gives "
                              "it; such a model cannot be written as recipe + sites")
        module = _module_of(model, site)
        meta = {"module": module}
        wargs = iargs = None
        if q.rule.weight is not None:
            wargs = _write_weight(tensors, module, q.weight_q, q.weight_qp, site)
            quantized_names.add(site + ".weight")
            note_spec(q.rule.weight, q.weight_q.shape)
            if model.family == "gpt2" and is_transposed_conv1d_weight("gpt2", site + ".weight"):
                notes.add("conv1d")
        if q.rule.activation is not None:
            iargs = _ct_input_args(q.rule.activation, site)
            note_spec(q.rule.activation, None)
            if not q.rule.activation.dynamic:
                _write_qparams(tensors, module, "input", q.input_qp, None, "tensor")
                meta["input_amax"] = None if q.input_amax is None else float(q.input_amax)
        add_to_group(module, wargs, iargs)
        sites_meta[site] = meta
    for name, (table, qp) in qm.embeddings.items():
        module = _hf_name(model, name)[: -len(".weight")]
        add_to_group(module, _write_weight(tensors, module, table, qp, name), None)
        note_spec(qp.spec, table.shape)
        quantized_names.add(name)
        embed_meta[name] = {"module": module}
    for name in model.weights:
        if name in quantized_names:
            continue
        hf, arr, store_as = _float_tensor(model, name, quantized_names)
        if hf in tensors:
            raise ConfigError(f"save_quantized: tensor name {hf!r} is used twice")
        tensors[hf] = arr
        if store_as:
            dtypes[hf] = store_as

    config_groups = {f"group_{i}": g for i, g in enumerate(groups.values())}
    formats = {g["format"] for g in config_groups.values() if g["format"]}
    top = formats.pop() if len(formats) == 1 else (qio.FORMAT_MIXED if formats else "dense")
    config["quantization_config"] = {
        "quant_method": qio.QUANT_METHOD,
        "format": top,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        REFQUANT_KEY: {
            "format_version": FORMAT_VERSION,
            "family": model.family,
            "recipe": _recipe_json(rec),
            "recipe_options": _recipe_options(rec),
            "sites": sites_meta,
            "embeddings": embed_meta,
            "uncalibrated": list(qm.uncalibrated),
            "notes": {k: _NOTES[k] for k in sorted(notes)},
        },
    }
    return qio.write_checkpoint_directory(directory, config, tensors, dtypes=dtypes,
                                          copy_files=_tokenizer_files(model),
                                          replace_if=qio.is_refquant_checkpoint)


_NOTES = {
    "row_blocks": "ZeroQuant/DeepSpeed row-block groups (the [out, in] weight cut into num_groups blocks of "
                  "whole output rows) are not a compressed-tensors strategy: their config groups say "
                  "strategy 'channel' and weight_scale holds each output row's block scale (out, 1), which "
                  "dequantizes to the same values; the recipe's spec (group_kind 'rows', num_groups) is the "
                  "exact description.",
    "multiplier": "mapping 'multiplier' specs (NVIDIA ModelOpt, Q8BERT) quantize x * m with m = d / amax and "
                  "dequantize q / m; <module>.weight_multiplier / <module>.input_multiplier hold m "
                  "(float32, the scale's shape). weight_scale / input_scale = amax / d is the step size: "
                  "compressed-tensors' q * scale can differ from q / m by 1 ulp.",
    "narrow": "narrow-range specs ([-127, 127]) have no compressed-tensors field; the QuantSpec says narrow.",
    "partial_group": "some weights have an input dimension that is not a multiple of group_size: the last "
                     "group is shorter (refquant partial_group 'allow'); compressed-tensors 0.20 refuses "
                     "such shapes.",
    "conv1d": "GPT-2 Conv1D sites: quantized weights are stored [out, in] like nn.Linear (weight_shape "
              "[out, in]); float Conv1D weights keep HF's [in, out]. compressed-tensors 0.20 compresses only "
              "nn.Linear / nn.Embedding and indexes scales as [out, in].",
}


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------
class _QuantizedWeights(Mapping):
    """refquant name -> float32 array over a quantized checkpoint: float tensors as
    weights_io.load_weights gives them, quantized weights dequantized on first use."""

    def __init__(self, ckpt, family: str, overrides: dict, consumed: set):
        self.checkpoint = ckpt
        self.arch = family
        self._float = RefquantWeights(ckpt, family)
        self._names = {n: self._float.hf_name(n) for n in self._float if self._float.hf_name(n) not in consumed}
        self._over = overrides            # name -> (hf name, shape, function giving the values)
        for name, (hf, _, _) in overrides.items():
            self._names[name] = hf

    def __repr__(self):
        return f"_QuantizedWeights({self.arch}, {len(self)} tensors from {self.checkpoint.source})"

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._names

    def hf_name(self, name: str) -> str:
        if name in self._names:
            return self._names[name]
        return self._float.hf_name(name)  # raises MissingTensorError with close names

    def shape(self, name: str) -> tuple:
        if name in self._over:
            return tuple(self._over[name][1])
        self.hf_name(name)
        return self._float.shape(name)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._over:
            return self._over[name][2]()
        self.hf_name(name)
        return self._float[name]

    def require(self, names) -> None:
        missing = [n for n in names if n not in self]
        if missing:
            raise MissingTensorError(f"{self.checkpoint.source}: missing {self.arch} weights: "
                                     + ", ".join(map(repr, missing[:10])))


def _dequantize_site_weight(q, name):
    return dequantize(q.weight_q, q.weight_qp, name)


def load_quantized(directory) -> QuantizedModel:
    """The QuantizedModel saved in ``directory`` by save_quantized (module docstring)."""
    config, cpath = qio.read_config(directory)
    qc = qio.parse_quantization_config(config, cpath)
    meta = qc.get(REFQUANT_KEY)
    if not isinstance(meta, dict):
        raise ConfigError(f"{cpath}: quantization_config has no '{REFQUANT_KEY}' object: a compressed-tensors "
                          "checkpoint not written by refquant.checkpoint.save_quantized (only those are read)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{cpath}: refquant format_version {meta.get('format_version')!r}; this reader "
                          f"knows {FORMAT_VERSION}")
    rec = _recipe_from(meta.get("recipe"), f"{cpath}: quantization_config.refquant.recipe")
    schemes = qio.module_schemes(qc, cpath)
    ckpt = open_checkpoint(directory)  # refuses pickles
    cfg = load_config(cpath)
    family = cfg.model_type
    if meta.get("family") != family:
        raise ConfigError(f"{cpath}: refquant.family is {meta.get('family')!r} but model_type is {family!r}")
    top_format = qc.get("format")
    consumed: set = set()
    overrides: dict = {}

    def scheme_of(module, what):
        if module not in schemes:
            raise ConfigError(f"{cpath}: {what} (module {module!r}) is in no config_groups targets")
        gname, scheme = schemes[module]
        return f"{cpath}: config_groups.{gname} ({module})", scheme

    def take_weight(module, spec, what, where, scheme):
        values, qp = _read_weight(ckpt, module, spec, consumed)
        _check_args(scheme.get("weights"), _ct_weight_args(spec, values.shape, what), where + " weights")
        fmt = scheme.get("format") or top_format
        allowed = (qio.FORMAT_INT, qio.FORMAT_NAIVE) if spec.bits == 8 else (qio.FORMAT_PACK,)
        if fmt not in allowed:
            raise ConfigError(f"{where}: format {fmt!r} does not fit {spec.bits}-bit weights "
                              f"(expected {' or '.join(allowed)})")
        return values, qp

    sites = {}
    site_meta = meta.get("sites")
    if not isinstance(site_meta, dict):
        raise ConfigError(f"{cpath}: quantization_config.refquant.sites must be an object")
    for site, smeta in site_meta.items():
        rule = rec.rule(site)
        if rule is None:
            raise ConfigError(f"{cpath}: refquant.sites lists {site!r}, which recipe {rec.name} leaves float")
        module = smeta.get("module") if isinstance(smeta, dict) else None
        if not isinstance(module, str):
            raise ConfigError(f"{cpath}: refquant.sites.{site} needs its HF module name ('module')")
        where, scheme = scheme_of(module, f"site {site}")
        q = QuantizedSite(site, rule)
        if rule.weight is not None:
            q.weight_q, q.weight_qp = take_weight(module, rule.weight, site, where, scheme)
            hf = f"{module}.weight"
            # read q.weight_q when asked (not now): once the numba kernels prepack it, the
            # canonical copy is released and only the packed one is held
            overrides[site + ".weight"] = (hf, q.weight_q.shape, functools.partial(
                _dequantize_site_weight, q, site + ".weight"))
        else:
            _check_args(scheme.get("weights"), None, where + " weights")
        iargs = None if rule.activation is None else _ct_input_args(rule.activation, site)
        _check_args(scheme.get("input_activations"), iargs, where + " input_activations")
        if rule.activation is not None and not rule.activation.dynamic:
            q.input_qp = _read_qparams(ckpt, module, "input", rule.activation, None, consumed)
            amax = smeta.get("input_amax")
            q.input_amax = None if amax is None else float(amax)
        sites[site] = q
    embeddings = {}
    for name, emeta in (meta.get("embeddings") or {}).items():
        if rec.embeddings is None:
            raise ConfigError(f"{cpath}: refquant.embeddings lists {name!r} but the recipe keeps embeddings float")
        module = emeta.get("module") if isinstance(emeta, dict) else None
        if not isinstance(module, str):
            raise ConfigError(f"{cpath}: refquant.embeddings.{name} needs its HF module name ('module')")
        where, scheme = scheme_of(module, f"embedding {name}")
        table, qp = take_weight(module, rec.embeddings, name, where, scheme)
        embeddings[name] = (table, qp)
        overrides[name] = (f"{module}.weight", table.shape, functools.partial(dequantize, table, qp, name))
    for name in ckpt.keys():
        if name.rpartition(".")[2] in qio.QPARAM_SUFFIXES and name not in consumed:
            raise WeightsFormatError(f"{ckpt.file_of(name).path}: tensor {name!r} is quantization state that "
                                     "no site or embedding of refquant.sites / refquant.embeddings claims")
    weights = _QuantizedWeights(ckpt, family, overrides, consumed)
    model = FAMILIES[family](cfg, weights, load_tokenizer(Path(directory)), source=str(directory))
    unknown = sorted(set(sites) - set(model.sites()))
    if unknown:
        raise ConfigError(f"{cpath}: refquant.sites names sites the model lacks: {', '.join(unknown)}")
    ordered = {s: sites[s] for s in model.sites() if s in sites}
    qm = QuantizedModel(model, rec, ordered, embeddings)
    qm.uncalibrated = list(meta.get("uncalibrated") or [])
    return qm
