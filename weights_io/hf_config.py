"""Hugging Face ``config.json`` -> typed, frozen dataclasses for BERT, GPT-2 and Llama.

Only the fields that change the computation are typed; the whole decoded
object stays available as ``.raw``. Defaults are those of the ``transformers``
config classes (``BertConfig``, ``GPT2Config``, ``LlamaConfig``) for fields
that saved configs sometimes omit; the fields that fix the model's size
(vocabulary, width, depth, heads, and the MLP width where it has no rule) are
required, because guessing them would load the wrong model.

Every problem raises :class:`ConfigError` naming the file (or ``<dict>``) and
the field.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from weights_io.errors import ConfigError

__all__ = ["BertConfig", "GPT2Config", "LlamaConfig", "ModelConfig", "load_config", "SUPPORTED_MODEL_TYPES"]

_REQUIRED = object()


def _read_field(raw: Mapping, source: str, name: str, kind: type, default: Any = _REQUIRED,
                *, nullable: bool = False, positive: bool = False) -> Any:
    """One field of ``raw``, type-checked; ``default`` when absent (an error if there is none).

    ``kind`` is int, float, str, bool or dict. JSON numbers: an int is accepted
    for a float field; a bool is never accepted as a number.
    """
    if name not in raw:
        if default is _REQUIRED:
            raise ConfigError(f"{source}: required field {name!r} is missing")
        return default
    value = raw[name]
    if value is None and nullable:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    type_ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not type_ok:
        expected = kind.__name__ + (" or null" if nullable else "")
        raise ConfigError(f"{source}: field {name!r} must be {expected}, got {type(value).__name__} {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{source}: field {name!r} must be positive, got {value!r}")
    return value


def _check_divides(source: str, numerator_name: str, numerator: int, denominator_name: str, denominator: int):
    if numerator % denominator:
        raise ConfigError(
            f"{source}: field {numerator_name!r} ({numerator}) is not divisible by "
            f"{denominator_name!r} ({denominator})"
        )


@dataclass(frozen=True)
class BertConfig:
    """BERT encoder (``model_type: "bert"``); ``head_dim = hidden_size // num_attention_heads``."""

    model_type = "bert"

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    source: str = field(default="<dict>", compare=False)
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        _check_divides(self.source, "hidden_size", self.hidden_size, "num_attention_heads", self.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "<dict>") -> "BertConfig":
        f = functools.partial(_read_field, raw, source)
        return cls(
            vocab_size=f("vocab_size", int, positive=True),
            hidden_size=f("hidden_size", int, positive=True),
            num_hidden_layers=f("num_hidden_layers", int, positive=True),
            num_attention_heads=f("num_attention_heads", int, positive=True),
            intermediate_size=f("intermediate_size", int, positive=True),
            hidden_act=f("hidden_act", str, "gelu"),
            max_position_embeddings=f("max_position_embeddings", int, 512, positive=True),
            type_vocab_size=f("type_vocab_size", int, 2, positive=True),
            layer_norm_eps=f("layer_norm_eps", float, 1e-12, positive=True),
            pad_token_id=f("pad_token_id", int, 0, nullable=True),
            position_embedding_type=f("position_embedding_type", str, "absolute"),
            source=source,
            raw=dict(raw),
        )


@dataclass(frozen=True)
class GPT2Config:
    """GPT-2 decoder (``model_type: "gpt2"``).

    ``n_inner`` is the MLP width: ``null`` or absent means ``4 * n_embd`` (as in
    transformers' GPT2MLP), and the resolved number is stored here (also when
    the class is built directly with ``n_inner=None``).
    """

    model_type = "gpt2"

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    source: str = field(default="<dict>", compare=False)
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        if self.n_inner is None:
            object.__setattr__(self, "n_inner", 4 * self.n_embd)
        _check_divides(self.source, "n_embd", self.n_embd, "n_head", self.n_head)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "<dict>") -> "GPT2Config":
        f = functools.partial(_read_field, raw, source)
        return cls(
            vocab_size=f("vocab_size", int, positive=True),
            n_positions=f("n_positions", int, positive=True),
            n_embd=f("n_embd", int, positive=True),
            n_layer=f("n_layer", int, positive=True),
            n_head=f("n_head", int, positive=True),
            n_inner=f("n_inner", int, None, nullable=True, positive=True),
            activation_function=f("activation_function", str, "gelu_new"),
            layer_norm_epsilon=f("layer_norm_epsilon", float, 1e-5, positive=True),
            tie_word_embeddings=f("tie_word_embeddings", bool, True),
            scale_attn_weights=f("scale_attn_weights", bool, True),
            scale_attn_by_inverse_layer_idx=f("scale_attn_by_inverse_layer_idx", bool, False),
            source=source,
            raw=dict(raw),
        )


@dataclass(frozen=True)
class LlamaConfig:
    """Llama decoder (``model_type: "llama"``), grouped-query attention included.

    ``num_key_value_heads`` absent or null means ``num_attention_heads`` (plain
    multi-head attention). ``head_dim`` absent or null means
    ``hidden_size // num_attention_heads`` (then the division must be exact);
    when given, it is used as is, as transformers does. ``rope_scaling`` is
    kept as given (None for plain RoPE). The defaults are resolved and checked
    also when the class is built directly.
    """

    model_type = "llama"

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_scaling: dict | None = field(default=None, compare=False, hash=False)
    source: str = field(default="<dict>", compare=False)
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            _check_divides(self.source, "hidden_size", self.hidden_size,
                           "num_attention_heads", self.num_attention_heads)
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _check_divides(self.source, "num_attention_heads", self.num_attention_heads,
                       "num_key_value_heads", self.num_key_value_heads)

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "<dict>") -> "LlamaConfig":
        raw = _rope_fields(raw, source)
        f = functools.partial(_read_field, raw, source)
        return cls(
            vocab_size=f("vocab_size", int, positive=True),
            hidden_size=f("hidden_size", int, positive=True),
            intermediate_size=f("intermediate_size", int, positive=True),
            num_hidden_layers=f("num_hidden_layers", int, positive=True),
            num_attention_heads=f("num_attention_heads", int, positive=True),
            num_key_value_heads=f("num_key_value_heads", int, None, nullable=True, positive=True),
            head_dim=f("head_dim", int, None, nullable=True, positive=True),
            rms_norm_eps=f("rms_norm_eps", float, 1e-6, positive=True),
            rope_theta=f("rope_theta", float, 10000.0, positive=True),
            max_position_embeddings=f("max_position_embeddings", int, 2048, positive=True),
            tie_word_embeddings=f("tie_word_embeddings", bool, False),
            hidden_act=f("hidden_act", str, "silu"),
            attention_bias=f("attention_bias", bool, False),
            mlp_bias=f("mlp_bias", bool, False),
            rope_scaling=f("rope_scaling", dict, None, nullable=True),
            source=source,
            raw=dict(raw),
        )


def _rope_fields(raw: Mapping, source: str) -> dict:
    """transformers 5 writes ``rope_parameters: {rope_theta, rope_type, ...}`` instead of the
    top-level ``rope_theta`` / ``rope_scaling`` of 4.x: read either. A rope_type other than
    "default" becomes ``rope_scaling`` (so that models refuse what they do not implement)."""
    params = raw.get("rope_parameters")
    if params is None:
        return dict(raw)
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: rope_parameters: expected an object, got {type(params).__name__}")
    out = dict(raw)
    if "rope_theta" in params:
        if "rope_theta" in raw and raw["rope_theta"] != params["rope_theta"]:
            raise ConfigError(f"{source}: rope_theta {raw['rope_theta']!r} and rope_parameters.rope_theta "
                              f"{params['rope_theta']!r} disagree")
        out["rope_theta"] = params["rope_theta"]
    if params.get("rope_type", "default") not in ("default", None) and raw.get("rope_scaling") is None:
        out["rope_scaling"] = dict(params)
    return out


ModelConfig = BertConfig | GPT2Config | LlamaConfig

_CONFIG_CLASSES = {"bert": BertConfig, "gpt2": GPT2Config, "llama": LlamaConfig}
SUPPORTED_MODEL_TYPES = tuple(_CONFIG_CLASSES)

# transformers' architecture class names start with the family's prefix
# (BertModel, BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM, ...).
_ARCHITECTURE_PREFIXES = {"Bert": "bert", "GPT2": "gpt2", "Llama": "llama"}


def _family_of(raw: Mapping, source: str) -> str:
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    model_type = raw.get("model_type")
    if model_type is not None:
        if model_type in _CONFIG_CLASSES:
            return model_type
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; supported families: {supported}")
    architectures = raw.get("architectures") or []
    if isinstance(architectures, list):
        for architecture in architectures:
            for prefix, family in _ARCHITECTURE_PREFIXES.items():
                if isinstance(architecture, str) and architecture.startswith(prefix):
                    # The rest must be a transformers head suffix (Model, LMHeadModel, For...), so
                    # that relatives such as BertGenerationEncoder are not taken for BERT.
                    suffix = architecture[len(prefix):]
                    if suffix in ("Model", "LMHeadModel") or suffix.startswith("For"):
                        return family
    raise ConfigError(
        f"{source}: cannot tell the model family (model_type {model_type!r}, architectures {architectures!r}); "
        f"supported families: {supported}"
    )


def _read_json(path: str) -> tuple[dict, str]:
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a JSON object, got {type(raw).__name__}")
    return raw, path


def load_config(path_or_dict: str | os.PathLike | Mapping) -> ModelConfig:
    """Parse a HF ``config.json`` (a path, a checkpoint directory, or the decoded dict).

    The family comes from ``model_type`` ("bert", "gpt2", "llama"), else from
    ``architectures`` (``BertModel``, ``GPT2LMHeadModel``, ``LlamaForCausalLM``,
    ...). Any other family raises ConfigError listing the supported ones; so do
    a missing required field, a field of the wrong type, a hidden size not
    divisible by the head count, and a head count not divisible by the
    key/value head count.
    """
    if isinstance(path_or_dict, Mapping):
        raw, source = dict(path_or_dict), "<dict>"
    else:
        raw, source = _read_json(os.fspath(path_or_dict))
    return _CONFIG_CLASSES[_family_of(raw, source)].from_dict(raw, source)
