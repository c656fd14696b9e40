"""Sensitivity analysis and partial quantization (NVIDIA whitepaper section 5.1).

Quantize one GEMM site at a time (every other site float), measure a model-level metric
against the float model on evaluation data, rank the sites from most to least damaging, and
leave the k most sensitive in float. The quantized state (integer weights, calibrated ranges)
is computed once for the full recipe and shared by every one-site variant, so a site's score
depends only on that site.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weights_io.errors import ConfigError

from .quantized import QuantizedModel, _batches, quantize_model
from .recipes import Recipe


def _outputs(model, data):
    """Per batch: sentence embeddings (BERT) or logits with their mask (decoders)."""
    out = []
    for kwargs in _batches(data):
        if model.family == "bert":
            out.append(model.sentence_embedding(kwargs))
        else:
            out.append((model.forward(kwargs["input_ids"], kwargs.get("attention_mask")),
                        kwargs.get("attention_mask")))
    return out


def default_metric(family: str):
    """Higher is closer to float: mean embedding cosine (BERT), minus the mean logit KL in nats
    over real tokens (decoders)."""
    from .analysis import cosine, log_softmax

    if family == "bert":
        return lambda ref, test: float(np.mean(np.concatenate([cosine(r, t) for r, t in zip(ref, test)])))

    def neg_kl(ref, test):
        total, count = 0.0, 0
        for (r, mask), (t, _) in zip(ref, test):
            lp, lq = log_softmax(r), log_softmax(t)
            kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
            keep = np.ones(kl.shape, bool) if mask is None else np.asarray(mask) != 0
            total += float(kl[keep].sum())
            count += int(keep.sum())
        return -(total / max(count, 1)) + 0.0  # + 0.0: no "-0.000000" for identical logits
    return neg_kl


@dataclass
class SensitivityReport:
    """scores: {site: metric with only that site quantized}; float_score: the float model
    against itself; full_score: every site quantized; ranking: sites, most damaging first."""

    recipe: Recipe
    quantized: QuantizedModel
    scores: dict
    full_score: float
    float_score: float
    ranking: list

    def partial_recipe(self, k: int) -> Recipe:
        """The recipe with the k most sensitive sites left in float."""
        if not 0 <= k <= len(self.ranking):
            raise ConfigError(f"partial_recipe: k must be in [0, {len(self.ranking)}], got {k}")
        return self.recipe.with_float_sites(self.ranking[:k])

    def partial_model(self, k: int) -> QuantizedModel:
        """The quantized model with the k most sensitive sites computed in float."""
        self.partial_recipe(k)
        return self.quantized.with_float_sites(self.ranking[:k])

    def table(self, top: int | None = None) -> str:
        lines = [f"sensitivity of {self.recipe.name}: float {self.float_score:.6f}, all sites quantized "
                 f"{self.full_score:.6f}", f"  {'rank':>4}  {'metric, only this site quantized':>34}  site"]
        for i, site in enumerate(self.ranking[:top]):
            lines.append(f"  {i + 1:4d}  {self.scores[site]:34.6f}  {site}")
        return "\n".join(lines)


def sensitivity(model, recipe, data, metric=None, calib=None, progress: bool = True,
                **options) -> SensitivityReport:
    """Rank ``model``'s quantized sites by the damage each does alone (module docstring).

    data    evaluation batches (dicts from model.encode, or token-id arrays)
    metric  metric(reference_outputs, quantized_outputs) -> float, higher = closer to float;
            default: default_metric(model.family)
    calib   calibration batches, for recipes with static ranges
    """
    data = list(data)
    if not data:
        raise ConfigError("sensitivity: the evaluation data is empty")
    metric = metric or default_metric(model.family)
    full = quantize_model(model, recipe, calib=calib, progress=progress, **options)
    ref = _outputs(model, data)
    sites = list(full.quantized_sites)
    try:
        from tqdm import tqdm
        it = tqdm(sites, desc="sensitivity", unit="site", disable=None if progress else True, leave=False)
    except ImportError:  # pragma: no cover
        it = sites
    scores = {}
    for site in it:
        alone = full.with_float_sites([s for s in sites if s != site])
        scores[site] = float(metric(ref, _outputs(alone, data)))
    ranking = sorted(sites, key=lambda s: (scores[s], sites.index(s)))
    return SensitivityReport(full.recipe, full, scores, float(metric(ref, _outputs(full, data))),
                             float(metric(ref, ref)), ranking)
