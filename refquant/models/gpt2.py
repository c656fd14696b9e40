"""GPT-2 (pre-LN decoder, learned positions, tied LM head), as transformers computes it."""
from __future__ import annotations

import numpy as np

from ..nn import attention_forward, embedding_forward, layer_norm_forward
from ..nn.activations import model_activation
from .base import Model
from ..floats import canonical_nan

F32 = np.float32


class GPT2(Model):
    family = "gpt2"
    embedding_weight = "wte.weight"

    def __init__(self, config, weights, tokenizer=None, source="", stream=False):
        self.activation = model_activation(self.family, config, source)  # activation_function
        super().__init__(config, weights, tokenizer, source, stream)

    @property
    def max_positions(self):
        return self.config.n_positions

    def sites(self):
        out = []
        for i in range(self.config.n_layer):
            out += [f"h.{i}.attn.c_attn", f"h.{i}.attn.c_proj", f"h.{i}.mlp.c_fc", f"h.{i}.mlp.c_proj"]
        return out + ["lm_head"]

    def expected_shapes(self):
        c = self.config
        C, I = c.n_embd, c.n_inner
        shapes = {"wte.weight": (c.vocab_size, C), "wpe.weight": (c.n_positions, C),
                  "ln_f.weight": (C,), "ln_f.bias": (C,)}
        dims = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (I, C), "mlp.c_proj": (C, I)}
        for i in range(c.n_layer):
            for site, (o, n) in dims.items():
                shapes[f"h.{i}.{site}.weight"] = (o, n)
                shapes[f"h.{i}.{site}.bias"] = (o,)
            for ln in ("ln_1", "ln_2"):
                shapes[f"h.{i}.{ln}.weight"] = (C,)
                shapes[f"h.{i}.{ln}.bias"] = (C,)
        if self.head_weight == "lm_head.weight":
            shapes["lm_head.weight"] = (c.vocab_size, C)
        return shapes

    def layer_norm(self, name, x):
        return layer_norm_forward(x, self.w(name + ".weight"), self.w(name + ".bias"),
                                  self.config.layer_norm_epsilon)[0]

    def attention(self, i, x, mask):
        B, T, C = x.shape
        H = self.config.n_head
        qkv = self.linear_heads(f"h.{i}.attn.c_attn", x, 3 * H)  # [B, T, C] -> [B, 3H, T, D]
        q, k, v = np.split(qkv, 3, axis=1)  # each [B, H, T, D], contiguous per head
        ctx = attention_forward(q, k, v, key_mask=mask, causal=True)[0]
        return self.linear(f"h.{i}.attn.c_proj", ctx.transpose(0, 2, 1, 3).reshape(B, T, C))

    def mlp(self, i, x):
        return self.linear(f"h.{i}.mlp.c_proj", self.activation.forward(self.linear(f"h.{i}.mlp.c_fc", x))[0])

    def block(self, i, x, mask):
        x = x + self.attention(i, self.layer_norm(f"h.{i}.ln_1", x), mask)  # pre-LN
        return x + self.mlp(i, self.layer_norm(f"h.{i}.ln_2", x))

    def forward(self, input_ids, attention_mask=None):
        """Logits [B, T, V] (float32; NaN canonical, contract rule 12). Positions are 0..T-1
        (right padding)."""
        ids, mask = self.check_inputs(input_ids, attention_mask)
        T = ids.shape[1]
        x = embedding_forward(ids, self.w("wte.weight"))[0] + self.w("wpe.weight")[:T]
        for i in range(self.config.n_layer):
            x = self.block(i, x, mask)
        return canonical_nan(self.linear("lm_head", self.layer_norm("ln_f", x)))
