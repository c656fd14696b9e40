"""ZeroQuant's layer-by-layer knowledge distillation (LKD), without a separate teacher model.

For block k = 1..L: the input X is the FLOAT model's hidden state after blocks 1..k-1 (the
teacher's), the target is float block k's output on X, and the student is block k with its
weights and GEMM inputs fake-quantized by the recipe (straight-through gradients, "identity" as
DeepSpeed). loss = mean squared error over real tokens; Adam on block k's float master weights
for ``steps`` steps; then block k's trained weights are kept and LKD moves to block k + 1. Only
one block's parameters and optimizer state are in memory at a time. The result is the float
model with the distilled weights (``model.with_weights``): quantize it with the same recipe.
"""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError, NonFiniteError, TrainingError

from ..quantized import resolve_recipe
from ..recipes import Recipe
from . import blocks
from .blocks import SiteLinear
from .optim import Adam


def random_batches(model, n: int, tokens: int, batch_size: int = 8, seed: int = 0) -> list:
    """n sequences of uniformly random token ids (the data the ZeroQuant paper's Table 10 tries)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(0, n, batch_size):
        ids = rng.integers(0, model.config.vocab_size, size=(min(batch_size, n - i), tokens))
        b = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if model.family == "bert":
            b["token_type_ids"] = np.zeros_like(ids)
        out.append(b)
    return out


def _mse(y, target, mask):
    """(mean squared error over real tokens, its gradient with respect to y)."""
    w = np.asarray(mask)[..., None].astype(np.float32)
    count = float(w.sum()) * y.shape[-1]
    diff = (y - target) * w
    return float(np.sum(diff.astype(np.float64) ** 2) / count), (2.0 / count) * diff


def _student_sites(block, rec: Recipe, k: int) -> dict:
    plan = rec.plan(block.model)
    sites = {}
    for s in block.sites:
        rule = plan.get(block.prefix(k) + s)
        if rule is None:
            continue
        if rule.activation is not None and not rule.activation.dynamic:
            raise ConfigError(f"LKD: recipe {rec.name} has static input ranges; LKD here runs recipes with "
                              "dynamic (per-token) activations, as ZeroQuant's")
        sites[s] = SiteLinear(rule.weight, rule.activation, ste_rule="identity")
    return sites


def lkd(model, recipe, data: list, steps: int = 64, lr: float = 1e-4, progress: bool = True, **options):
    """(distilled model, [per block: block, loss_before / loss_after (mean over the data with the
    student before and after training), loss_first_step, loss_last_step, seconds]). ``data`` is a
    list of batches (dicts from model.encode, or random_batches); each step uses the next batch.
    ``recipe`` and ``options`` as for quantize_model (e.g. num_groups)."""
    import time

    from tqdm import tqdm
    if not (isinstance(steps, int) and steps > 0):
        raise ConfigError(f"LKD: steps must be a positive integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and np.isfinite(lr)):
        raise ConfigError(f"LKD: the learning rate must be a positive number, got {lr!r}")
    if not data or not any(np.any(np.asarray(b["attention_mask"])) for b in data):
        raise ConfigError("LKD: the data holds no tokens")
    model.activation.differentiable("LKD")
    rec = resolve_recipe(model, recipe, **options)
    block = blocks.Block(model)
    masks = [np.asarray(b["attention_mask"]) for b in data]
    xs = [block.embed(b) for b in data]
    trained, report = {}, []
    for k in range(block.count):
        t0 = time.perf_counter()
        targets = [block.teacher(k, x, m) for x, m in zip(xs, masks)]
        params = block.params(k)
        sites = _student_sites(block, rec, k)
        opt = Adam(params, lr=lr)

        def data_loss():  # mean over all batches, with the current student
            total = 0.0
            for x, m, y_t in zip(xs, masks, targets):
                y = block.forward(params, x, m, sites)[0]
                total += _mse(y, y_t, m)[0]
            return total / len(xs)
        before = data_loss()
        bar = tqdm(range(steps), desc=f"LKD block {k}", leave=False, disable=None if progress else True)
        first = last = None
        for step in bar:
            j = step % len(xs)
            try:
                y, cache = block.forward(params, xs[j], masks[j], sites)
                loss, dy = _mse(y, targets[j], masks[j])
            except NonFiniteError:  # weights or activations no longer finite: fake quant refuses them
                loss = float("nan")
            if not np.isfinite(loss):
                partial = model.with_weights(trained)
                raise TrainingError(f"LKD: the loss became {loss} at block {k}, step {step}; blocks 0..{k - 1} "
                                    "are distilled (the error's .partial holds them)", partial)
            first = loss if first is None else first
            last = loss
            _, grads = block.backward(dy, cache)
            opt.step(grads)
            bar.set_postfix(loss=f"{loss:.3e}")
        trained.update({block.prefix(k) + n: v for n, v in params.items()})
        report.append({"block": k, "loss_before": before, "loss_after": data_loss(), "loss_first_step": first,
                       "loss_last_step": last, "seconds": time.perf_counter() - t0})
        xs = targets  # the teacher's hidden state feeds the next block
    return model.with_weights(trained), report
