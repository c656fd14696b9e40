"""What every model family shares: its weights, its GEMM sites, its tokenizer, its checks."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from weights_io.errors import ConfigError, DTypeError, OutOfRangeError, ShapeError, WeightsFormatError

from .._malloc import keep_freed_memory
from ..kernels.gemm_f32 import matmul_f32, prepack_f32
from ..nn import linear_forward, split_heads

F32 = np.float32


class Model:
    """A float32 transformer read from a checkpoint.

    weights   refquant-named float32 arrays (weights_io.load_weights: memory-mapped, read on use)
    config    the typed HF config (weights_io.hf_config)
    Every Linear is a named GEMM *site* (its HF module path without the base-model prefix);
    ``linear(site, x)`` is the one place a site is computed, so a quantized model overrides it.
    """

    family = ""

    def __init__(self, config, weights, tokenizer=None, source: str = "", stream: bool = False):
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.source = source
        self.stream = stream  # read each weight when used, keep none (checkpoints above memory)
        self._cache: dict[str, np.ndarray | None] = {}
        self._overrides: dict[str, np.ndarray] = {}  # with_weights: trained replacements
        self._packed: dict = {}  # {(name, id(array)): (array, PackedF32)}: see packed_weight
        self._check_weights()
        keep_freed_memory()  # forward passes reuse freed activation pages (refquant._malloc)

    # -- sites -----------------------------------------------------------------------------
    def sites(self) -> list[str]:
        """The GEMM sites in execution order (each has ``site + ".weight"`` of shape [out, in])."""
        raise NotImplementedError

    def forward_sites(self) -> list[str]:
        """The GEMM sites ``forward`` runs, in execution order (``sites()`` may hold more, such as
        BERT's pooler, which only ``pooled`` runs)."""
        return self.sites()

    def linear(self, site: str, x: np.ndarray) -> np.ndarray:
        """x @ W.T + b at GEMM site ``site`` (a decoder's "lm_head" may use the tied embedding)."""
        if site == "lm_head":
            return linear_forward(x, self.w(self.head_weight), packed=self.packed_weight(self.head_weight))[0]
        name = site + ".weight"
        return linear_forward(x, self.w(name), self.w(site + ".bias", optional=True),
                              packed=self.packed_weight(name))[0]

    def linear_and_bias(self, site: str, x: np.ndarray):
        """(x @ W.T, b) at ``site``, the bias left for the next op to add in its own pass (BERT
        fuses it into GELU, into the residual + LayerNorm): same bits as ``linear``, one pass
        fewer. Where ``linear`` is replaced on the instance (a quantized model's sites, a
        calibration observer), the replacement computes the whole site: (its output, None)."""
        if "linear" in vars(self) or site == "lm_head":
            return self.linear(site, x), None
        name = site + ".weight"
        return linear_forward(x, self.w(name), packed=self.packed_weight(name))[0], \
            self.w(site + ".bias", optional=True)

    def linear_heads(self, site: str, x: np.ndarray, heads: int) -> np.ndarray:
        """``linear(site, x)`` for x [B, T, C], split into ``heads`` heads: [B, heads, T, D],
        contiguous (attention's layout). Float32 sites write the heads straight from the GEMM's
        tiles, bias included (matmul_f32's head_split); same bits as split_heads of ``linear``.
        A replaced ``linear`` (quantized sites, observers) computes the site, then one copy."""
        name = site + ".weight"
        if "linear" in vars(self) or x.dtype != F32:
            return split_heads(self.linear(site, x), None, heads)
        w = self.packed_weight(name)
        return matmul_f32(x, self.w(name) if w is None else w, self.w(site + ".bias", optional=True),
                          head_split=heads)

    def packed_weight(self, name: str):
        """Weight ``name`` prepacked for the float32 GEMM (refquant.kernels.gemm_f32.prepack_f32),
        built once per array and kept next to it; None where nothing is kept (a streaming model)
        or the weight is not a float32 matrix (the GEMM then packs it per call). Keyed by the
        array's identity, so an override (``with_weights``) or a replaced ``w`` gets its own."""
        if self.stream:
            return None
        w = self.w(name)
        if not isinstance(w, np.ndarray) or w.dtype != F32 or w.ndim != 2:
            return None
        key = (name, id(w))
        hit = self._packed.get(key)
        if hit is None or hit[0] is not w:
            hit = self._packed[key] = (w, prepack_f32(w))
        return hit[1]

    def with_weights(self, overrides: dict) -> "Model":
        """The same model with some weights replaced (float32 arrays by refquant name, shapes
        checked), e.g. after layer-by-layer distillation; the checkpoint is not touched."""
        shapes = self.expected_shapes()
        for name, value in overrides.items():
            if name not in shapes:
                raise ConfigError(f"with_weights: {name!r} is not a weight of this {self.family} model")
            if tuple(np.shape(value)) != tuple(shapes[name]):
                raise ShapeError(f"with_weights: {name!r} has shape {list(np.shape(value))}, expected "
                                 f"{list(shapes[name])}")
        out = copy.copy(self)
        out._overrides = {**self._overrides, **{n: np.asarray(v, F32) for n, v in overrides.items()}}
        out._packed = {k: v for k, v in self._packed.items() if k[0] not in overrides}  # its own
        return out

    embedding_weight = ""  # decoders: the token embedding that a tied LM head multiplies by

    @property
    def head_weight(self) -> str:
        """lm_head.weight when the checkpoint unties it, else the token embedding (tied)."""
        untied = not getattr(self.config, "tie_word_embeddings", True) and "lm_head.weight" in self.weights
        return "lm_head.weight" if untied else self.embedding_weight

    def w(self, name: str, optional: bool = False):
        """Weight ``name`` as float32 [out, in] (read from the checkpoint once, then kept: a
        memory map for float32 files, a converted copy otherwise). A streaming model
        (``rq.load(path, stream=True)``) keeps nothing: each call maps the tensor again and the
        mapping goes when the caller drops the array, so at most the weights in use are held."""
        if name in self._overrides:
            return self._overrides[name]
        if self.stream:
            return None if optional and name not in self.weights else self.weights[name]
        if name not in self._cache:
            if optional and name not in self.weights:
                self._cache[name] = None
            else:
                self._cache[name] = self.weights[name]
        return self._cache[name]

    # -- shapes ----------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple]:
        """Every tensor the forward pass reads, with the shape the config implies."""
        raise NotImplementedError

    def _check_weights(self) -> None:
        for name, shape in self.expected_shapes().items():
            if name not in self.weights:
                self.weights.require([name])  # raises MissingTensorError naming the file
            got = tuple(self.weights.shape(name))
            if got != tuple(shape):
                raise WeightsFormatError(f"{self.source}: tensor {self.weights.hf_name(name)!r} has shape "
                                         f"{list(got)}, expected {list(shape)} for this config")

    # -- inputs ----------------------------------------------------------------------------
    def check_inputs(self, input_ids, attention_mask=None):
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise DTypeError(f"input_ids: expected integer token ids, got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise ShapeError(f"input_ids: expected [batch, tokens], got shape {list(ids.shape)}")
        vocab = self.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            bad = ids[(ids < 0) | (ids >= vocab)].reshape(-1)[0]
            raise OutOfRangeError(f"input_ids: token id {int(bad)} is outside the vocabulary [0, {vocab})")
        limit = self.max_positions
        if limit is not None and ids.shape[1] > limit:
            raise ShapeError(f"input_ids: {ids.shape[1]} tokens exceed max_position_embeddings={limit}")
        mask = None
        if attention_mask is not None:
            mask = np.asarray(attention_mask)
            if mask.ndim == 1:
                mask = mask[None]
            if mask.shape != ids.shape:
                raise ShapeError(f"attention_mask: shape {list(mask.shape)} differs from input_ids "
                                 f"{list(ids.shape)}")
            if mask.size and not np.all((mask == 0) | (mask == 1)):
                raise OutOfRangeError("attention_mask: expected only 0 and 1")
        return ids.astype(np.int64, copy=False), mask

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_positions(self) -> int | None:
        return None

    # -- text ------------------------------------------------------------------------------
    def encode(self, texts, pad_to: int | None = None) -> dict:
        """Token ids and attention mask from the checkpoint's tokenizer.json (HF convention).

        One text: no padding. Several: padded to the longest (never to the fixed length some
        shipped tokenizer.json files ask for), or to ``pad_to`` when given.
        """
        if self.tokenizer is None:
            raise ConfigError(f"{self.source}: no tokenizer.json next to the checkpoint")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        encs = self.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encs]
        width = max(lengths, default=0) if pad_to is None else pad_to
        if pad_to is not None and max(lengths, default=0) > pad_to:
            raise ShapeError(f"encode: a text has {max(lengths)} tokens, more than pad_to={pad_to}")
        pad_id = self.pad_token_id
        ids = np.full((len(texts), width), pad_id, np.int64)
        mask = np.zeros((len(texts), width), np.int64)
        types = np.zeros((len(texts), width), np.int64)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
            types[i, :len(e.ids)] = e.type_ids
        out = {"input_ids": ids, "attention_mask": mask}
        if self.family == "bert":
            out["token_type_ids"] = types
        return out

    @property
    def pad_token_id(self) -> int:
        pad = self.config.raw.get("pad_token_id") if hasattr(self.config, "raw") else None
        if pad is None and self.tokenizer is not None and self.tokenizer.padding:
            pad = self.tokenizer.padding.get("pad_id")
        return int(pad or 0)

    def __repr__(self):
        c = self.config
        return f"{type(self).__name__}({self.source!r}, {len(self.sites())} GEMM sites, vocab {c.vocab_size})"


def load_tokenizer(directory: Path | None):
    """tokenizers.Tokenizer from tokenizer.json, with padding and truncation turned off."""
    if directory is None:
        return None
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own Exception subclass
        raise WeightsFormatError(f"{path}: not a readable tokenizer.json ({e})") from None
    tok.no_padding()
    tok.no_truncation()
    return tok
