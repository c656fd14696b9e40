"""GGUF (llama.cpp) Llama checkpoints -> a Hugging Face Llama directory in float32.

:func:`gguf_to_hf_llama` reads a GGUF file whose ``general.architecture`` is
``llama`` with ``gguf.GGUFReader`` (the pure-NumPy reader of the ``gguf``
package, imported lazily: ``pip install gguf``), dequantizes every tensor to
float32 with ``gguf.quants.dequantize`` and writes, into a new directory::

    config.json              LlamaForCausalLM config built from the llama.* keys
    model.safetensors        every tensor, float32, under its HF Llama name
    tokenizer.json           the GGUF's byte-level BPE tokenizer (``tokenizers``)
    tokenizer_config.json    special tokens, chat template
    special_tokens_map.json
    generation_config.json   bos / eos / pad ids

The three things a converter has to get right:

1. **Names.** llama.cpp names (``blk.N.attn_q.weight``...) become HF names
   (``model.layers.N.self_attn.q_proj.weight``...), see :data:`GGUF_TO_HF`.
   An unknown tensor, a missing one, or a tensor listed twice is an error:
   a converter that drops what it does not know would hand back a different
   model without a word.
2. **Shapes.** GGUF lists dimensions innermost first (``ne[0]`` is the row
   length), i.e. reversed with respect to NumPy: a Linear stored as
   ``[in, out]`` in the GGUF header is a C-order ``[out, in]`` array, which is
   exactly HF's ``nn.Linear.weight`` layout. ``GGUFReader`` already hands the
   data back in NumPy order (quantized tensors as ``[out, bytes_per_row]``
   uint8, which ``dequantize`` expands to ``[out, in]``); every tensor is then
   checked against the shape the config implies.
3. **The rotary permutation.** HF Llama applies RoPE to the two *halves* of
   each head (``rotate_half``); llama.cpp to *adjacent pairs*. Its converter
   (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) therefore reorders the
   output rows of ``q_proj`` (with ``n_head``) and ``k_proj`` (with
   ``n_head_kv``)::

       w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)

   so that, within each head, row ``i`` of the first half and row ``i`` of the
   second half become adjacent. :func:`unpermute_qk` is the exact inverse (a
   pure reordering of rows: bit-exact); :func:`permute_qk` is llama.cpp's
   forward map, kept for tests.

The output directory is written atomically: everything goes into a temporary
directory next to ``out_dir`` which is renamed into place at the end; an
existing non-empty ``out_dir`` is refused unless ``overwrite=True``.

This module never imports refquant or torch; ``tokenizers`` is needed only to
write ``tokenizer.json`` (``tokenizer=False`` skips it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from weights_io.errors import MissingTensorError, ShapeError, WeightsFormatError
from weights_io.safetensors_io import write_safetensors

__all__ = [
    "GGUF_TO_HF",
    "gguf_to_hf_llama",
    "gguf_name_to_hf",
    "permute_qk",
    "unpermute_qk",
    "GGUF_INSTALL_HINT",
]

GGUF_INSTALL_HINT = "pip install gguf"

# llama.cpp tensor name -> HF LlamaForCausalLM name. "{n}" is the block index.
GGUF_TO_HF: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{n}.attn_norm.weight": "model.layers.{n}.input_layernorm.weight",
    "blk.{n}.attn_q.weight": "model.layers.{n}.self_attn.q_proj.weight",
    "blk.{n}.attn_k.weight": "model.layers.{n}.self_attn.k_proj.weight",
    "blk.{n}.attn_v.weight": "model.layers.{n}.self_attn.v_proj.weight",
    "blk.{n}.attn_output.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "blk.{n}.ffn_norm.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "blk.{n}.ffn_gate.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "blk.{n}.ffn_up.weight": "model.layers.{n}.mlp.up_proj.weight",
    "blk.{n}.ffn_down.weight": "model.layers.{n}.mlp.down_proj.weight",
}

_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(.+)")

# Pre-tokenizers of llama.cpp (tokenizer.ggml.pre) that are the GPT-2 regex,
# alone or after isolating every digit (llama-vocab.cpp: STARCODER, REFACT,
# COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA use {"\p{N}", GPT-2 regex}).
# tokenizers' ByteLevel(use_regex=True) applies that same GPT-2 regex.
# ("default", what llama.cpp assumes when the key is absent, is another regex.)
_PRE_GPT2 = {"gpt-2", "mpt", "olmo", "jais"}
_PRE_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell",
                         "exaone", "minerva-7b"}

# llama.cpp token types (gguf.TokenType).
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = \
    1, 2, 3, 4, 5, 6


# --------------------------------------------------------------------------
# The rotary permutation


def _check_permutable(w: np.ndarray, n_head: int) -> None:
    if not isinstance(n_head, (int, np.integer)) or n_head <= 0:
        raise ShapeError(f"n_head must be a positive integer, got {n_head!r}")
    if w.ndim < 1 or w.shape[0] % (2 * n_head) != 0:
        raise ShapeError(f"cannot (un)permute an array of shape {w.shape} for {n_head} heads: "
                         f"the first dimension must be a multiple of 2 * n_head = {2 * n_head}")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation (convert_hf_to_gguf.py ``LlamaModel.permute``).

    ``w`` is an HF ``[n_head * head_dim, ...]`` array (q_proj with the number of
    attention heads, k_proj with the number of KV heads); within each head, the
    rows of the two rotary halves are interleaved. Returns a new array.
    """
    w = np.asarray(w)
    _check_permutable(w, n_head)
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The exact inverse of :func:`permute_qk`: ``unpermute_qk(permute_qk(w, h), h) == w``.

    permute views rows as ``[n_head, 2, half]`` and swaps the last two axes
    (giving ``[n_head, half, 2]``); the inverse views them as ``[n_head, half, 2]``
    and swaps back. A pure reordering of rows, so bit-exact for every dtype.
    """
    w = np.asarray(w)
    _check_permutable(w, n_head)
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _hf_name_to_gguf(hf: str) -> str:
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf)
    key = f"model.layers.{{n}}.{m.group(2)}" if m else hf
    for g, h in GGUF_TO_HF.items():
        if h == key:
            return g.format(n=int(m.group(1))) if m else g
    return hf


def gguf_name_to_hf(name: str) -> str | None:
    """The HF Llama name of a llama.cpp tensor name, or None if it is not one we know."""
    if name in GGUF_TO_HF:
        return GGUF_TO_HF[name]
    m = _BLOCK_NAME.fullmatch(name)
    if m:
        template = GGUF_TO_HF.get("blk.{n}." + m.group(2))
        if template is not None:
            return template.format(n=int(m.group(1)))
    return None


# --------------------------------------------------------------------------
# Reading GGUF metadata


def _import_gguf():
    try:
        import gguf  # noqa: F401
        import gguf.quants  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"weights_io.gguf_import needs the 'gguf' package (pure NumPy) to read GGUF files: "
            f"{GGUF_INSTALL_HINT}  ({e})") from e
    return gguf


def _field_value(gguf, field) -> Any:
    """A GGUF metadata value as a Python object (str, int, float, bool, or a list of them)."""
    types = list(field.types)
    if not types:
        return None
    vt = gguf.GGUFValueType

    def scalar(part, t):
        if t == vt.STRING:
            return bytes(part).decode("utf-8")
        value = part.tolist()
        value = value[0] if isinstance(value, list) else value
        return bool(value) if t == vt.BOOL else value

    if types[0] == vt.ARRAY:
        if len(types) != 2 or types[1] == vt.ARRAY:
            raise ValueError("nested arrays are not supported")
        return [scalar(field.parts[i], types[1]) for i in field.data]
    return scalar(field.parts[field.data[0]], types[0])


class _Meta:
    """GGUF key/value metadata with errors that name the file and the key."""

    def __init__(self, gguf, reader, path: str):
        self.path = path
        self._values: dict[str, Any] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                self._values[key] = _field_value(gguf, field)
            except (ValueError, UnicodeDecodeError, IndexError) as e:
                raise WeightsFormatError(f"{path}: cannot decode GGUF metadata key {key!r}: {e}") from e

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def require(self, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if key not in self._values:
            raise WeightsFormatError(f"{self.path}: GGUF metadata key {key!r} ({what}) is missing")
        value = self._values[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise WeightsFormatError(f"{self.path}: GGUF metadata key {key!r} ({what}) should be "
                                     f"{getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def positive_int(self, key: str, what: str) -> int:
        value = self.require(key, int, what)
        if value <= 0:
            raise WeightsFormatError(f"{self.path}: GGUF metadata key {key!r} ({what}) must be > 0, got {value}")
        return int(value)

    def optional_int(self, key: str) -> int | None:
        value = self._values.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise WeightsFormatError(f"{self.path}: GGUF metadata key {key!r} should be an integer, got {value!r}")
        return int(value)


# --------------------------------------------------------------------------
# Config


def _llama_config(meta: _Meta, vocab_size: int, tied: bool, path: str) -> dict:
    a = "llama."
    hidden = meta.positive_int(a + "embedding_length", "hidden_size")
    n_layer = meta.positive_int(a + "block_count", "num_hidden_layers")
    n_ff = meta.positive_int(a + "feed_forward_length", "intermediate_size")
    n_head = meta.positive_int(a + "attention.head_count", "num_attention_heads")
    n_head_kv = meta.optional_int(a + "attention.head_count_kv") or n_head
    if n_head % n_head_kv:
        raise WeightsFormatError(f"{path}: llama.attention.head_count ({n_head}) is not a multiple of "
                                 f"llama.attention.head_count_kv ({n_head_kv})")
    head_dim = meta.optional_int(a + "attention.key_length")
    if head_dim is None:
        if hidden % n_head:
            raise WeightsFormatError(f"{path}: llama.embedding_length ({hidden}) is not a multiple of "
                                     f"llama.attention.head_count ({n_head}) and there is no "
                                     f"llama.attention.key_length")
        head_dim = hidden // n_head
    value_length = meta.optional_int(a + "attention.value_length")
    if value_length is not None and value_length != head_dim:
        raise WeightsFormatError(f"{path}: llama.attention.value_length ({value_length}) differs from the "
                                 f"key length ({head_dim}); HF Llama needs them equal")
    if head_dim % 2:
        raise WeightsFormatError(f"{path}: head dimension {head_dim} is odd; rotary embedding needs it even")
    rope_dim = meta.optional_int(a + "rope.dimension_count")
    if rope_dim is not None and rope_dim != head_dim:
        raise WeightsFormatError(f"{path}: llama.rope.dimension_count is {rope_dim} but the head dimension is "
                                 f"{head_dim}; partial rotary embedding is not Llama (HF rotates the whole head)")
    eps = meta.require(a + "attention.layer_norm_rms_epsilon", (int, float), "rms_norm_eps")
    rope_theta = meta.get(a + "rope.freq_base", 10000.0)
    if not isinstance(rope_theta, (int, float)) or isinstance(rope_theta, bool) or rope_theta <= 0:
        raise WeightsFormatError(f"{path}: llama.rope.freq_base should be a positive number, got {rope_theta!r}")
    context = meta.optional_int(a + "context_length") or 2048

    rope_scaling = None
    scaling_type = meta.get(a + "rope.scaling.type")
    if scaling_type not in (None, "none"):
        factor = meta.get(a + "rope.scaling.factor")
        if scaling_type == "linear" and isinstance(factor, (int, float)) and factor > 0:
            rope_scaling = {"rope_type": "linear", "factor": float(factor)}
        else:
            raise WeightsFormatError(f"{path}: llama.rope.scaling.type {scaling_type!r} (factor {factor!r}) is "
                                     f"not supported; only 'linear' and 'none' are")

    # float32 metadata values (eps, freq_base) are printed as the shortest
    # decimal that rounds back to the same float32: 1e-05, not 9.99999974e-06.
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": n_ff,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _float32_repr(eps),
        "rope_theta": _float32_repr(rope_theta),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": context,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    for key, hf_key in (("tokenizer.ggml.bos_token_id", "bos_token_id"),
                        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                        ("tokenizer.ggml.padding_token_id", "pad_token_id")):
        value = meta.optional_int(key)
        if value is not None:
            if not 0 <= value < vocab_size:
                raise WeightsFormatError(f"{path}: {key} = {value} is outside the vocabulary [0, {vocab_size})")
            config[hf_key] = value
    return config


def _float32_repr(value: float) -> float:
    """The shortest decimal that rounds to the same float32 as ``value`` (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    d, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q_rows, d),
            p + "self_attn.k_proj.weight": (kv_rows, d),
            p + "self_attn.v_proj.weight": (kv_rows, d),
            p + "self_attn.o_proj.weight": (d, q_rows),
            p + "mlp.gate_proj.weight": (ff, d),
            p + "mlp.up_proj.weight": (ff, d),
            p + "mlp.down_proj.weight": (d, ff),
        })
    return shapes


# --------------------------------------------------------------------------
# Tokenizer


def _tokenizer_files(meta: _Meta, vocab_size: int, path: str) -> dict[str, str]:
    """tokenizer.json / tokenizer_config.json / special_tokens_map.json contents (JSON text)."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise WeightsFormatError(f"{path}: there is no tokenizer in this GGUF (no tokenizer.ggml.model); "
                                 f"pass tokenizer=False to convert only the weights")
    if model != "gpt2":
        raise WeightsFormatError(f"{path}: tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) "
                                 f"is supported; pass tokenizer=False to convert only the weights")
    pre = meta.get("tokenizer.ggml.pre")
    if pre not in _PRE_GPT2 | _PRE_DIGITS_THEN_GPT2:
        raise WeightsFormatError(
            f"{path}: tokenizer.ggml.pre is {pre!r}; supported pre-tokenizers are "
            f"{sorted(_PRE_GPT2 | _PRE_DIGITS_THEN_GPT2)} (llama-vocab.cpp); pass tokenizer=False to convert only the weights")
    tokens = meta.require("tokenizer.ggml.tokens", list, "the vocabulary")
    merges = meta.require("tokenizer.ggml.merges", list, "the BPE merges")
    types = meta.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    if not all(isinstance(t, str) for t in tokens) or not all(isinstance(m, str) for m in merges):
        raise WeightsFormatError(f"{path}: tokenizer.ggml.tokens / tokenizer.ggml.merges must be string arrays")
    if len(types) != len(tokens):
        raise WeightsFormatError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries but "
                                 f"tokenizer.ggml.tokens has {len(tokens)}")
    if len(tokens) > vocab_size:
        raise WeightsFormatError(f"{path}: tokenizer has {len(tokens)} tokens but the embedding only "
                                 f"{vocab_size} rows")
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise WeightsFormatError(f"{path}: token {tok!r} appears twice in tokenizer.ggml.tokens "
                                     f"(ids {vocab[tok]} and {i})")
        vocab[tok] = i
    pairs = []
    for i, merge in enumerate(merges):
        # llama-vocab.cpp splits at the first space after position 0.
        cut = merge.find(" ", 1)
        if cut < 0:
            raise WeightsFormatError(f"{path}: merge {i} ({merge!r}) is not two tokens separated by a space")
        pairs.append((merge[:cut], merge[cut + 1:]))

    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError as e:  # pragma: no cover - tokenizers is a refquant dependency
        raise ImportError("writing tokenizer.json needs the 'tokenizers' package: pip install tokenizers "
                          "(or pass tokenizer=False)") from e

    try:
        tk = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    except Exception as e:  # tokenizers raises its own Exception types (e.g. a merge token not in vocab)
        raise WeightsFormatError(f"{path}: the GGUF's BPE vocabulary/merges are inconsistent: {e}") from e
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in _PRE_DIGITS_THEN_GPT2:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()

    added = []
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED):
            added.append(AddedToken(tok, special=(typ == _TOKEN_CONTROL), normalized=False))
    if added:
        tk.add_tokens(added)  # they are in the vocabulary already: ids are kept

    def token_at(key: str) -> str | None:
        i = meta.optional_int(key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = token_at("tokenizer.ggml.bos_token_id"), token_at("tokenizer.ggml.eos_token_id")
    pad, unk = token_at("tokenizer.ggml.padding_token_id"), token_at("tokenizer.ggml.unknown_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise WeightsFormatError(f"{path}: tokenizer.ggml.add_bos/eos_token is set but the token id is missing")
    if add_bos or add_eos:
        def template(*seqs: str) -> str:
            parts = []
            for seq in seqs:
                parts += ([f"{bos}:0"] if add_bos else []) + [seq] + ([f"{eos}:0"] if add_eos else [])
            return " ".join(parts)
        specials = [(t, vocab[t]) for t in dict.fromkeys(x for x, on in ((bos, add_bos), (eos, add_eos)) if on)]
        tk.post_processor = processors.TemplateProcessing(
            single=template("$A:0"), pair=template("$A:0", "$B:1"), special_tokens=specials)
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)

    control = [tok for tok, typ in zip(tokens, types) if typ == _TOKEN_CONTROL]
    special_map: dict[str, Any] = {}
    for name, tok in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)):
        if tok is not None:
            special_map[name] = tok
    extra = [t for t in control if t not in special_map.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.optional_int("llama.context_length") or 2048,
        **special_map,
    }
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        tok_config["chat_template"] = template
    return {
        "tokenizer.json": tk.to_str(pretty=False),
        "tokenizer_config.json": json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2, ensure_ascii=False) + "\n",
    }


# --------------------------------------------------------------------------
# Output directory


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise FileExistsError(f"{out_dir}: exists and is not a directory; refusing to replace it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: directory exists and is not empty; pass overwrite=True to replace it")


def _install_dir(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory to ``out_dir`` (replacing it if allowed)."""
    _check_out_dir(out_dir, overwrite)  # again: something may have appeared meanwhile
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.replace(out_dir, old / "d")
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old / "d", out_dir)
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return
        out_dir.rmdir()
    os.replace(tmp, out_dir)


# --------------------------------------------------------------------------
# The conversion


def gguf_to_hf_llama(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                     overwrite: bool = False, tokenizer: bool = True) -> Path:
    """Convert a llama-architecture GGUF file into an HF Llama directory (float32); return its path.

    Writes ``config.json``, ``model.safetensors`` (every tensor dequantized to
    float32, HF names, ``[out, in]`` Linear weights, q/k rotary permutation
    undone), ``generation_config.json`` and, when ``tokenizer`` is true,
    ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``.

    Raises WeightsFormatError (naming the file and what was expected) for a
    file that is not GGUF, not ``llama``, lacks a metadata key or a tensor,
    has an unknown tensor or one of an unexpected shape; FileExistsError if
    ``out_dir`` exists and is not empty and ``overwrite`` is false;
    ImportError (saying ``pip install gguf``) if the gguf package is missing.
    """
    gguf = _import_gguf()
    import gguf.quants

    src = Path(gguf_path)
    out_dir = Path(out_dir).expanduser().absolute()
    path = str(src)
    if not src.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    _check_out_dir(out_dir, overwrite)

    try:
        reader = gguf.GGUFReader(src, "r")
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors, ... on garbage
        raise WeightsFormatError(f"{path}: not a readable GGUF file (expected the magic b'GGUF' followed by "
                                 f"a version-2/3 header): {type(e).__name__}: {e}") from e
    meta = _Meta(gguf, reader, path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise WeightsFormatError(f"{path}: general.architecture is {arch!r}; expected 'llama'")

    # Map and check names first (cheap), then dequantize one tensor at a time.
    by_hf: dict[str, Any] = {}
    for t in reader.tensors:
        hf = gguf_name_to_hf(t.name)
        if hf is None:
            raise WeightsFormatError(f"{path}: unexpected tensor {t.name!r} (type {t.tensor_type.name}); a Llama "
                                     f"GGUF holds only {sorted(GGUF_TO_HF)}")
        if hf in by_hf:
            raise WeightsFormatError(f"{path}: tensor {t.name!r} appears twice")
        by_hf[hf] = t
    if "model.embed_tokens.weight" not in by_hf:
        raise MissingTensorError(f"{path}: tensor 'token_embd.weight' (the token embedding) is missing")
    emb_shape = tuple(int(x) for x in reversed(list(by_hf["model.embed_tokens.weight"].shape)))
    if len(emb_shape) != 2:
        raise WeightsFormatError(f"{path}: token_embd.weight should be 2-D [vocab, hidden], "
                                 f"has NumPy shape {emb_shape}")
    vocab_size = emb_shape[0]
    if "llama.vocab_size" in meta and meta.optional_int("llama.vocab_size") != vocab_size:
        raise WeightsFormatError(f"{path}: llama.vocab_size is {meta.get('llama.vocab_size')} but "
                                 f"token_embd.weight has {vocab_size} rows")
    tied = "lm_head.weight" not in by_hf
    config = _llama_config(meta, vocab_size, tied, path)

    expected = _expected_shapes(config)
    missing = [n for n in expected if n not in by_hf]
    if missing:
        raise MissingTensorError(f"{path}: {len(missing)} tensor(s) missing for a {config['num_hidden_layers']}"
                                 f"-layer Llama, e.g. {[_hf_name_to_gguf(n) for n in missing[:5]]}")
    extra = [t.name for n, t in by_hf.items() if n not in expected]
    if extra:
        raise WeightsFormatError(f"{path}: tensors {extra[:5]} do not belong to a "
                                 f"{config['num_hidden_layers']}-layer Llama (llama.block_count)")

    tensors: dict[str, np.ndarray] = {}
    n_head, n_head_kv = config["num_attention_heads"], config["num_key_value_heads"]
    for hf, want in expected.items():
        t = by_hf[hf]
        header_shape = tuple(int(x) for x in reversed(list(t.shape)))
        # GGUF pads nothing: trailing 1-dimensions may be listed or not.
        while len(header_shape) > len(want) and header_shape[0] == 1:
            header_shape = header_shape[1:]
        if header_shape != want:
            raise WeightsFormatError(f"{path}: tensor {t.name!r} ({hf}) has shape {list(header_shape)} "
                             f"(GGUF header {list(map(int, t.shape))}, reversed); expected {list(want)}")
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise WeightsFormatError(f"{path}: tensor {t.name!r} is of type {t.tensor_type.name}, which "
                                     f"gguf.quants.dequantize cannot decode: {e}") from e
        w = np.asarray(w)
        if w.size != int(np.prod(want)):
            raise WeightsFormatError(f"{path}: tensor {t.name!r} dequantized to {w.size} values; expected "
                             f"{int(np.prod(want))} for shape {list(want)}")
        w = np.array(w.reshape(want), dtype="<f4", copy=True)  # own memory, not a view of the memmap
        if hf.endswith("self_attn.q_proj.weight"):
            w = unpermute_qk(w, n_head)
        elif hf.endswith("self_attn.k_proj.weight"):
            w = unpermute_qk(w, n_head_kv)
        tensors[hf] = np.ascontiguousarray(w)

    tok_files = _tokenizer_files(meta, vocab_size, path) if tokenizer else {}
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        write_safetensors(tmp / "model.safetensors", tensors,
                          metadata={"format": "pt", "source": f"gguf:{src.name}",
                                    "converted_by": "weights_io.gguf_import"})
        del tensors
        files = {"config.json": json.dumps(config, indent=2) + "\n",
                 "generation_config.json": json.dumps(generation, indent=2) + "\n", **tok_files}
        for name, text in files.items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _install_dir(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
