"""The activation a checkpoint's config names, as one forward/backward pair: the one table both
the models' forwards and the training blocks (LKD, QAT) read, so that training differentiates
the very function the model computes.

``model_activation(family, config)`` picks a family's activation from its config field (BERT
``hidden_act``, GPT-2 ``activation_function``, Llama ``hidden_act``) and refuses the names the
family does not run. ``Activation.forward(x, bias=None)`` gives (y, cache) of the activation of
v = x (+ bias, added first: the GEMM's bias fused in, same bits as adding it before);
``Activation.backward(dy, cache)`` gives (dx, dbias or None); it is None for an activation the
training path has no derivative of (``differentiable``), which LKD and QAT refuse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from weights_io.errors import ConfigError

from .backward import _sum_leading, gelu_erf_backward, gelu_tanh_backward, silu_backward
from .ops import gelu_erf_forward, gelu_tanh_forward, silu_forward


@dataclass(frozen=True)
class Activation:
    name: str
    forward: Callable
    backward: Callable | None

    def differentiable(self, what: str) -> "Activation":
        """self, or ConfigError naming the activation when training cannot differentiate it."""
        if self.backward is None:
            raise ConfigError(f"{what}: activation {self.name!r} has no backward in refquant's training "
                              f"path; {what} cannot train through it")
        return self


def _silu_forward(x, bias=None):
    v = x if bias is None else x + bias
    y, (v,) = silu_forward(v)
    return y, (v, bias)


def _silu_backward(dout, cache):
    v, bias = cache
    dv = silu_backward(dout, (v,))
    return dv, None if bias is None else _sum_leading(dv, 1)


ACTIVATIONS = {a.name: a for a in (
    Activation("gelu", gelu_erf_forward, gelu_erf_backward),                  # erf GELU (HF "gelu")
    Activation("gelu_new", gelu_tanh_forward, gelu_tanh_backward),            # tanh approximation
    Activation("gelu_pytorch_tanh", gelu_tanh_forward, gelu_tanh_backward),   # the same formula
    Activation("silu", _silu_forward, _silu_backward),
)}

# family: (config field, display name, the activations its forward runs)
FAMILY_ACTIVATIONS = {"bert": ("hidden_act", "BERT", ("gelu", "gelu_new", "gelu_pytorch_tanh")),
                      "gpt2": ("activation_function", "GPT-2", ("gelu_new", "gelu_pytorch_tanh", "gelu")),
                      "llama": ("hidden_act", "Llama", ("silu",))}


def model_activation(family: str, config, source: str = "") -> Activation:
    """The Activation that ``config`` names for ``family``; ConfigError for a name the family
    does not run (naming the field, the activation and the supported ones)."""
    field, shown, supported = FAMILY_ACTIVATIONS[family]
    name = getattr(config, field)
    if name not in supported:
        raise ConfigError(f"{source}: {field} {name!r} is not supported for {shown}; supported: "
                          f"{', '.join(supported)}")
    return ACTIVATIONS[name]


__all__ = ["Activation", "ACTIVATIONS", "FAMILY_ACTIVATIONS", "model_activation"]
