"""BERT (post-LN encoder), as transformers' BertModel computes it, in float32."""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError, OutOfRangeError, ShapeError

from ..nn import attention_forward, embedding_forward, layer_norm_forward, residual_layer_norm_forward
from ..nn.activations import model_activation
from .base import Model
from ..floats import canonical_nan, sums_in_order

F32 = np.float32


class Bert(Model):
    family = "bert"

    def __init__(self, config, weights, tokenizer=None, source="", stream=False):
        self.activation = model_activation(self.family, config, source)  # hidden_act (nn.activations)
        super().__init__(config, weights, tokenizer, source, stream)

    @property
    def max_positions(self):
        return self.config.max_position_embeddings

    @property
    def has_pooler(self) -> bool:
        return "pooler.dense.weight" in self.weights

    def sites(self):
        out = []
        for i in range(self.config.num_hidden_layers):
            p = f"encoder.layer.{i}"
            out += [f"{p}.attention.self.query", f"{p}.attention.self.key", f"{p}.attention.self.value",
                    f"{p}.attention.output.dense", f"{p}.intermediate.dense", f"{p}.output.dense"]
        return out + (["pooler.dense"] if self.has_pooler else [])

    def forward_sites(self):
        return [s for s in self.sites() if s != "pooler.dense"]

    def expected_shapes(self):
        c = self.config
        C, I = c.hidden_size, c.intermediate_size
        shapes = {"embeddings.word_embeddings.weight": (c.vocab_size, C),
                  "embeddings.position_embeddings.weight": (c.max_position_embeddings, C),
                  "embeddings.token_type_embeddings.weight": (c.type_vocab_size, C),
                  "embeddings.LayerNorm.weight": (C,), "embeddings.LayerNorm.bias": (C,)}
        dims = {"attention.self.query": (C, C), "attention.self.key": (C, C), "attention.self.value": (C, C),
                "attention.output.dense": (C, C), "intermediate.dense": (I, C), "output.dense": (C, I)}
        for i in range(c.num_hidden_layers):
            p = f"encoder.layer.{i}"
            for site, (o, n) in dims.items():
                shapes[f"{p}.{site}.weight"] = (o, n)
                shapes[f"{p}.{site}.bias"] = (o,)
            for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
                shapes[f"{p}.{ln}.weight"] = (C,)
                shapes[f"{p}.{ln}.bias"] = (C,)
        if "pooler.dense.weight" in self.weights:
            shapes.update({"pooler.dense.weight": (C, C), "pooler.dense.bias": (C,)})
        return shapes

    # -- forward -----------------------------------------------------------------------------
    def layer_norm(self, name, x):
        return layer_norm_forward(x, self.w(name + ".weight"), self.w(name + ".bias"),
                                  self.config.layer_norm_eps)[0]

    def residual_layer_norm(self, name, x, y_and_bias):
        """layer_norm(x + (y + b)) with (y, b) from linear_and_bias: one fused pass."""
        return residual_layer_norm_forward(x, *y_and_bias, self.w(name + ".weight"), self.w(name + ".bias"),
                                           self.config.layer_norm_eps)[0]

    def embed(self, ids, token_type_ids):
        T = ids.shape[1]
        x = embedding_forward(ids, self.w("embeddings.word_embeddings.weight"))[0]
        x = x + self.w("embeddings.position_embeddings.weight")[:T]
        x = x + embedding_forward(token_type_ids, self.w("embeddings.token_type_embeddings.weight"))[0]
        return self.layer_norm("embeddings.LayerNorm", x)  # [B, T] -> [B, T, C]

    def self_attention(self, i, x, mask):
        """(y, b) of the attention output projection, b still to add."""
        B, T, C = x.shape
        H = self.config.num_attention_heads
        p = f"encoder.layer.{i}.attention"

        def heads(site):  # [B, T, C] -> [B, H, T, D], written by the GEMM with its bias
            return self.linear_heads(f"{p}.self.{site}", x, H)

        ctx = attention_forward(heads("query"), heads("key"), heads("value"), key_mask=mask)[0]
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, C)
        return self.linear_and_bias(f"{p}.output.dense", ctx)  # [B, T, C] -> [B, T, C]

    def ffn(self, i, x):
        """(y, b) of the second FFN GEMM, b still to add; the first GEMM's bias is added in GELU."""
        h = self.activation.forward(*self.linear_and_bias(f"encoder.layer.{i}.intermediate.dense", x))[0]
        return self.linear_and_bias(f"encoder.layer.{i}.output.dense", h)  # [B, T, C] -> [B, T, C]

    def block(self, i, x, mask):
        p = f"encoder.layer.{i}"
        x = self.residual_layer_norm(f"{p}.attention.output.LayerNorm", x, self.self_attention(i, x, mask))
        return self.residual_layer_norm(f"{p}.output.LayerNorm", x, self.ffn(i, x))  # post-LN

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Last hidden state [B, T, C] (float32; NaN canonical, contract rule 12)."""
        ids, mask = self.check_inputs(input_ids, attention_mask)
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        if types.ndim == 1:
            types = types[None]
        if types.shape != ids.shape:
            raise ShapeError(f"token_type_ids: shape {list(types.shape)} differs from input_ids {list(ids.shape)}")
        if types.size and (types.min() < 0 or types.max() >= self.config.type_vocab_size):
            raise OutOfRangeError(f"token_type_ids: values must lie in [0, {self.config.type_vocab_size})")
        x = self.embed(ids, types)
        for i in range(self.config.num_hidden_layers):
            x = self.block(i, x, mask)
        return canonical_nan(x)

    def pooled(self, hidden):
        """tanh(dense(hidden[:, 0])): the pooler output, when the checkpoint has one."""
        if not self.has_pooler:
            raise ConfigError(f"{self.source}: this checkpoint has no pooler (pooler.dense.weight)")
        return canonical_nan(np.tanh(self.linear("pooler.dense", hidden[:, 0])))

    def sentence_embedding(self, batch, normalize=False):
        """Mean of the last hidden state over real tokens (sentence-transformers' pooling)."""
        hidden = self.forward(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        return mean_pool(hidden, batch.get("attention_mask"), normalize)


def mean_pool(hidden, attention_mask=None, normalize=False):
    """sum(hidden * mask) / max(sum(mask), 1e-9) over tokens, as sentence-transformers' Pooling,
    in contract rule 14's order: the tokens t = 0 .. T-1 added one after another in float32 (so a
    sentence's embedding is the same alone, in a batch, or padded); ``normalize`` divides by
    the L2 norm, its squares summed left to right in float64."""
    B, T, C = hidden.shape
    m = np.ones((B, T), F32) if attention_mask is None else np.asarray(attention_mask, F32)
    total = np.zeros((B, C), F32)
    for t in range(T):
        total += hidden[:, t] * m[:, t, None]
    emb = total / np.maximum(m.sum(axis=1), F32(1e-9))[:, None]  # token counts: exact in float32
    if normalize:
        norm = np.sqrt(sums_in_order(emb.astype(np.float64) ** 2)).astype(F32)
        emb = emb / np.maximum(norm, F32(1e-12))[:, None]
    return canonical_nan(emb.astype(F32))
