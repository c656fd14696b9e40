"""Adam and AdamW in NumPy, step for step as torch.optim.Adam / AdamW (tests compare them).

Parameters are a dict {name: float array}, updated in place; gradients a dict with the same
names. AdamW decays weights decoupled from the gradient (p -= lr * weight_decay * p before the
Adam step); Adam adds weight_decay * p to the gradient (L2). By default no decay applies to
biases and normalization weights (1-D parameters), the usual BERT / ZeroQuant setting.
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError


def no_decay_default(name: str, param: np.ndarray) -> bool:
    """Biases and norm weights (any 1-D parameter) get no weight decay."""
    return param.ndim <= 1


class Adam:
    """Adam (Kingma & Ba) with PyTorch's bias correction: m = b1 m + (1 - b1) g,
    v = b2 v + (1 - b2) g^2, p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    decoupled = False

    def __init__(self, params: dict, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, no_decay=no_decay_default):
        if not (isinstance(lr, (int, float)) and lr > 0 and np.isfinite(lr)):
            raise ConfigError(f"{type(self).__name__}: the learning rate must be a positive number, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps <= 0 or weight_decay < 0:
            raise ConfigError(f"{type(self).__name__}: betas must lie in [0, 1), eps > 0, weight_decay >= 0")
        self.params, self.lr, self.betas, self.eps, self.wd = params, float(lr), betas, float(eps), float(weight_decay)
        self.decay = {n: not no_decay(n, p) for n, p in params.items()}
        self.m = {n: np.zeros_like(p) for n, p in params.items()}
        self.v = {n: np.zeros_like(p) for n, p in params.items()}
        self.t = 0

    def step(self, grads: dict) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for n, p in self.params.items():
            g = grads.get(n)
            if g is None:
                continue
            wd = self.wd if self.decay[n] else 0.0
            if wd and self.decoupled:
                p *= 1 - self.lr * wd
            elif wd:
                g = g + wd * p
            m, v = self.m[n], self.v[n]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v) / np.sqrt(c2) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), torch.optim.AdamW's default 0.01."""

    decoupled = True

    def __init__(self, params: dict, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, no_decay=no_decay_default):
        super().__init__(params, lr, betas, eps, weight_decay, no_decay)
