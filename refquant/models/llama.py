"""Llama (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention), as transformers
computes it."""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError

from ..nn import attention_forward, embedding_forward, rms_norm_forward, rope_forward, rope_tables
from ..nn.activations import model_activation
from .base import Model
from ..floats import canonical_nan

F32 = np.float32


class Llama(Model):
    family = "llama"
    embedding_weight = "embed_tokens.weight"

    def __init__(self, config, weights, tokenizer=None, source="", stream=False):
        self.activation = model_activation(self.family, config, source)  # hidden_act: the SwiGLU gate
        scaling = config.rope_scaling
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ConfigError(f"{source}: rope_scaling {scaling!r} is not supported (default RoPE only)")
        super().__init__(config, weights, tokenizer, source, stream)

    @property
    def max_positions(self):
        return self.config.max_position_embeddings

    def sites(self):
        out = []
        for i in range(self.config.num_hidden_layers):
            a, m = f"layers.{i}.self_attn", f"layers.{i}.mlp"
            out += [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.o_proj",
                    f"{m}.gate_proj", f"{m}.up_proj", f"{m}.down_proj"]
        return out + ["lm_head"]

    def expected_shapes(self):
        c = self.config
        C, I, D = c.hidden_size, c.intermediate_size, c.head_dim
        H, Hkv = c.num_attention_heads, c.num_key_value_heads
        shapes = {"embed_tokens.weight": (c.vocab_size, C), "norm.weight": (C,)}
        dims = {"self_attn.q_proj": (H * D, C), "self_attn.k_proj": (Hkv * D, C),
                "self_attn.v_proj": (Hkv * D, C), "self_attn.o_proj": (C, H * D),
                "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
        for i in range(c.num_hidden_layers):
            for site, (o, n) in dims.items():
                shapes[f"layers.{i}.{site}.weight"] = (o, n)
                bias = c.attention_bias if site.startswith("self_attn") else c.mlp_bias
                if bias:
                    shapes[f"layers.{i}.{site}.bias"] = (o,)
            shapes[f"layers.{i}.input_layernorm.weight"] = (C,)
            shapes[f"layers.{i}.post_attention_layernorm.weight"] = (C,)
        if self.head_weight == "lm_head.weight":
            shapes["lm_head.weight"] = (c.vocab_size, C)
        return shapes

    def rms_norm(self, name, x):
        return rms_norm_forward(x, self.w(name + ".weight"), self.config.rms_norm_eps)[0]

    def attention(self, i, x, mask, cos, sin):
        B, T, _ = x.shape
        c = self.config
        a = f"layers.{i}.self_attn"

        def heads(site, n):  # [B, T, C] -> [B, n, T, D]
            return self.linear_heads(f"{a}.{site}", x, n)

        q = rope_forward(heads("q_proj", c.num_attention_heads), cos, sin)[0]
        k = rope_forward(heads("k_proj", c.num_key_value_heads), cos, sin)[0]
        v = heads("v_proj", c.num_key_value_heads)
        ctx = attention_forward(q, k, v, key_mask=mask, causal=True)[0]
        return self.linear(f"{a}.o_proj", ctx.transpose(0, 2, 1, 3).reshape(B, T, -1))

    def mlp(self, i, x):
        m = f"layers.{i}.mlp"
        gate = self.activation.forward(self.linear(f"{m}.gate_proj", x))[0]
        return self.linear(f"{m}.down_proj", gate * self.linear(f"{m}.up_proj", x))  # SwiGLU

    def block(self, i, x, mask, cos, sin):
        x = x + self.attention(i, self.rms_norm(f"layers.{i}.input_layernorm", x), mask, cos, sin)
        return x + self.mlp(i, self.rms_norm(f"layers.{i}.post_attention_layernorm", x))

    def forward(self, input_ids, attention_mask=None):
        """Logits [B, T, V] (float32; NaN canonical, contract rule 12). Positions are 0..T-1
        (right padding)."""
        ids, mask = self.check_inputs(input_ids, attention_mask)
        cos, sin = rope_tables(np.arange(ids.shape[1]), self.config.head_dim, self.config.rope_theta)
        x = embedding_forward(ids, self.w("embed_tokens.weight"))[0]
        for i in range(self.config.num_hidden_layers):
            x = self.block(i, x, mask, cos, sin)
        return canonical_nan(self.linear("lm_head", self.rms_norm("norm", x)))
