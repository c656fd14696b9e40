"""Hugging Face tensor names <-> refquant names, and float32 weights under refquant names.

A refquant name is the HF module path without the base-model prefix:

| family | HF prefix stripped | examples of refquant names |
|---|---|---|
| bert | ``bert.`` | ``embeddings.word_embeddings.weight``, ``encoder.layer.3.attention.self.query.weight`` |
| gpt2 | ``transformer.`` | ``wte.weight``, ``h.0.attn.c_attn.weight``, ``ln_f.bias`` |
| llama | ``model.`` | ``embed_tokens.weight``, ``layers.0.self_attn.q_proj.weight``, ``norm.weight``, ``lm_head.weight`` |

Checkpoints differ on the prefix (a ``BertModel`` saves ``encoder...``, a
``BertForMaskedLM`` saves ``bert.encoder...``; the hub's ``gpt2`` has no
``transformer.``), so both spellings are accepted. Head tensors outside the
base model (``lm_head.weight``, ``cls.predictions.bias``, ``classifier.weight``)
keep their names. Old BERT checkpoints name LayerNorm parameters ``gamma`` /
``beta``; they become ``weight`` / ``bias``, as transformers renames them on load.

Buffers that are not weights map to None and are skipped: BERT's
``embeddings.position_ids`` / ``embeddings.token_type_ids``, GPT-2's causal
mask ``h.N.attn.bias`` and ``h.N.attn.masked_bias``, Llama's
``rotary_emb.inv_freq``.

**GPT-2's Conv1D weights are transposed here.** transformers' GPT-2 uses
``Conv1D`` for ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and
``mlp.c_proj``; it stores the weight as [in, out] and computes ``x @ W + b``.
Every other Linear in every family is stored [out, in] (``x @ W.T + b``).
:func:`load_weights` transposes those four GPT-2 weights on read, so that
*every* refquant Linear weight is [out, in] and the GEMM sites need no
special case. Their biases are [out] in both conventions and are untouched.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from weights_io.errors import DTypeError, MissingTensorError, WeightsFormatError
from weights_io.safetensors_io import open_checkpoint

__all__ = [
    "ARCHITECTURES",
    "hf_to_refquant",
    "refquant_to_hf",
    "is_transposed_conv1d_weight",
    "required_refquant_names",
    "load_weights",
    "RefquantWeights",
]

ARCHITECTURES = ("bert", "gpt2", "llama")

_BASE_MODEL_PREFIX = {"bert": "bert.", "gpt2": "transformer.", "llama": "model."}

# First path component of the tensors that live inside the base model (and so
# carry the prefix in a head model's checkpoint); anything else is a head.
_BASE_MODEL_ROOTS = {
    "bert": {"embeddings", "encoder", "pooler"},
    "gpt2": {"wte", "wpe", "h", "ln_f"},
    "llama": {"embed_tokens", "layers", "norm", "rotary_emb"},
}

_IGNORED_BUFFERS = {
    "bert": re.compile(r"embeddings\.(position_ids|token_type_ids)"),
    "gpt2": re.compile(r"h\.\d+\.(attn|crossattention)\.(bias|masked_bias)"),
    "llama": re.compile(r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"),
}

_GPT2_CONV1D_WEIGHT = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")

_BERT_LEGACY_LAYER_NORM = re.compile(r"(.*LayerNorm)\.(gamma|beta)")

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _family(arch) -> str:
    """``arch`` as one of ARCHITECTURES; a config object gives its ``model_type``."""
    name = getattr(arch, "model_type", arch)
    if name not in ARCHITECTURES:
        raise WeightsFormatError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    return name


def hf_to_refquant(arch, hf_name: str) -> str | None:
    """The refquant name of HF tensor ``hf_name``, or None for a buffer refquant ignores.

    ``arch`` is "bert", "gpt2", "llama" or a config from :func:`load_config`.
    Strips the base-model prefix if present; renames BERT's legacy
    ``LayerNorm.gamma`` / ``LayerNorm.beta`` to ``.weight`` / ``.bias``.
    """
    family = _family(arch)
    prefix = _BASE_MODEL_PREFIX[family]
    name = hf_name[len(prefix):] if hf_name.startswith(prefix) else hf_name
    if _IGNORED_BUFFERS[family].fullmatch(name):
        return None
    if family == "bert":
        legacy = _BERT_LEGACY_LAYER_NORM.fullmatch(name)
        if legacy:
            name = f"{legacy.group(1)}.{'weight' if legacy.group(2) == 'gamma' else 'bias'}"
    return name


def refquant_to_hf(arch, name: str, prefixed: bool = True) -> str:
    """The HF name of refquant tensor ``name``.

    With ``prefixed=True`` (the layout ``save_pretrained`` gives a head model
    such as BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM) base-model
    tensors get the family's prefix; head tensors never do. Use
    ``prefixed=False`` for checkpoints of a bare base model.
    """
    family = _family(arch)
    if prefixed and name.split(".", 1)[0] in _BASE_MODEL_ROOTS[family]:
        return _BASE_MODEL_PREFIX[family] + name
    return name


def is_transposed_conv1d_weight(arch, name: str) -> bool:
    """True for the GPT-2 Conv1D weights ([in, out] on disk) that load_weights transposes."""
    return _family(arch) == "gpt2" and bool(_GPT2_CONV1D_WEIGHT.fullmatch(name))


def required_refquant_names(config) -> list[str]:
    """Every refquant tensor name a model of ``config`` needs, in model order.

    The output head (``lm_head.weight``) is listed only when it is not tied to
    the token embedding. Optional heads (BERT pooler and MLM head) are not.
    """
    family = _family(config)
    if family == "bert":
        names = [f"embeddings.{e}.weight" for e in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
        names += ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
        for i in range(config.num_hidden_layers):
            layer = f"encoder.layer.{i}"
            for module in ("attention.self.query", "attention.self.key", "attention.self.value",
                           "attention.output.dense", "attention.output.LayerNorm",
                           "intermediate.dense", "output.dense", "output.LayerNorm"):
                names += [f"{layer}.{module}.weight", f"{layer}.{module}.bias"]
        return names
    if family == "gpt2":
        names = ["wte.weight", "wpe.weight"]
        for i in range(config.n_layer):
            for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
                names += [f"h.{i}.{module}.weight", f"h.{i}.{module}.bias"]
        names += ["ln_f.weight", "ln_f.bias"]
        return names + ([] if config.tie_word_embeddings else ["lm_head.weight"])
    names = ["embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        layer = f"layers.{i}"
        names.append(f"{layer}.input_layernorm.weight")
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append(f"{layer}.self_attn.{projection}.weight")
            if config.attention_bias:
                names.append(f"{layer}.self_attn.{projection}.bias")
        names.append(f"{layer}.post_attention_layernorm.weight")
        for projection in ("gate_proj", "up_proj", "down_proj"):
            names.append(f"{layer}.mlp.{projection}.weight")
            if config.mlp_bias:
                names.append(f"{layer}.mlp.{projection}.bias")
    names.append("norm.weight")
    return names + ([] if config.tie_word_embeddings else ["lm_head.weight"])


class RefquantWeights(Mapping):
    """A read-only mapping refquant name -> float32 array, reading one tensor per lookup.

    Nothing is read until a value is asked for; each ``weights[name]`` maps
    that tensor from its file and converts it to float32 (F16 and BF16 exactly,
    F64 rounded to nearest). GPT-2 Conv1D weights come back transposed to
    [out, in] (a contiguous copy); other float32 tensors come back as
    read-only memory-mapped arrays. Integer tensors are refused: this is the
    float model loader.
    """

    def __init__(self, checkpoint, arch):
        self.checkpoint = checkpoint
        self.arch = _family(arch)
        self._hf_names: dict[str, str] = {}
        for hf_name in checkpoint.keys():
            name = hf_to_refquant(self.arch, hf_name)
            if name is None:
                continue
            if name in self._hf_names:
                raise WeightsFormatError(
                    f"{_source_of(checkpoint)}: tensors {self._hf_names[name]!r} and {hf_name!r} "
                    f"both map to refquant name {name!r}"
                )
            self._hf_names[name] = hf_name

    def __repr__(self) -> str:
        return f"RefquantWeights({self.arch}, {len(self)} tensors from {_source_of(self.checkpoint)})"

    def __iter__(self) -> Iterator[str]:
        return iter(self._hf_names)

    def __len__(self) -> int:
        return len(self._hf_names)

    def __contains__(self, name) -> bool:
        return name in self._hf_names

    def hf_name(self, name: str) -> str:
        """The checkpoint's own name for refquant tensor ``name``."""
        try:
            return self._hf_names[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._hf_names), n=5, cutoff=0.5)
            hint = f"close names: {', '.join(map(repr, close))}" if close else f"it has {len(self)} weight tensors"
            raise MissingTensorError(
                f"{_source_of(self.checkpoint)}: no {self.arch} weight {name!r}; {hint}"
            ) from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of ``weights[name]`` (after the Conv1D transpose), without reading it."""
        shape = tuple(self.checkpoint.shape(self.hf_name(name)))
        return shape[::-1] if is_transposed_conv1d_weight(self.arch, name) else shape

    def __getitem__(self, name: str) -> np.ndarray:
        hf_name = self.hf_name(name)
        dtype = self.checkpoint.dtype(hf_name)
        if dtype not in _FLOAT_DTYPES:
            raise DTypeError(
                f"{_source_of(self.checkpoint)}: tensor {hf_name!r} is {dtype}, not a float weight; "
                f"read integer tensors with open_checkpoint(...).get"
            )
        values = self.checkpoint.get(hf_name).astype(np.float32, copy=False)
        if is_transposed_conv1d_weight(self.arch, name):
            if values.ndim != 2:
                raise WeightsFormatError(
                    f"{_source_of(self.checkpoint)}: Conv1D weight {hf_name!r} should be 2-D [in, out], "
                    f"got shape {list(values.shape)}"
                )
            values = np.ascontiguousarray(values.T)
        return values

    def require(self, names) -> None:
        """Raise one MissingTensorError listing every name of ``names`` that is absent."""
        missing = [n for n in names if n not in self._hf_names]
        if missing:
            shown = ", ".join(map(repr, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise MissingTensorError(f"{_source_of(self.checkpoint)}: missing {self.arch} weights: {shown}")


def _source_of(checkpoint) -> str:
    return getattr(checkpoint, "source", None) or getattr(checkpoint, "path", None) or repr(checkpoint)


def load_weights(checkpoint, arch) -> RefquantWeights:
    """Refquant-named float32 weights of ``checkpoint``, read lazily (see :class:`RefquantWeights`).

    ``checkpoint`` is a path (anything :func:`open_checkpoint` accepts) or an
    already opened Checkpoint / SafetensorsFile. ``arch`` is "bert", "gpt2",
    "llama" or a config from :func:`load_config`; with a config, the weights
    are also checked for completeness (:func:`required_refquant_names`).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = open_checkpoint(checkpoint)
    weights = RefquantWeights(checkpoint, arch)
    if not isinstance(arch, str):
        weights.require(required_refquant_names(arch))
    return weights
