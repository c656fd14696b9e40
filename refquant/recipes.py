"""Named post-training quantization recipes: which GEMM sites get which weight spec,
activation spec and calibrator.

A recipe is a rule per site *role*: attention Linears (Q, K, V, output projection), FFN
Linears (BERT intermediate/output, GPT-2 c_fc/c_proj, Llama gate/up/down) and heads (BERT's
pooler). A decoder's lm_head stays float in every recipe, as in ModelOpt's and DeepSpeed's
configs. ``print(recipe(name))`` shows the whole mapping; ``recipe.plan(model)`` gives it per site.

    nvidia-ptq-{max,entropy,percentile,mse}  NVIDIA whitepaper PTQ (ModelOpt arithmetic):
        weights int8 per output row, symmetric, max-calibrated, narrow range [-127, 127];
        activations int8 per tensor, static, narrow, amax from the named calibrator on the
        calibration data (percentile 99.999 by default).
    q8bert-dq   Q8BERT's dynamic baseline: weights per tensor at 127 / max|W|, each input's
        scale from its own max|x|, bias quantized to int32 at s_x * s_w on the fly;
        embeddings quantized (per tensor).
    q8bert      Q8BERT static inference: activation thresholds from an EMA (decay 0.9999,
        filled with the first batch's max) over the calibration batches; int32 bias.
    zeroquant-w8a8  ZeroQuant (DeepSpeed arithmetic: scale = max / 2^(b-1)): int8 weights in
        ``num_groups`` contiguous blocks of output rows (48; quantize_model uses DeepSpeed's
        64 for GPT-2 and Llama, as its GPT-2 configs), per-token dynamic int8 activations on
        every Linear input; the word embeddings int8 with one scale per row (DeepSpeed's
        BERT configs quantize word_embeddings token-wise; quantize_model leaves a decoder's
        embeddings float, as its GPT-2 configs do).
        Row groups are whole output rows: num_groups must divide every quantized site's
        output rows, and a site whose rows it does not divide (fewer rows than groups, e.g. a
        grouped-query k_proj of 8 rows in 64 groups, or a row count that is no multiple) is
        refused when the recipe is planned on the model (``plan``: quantize_model, lkd), by a
        ShapeError naming the site, its rows, num_groups and a group count that fits every
        site. Why: DeepSpeed cuts ``weight.reshape(num_groups, -1)``; there that fails (torch
        refuses a size num_groups does not divide) or cuts rows into pieces, which no integer
        GEMM with one weight step per output row computes. Shrinking the count per site
        (min(num_groups, rows), a divisor) would be a quantization neither asked for nor
        DeepSpeed's, so refquant does not guess; pass a num_groups that fits, or float_sites.
    zeroquant-w4a8, zeroquant-w4a16  the paper's W4/8: int4 FFN weights, int8 attention weights;
        per-token int8 activations, or float activations.
    w8a16-channel, w4a16-g128  weight-only round-to-nearest (compressed-tensors arithmetic):
        int8 per output channel; int4 in groups of 128 along the input dimension (a shorter
        last group where the input dimension is not a multiple of 128: compressed-tensors
        refuses those, e.g. SmolLM2's 576).

Shared options of ``recipe(name, ...)``: quantize_embeddings (on for Q8BERT and ZeroQuant), bias ("float" or
"int32"), gelu10 (clip the GELU output feeding the second FFN GEMM at 10, NVIDIA's GELU10 for
BERT; it applies in calibration and inference), num_groups, percentile, float_sites (sites
left in float: partial quantization). Quantizing the attention matmuls (QK^T and PV) is off in
all three papers and not offered yet.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from weights_io.errors import ConfigError, ShapeError

from .dialects import dialect
from .quant import row_block_rows
from .spec import QuantSpec

ROLE_PATTERNS = (  # first match wins: "attention.output.dense" before "output.dense"
    ("attention", r"(attention\.self\.(query|key|value)|attention\.output\.dense|attn\.c_attn|attn\.c_proj|"
                  r"self_attn\.[qkvo]_proj)$"),
    ("ffn", r"(intermediate\.dense|output\.dense|mlp\.c_fc|mlp\.c_proj|mlp\.(gate|up|down)_proj)$"),
    ("head", r"^pooler\.dense$"),
    ("lm_head", r"^lm_head$"),
)


def site_role(site: str) -> str:
    """"attention", "ffn", "head" or "lm_head" for a GEMM site name of any family."""
    for role, pattern in ROLE_PATTERNS:
        if re.search(pattern, site):
            return role
    raise ConfigError(f"site {site!r}: not a known attention, FFN or head Linear")


def ffn_second_gemm(site: str) -> bool:
    """True for the FFN Linear whose input is the activation output (BERT output.dense,
    GPT-2 mlp.c_proj): where GELU10 clips."""
    return bool(re.search(r"(layer\.\d+\.output\.dense|mlp\.c_proj)$", site))


@dataclass(frozen=True)
class SiteRule:
    """How one GEMM site is quantized.

    weight      spec of the [out, in] weight (None: float weight)
    activation  spec of the site's input (None: float input); ``dynamic`` specs take their
                scale from each input, static ones from ``calibrator``
    calibrator  refquant.calib method for static activations ("max", "entropy", ...)
    calib_options  keyword options for it, as sorted (key, value) pairs
    bias        "float" (added after the float epilogue) or "int32" (round(b / (s_x * s_w)),
                added to the int32 accumulator, as Q8BERT's inference path)
    """

    weight: QuantSpec | None
    activation: QuantSpec | None = None
    calibrator: str | None = None
    calib_options: tuple = ()
    bias: str = "float"

    def __post_init__(self):
        if self.bias not in ("float", "int32"):
            raise ConfigError(f"SiteRule.bias: expected 'float' or 'int32', got {self.bias!r}")
        if self.activation is not None and not self.activation.dynamic and self.calibrator is None:
            raise ConfigError("SiteRule: a static activation spec needs a calibrator")
        if self.bias == "int32":
            if self.weight is None or self.activation is None:
                raise ConfigError("SiteRule: an int32 bias needs quantized weights and activations")
            if self.weight.granularity == "group" and self.weight.group_kind == "input":
                raise ConfigError("SiteRule: an int32 bias needs one weight scale per output channel; "
                                  "input-dimension groups have several")

    def describe(self) -> str:
        def spec(s):
            if s is None:
                return "float"
            g = s.granularity
            if g == "group":
                g = f"group({s.num_groups} row blocks)" if s.group_kind == "rows" else f"group({s.group_size})"
            rng = "narrow" if s.narrow else "full"
            kind = "dynamic" if s.dynamic else "static"
            return f"int{s.bits} {s.dialect or 'custom'} {g} {rng}" + (f" {kind}" if s is self.activation else "")
        cal = ""
        if self.calibrator:
            opts = ", ".join(f"{k}={v}" for k, v in self.calib_options)
            cal = f", calibrator {self.calibrator}" + (f"({opts})" if opts else "")
        return f"weights {spec(self.weight)}; inputs {spec(self.activation)}{cal}; bias {self.bias}"


@dataclass(frozen=True)
class Recipe:
    """A named mapping from GEMM sites to SiteRules (by role), plus model-wide options."""

    name: str
    summary: str
    attention: SiteRule | None
    ffn: SiteRule | None
    head: SiteRule | None = None
    embeddings: QuantSpec | None = None
    embedding_tables: tuple = ("word", "position")   # which tables ``embeddings`` applies to
    gelu10: bool = False
    float_sites: frozenset = field(default_factory=frozenset)

    def rule(self, site: str) -> SiteRule | None:
        """The rule for ``site`` (None: the site stays float)."""
        if site in self.float_sites:
            return None
        role = site_role(site)
        return None if role == "lm_head" else getattr(self, role)

    def plan(self, model) -> dict:
        """{site: SiteRule or None} for every GEMM site of ``model``, in execution order. A site
        whose weight the recipe cuts into row-block groups that are not whole output rows is
        refused here (ShapeError naming the site, its rows and num_groups; contract rule 7)."""
        unknown = set(self.float_sites) - set(model.sites())
        if unknown:
            raise ConfigError(f"recipe {self.name}: float_sites names sites the model lacks: "
                              f"{', '.join(sorted(unknown))}")
        plan = {site: self.rule(site) for site in model.sites()}
        self._check_row_groups(model, plan)
        return plan

    def _check_row_groups(self, model, plan: dict) -> None:
        shapes = model.expected_shapes()
        row_grouped = {site: (shapes[site + ".weight"], rule.weight) for site, rule in plan.items()
                       if rule is not None and rule.weight is not None and rule.weight.granularity == "group"
                       and rule.weight.group_kind == "rows"}
        for site, (shape, spec) in row_grouped.items():
            try:
                row_block_rows(shape, spec, f"recipe {self.name}: site {site}")
            except ShapeError as e:
                rows = math.gcd(*(int(s[0]) for s, _ in row_grouped.values()))
                fits = max(g for g in range(1, min(rows, spec.num_groups) + 1) if rows % g == 0)
                raise ShapeError(f"{e}; num_groups={fits} divides every row-grouped site's rows "
                                 f"(or leave {site} float: float_sites)") from None

    @property
    def needs_calibration(self) -> bool:
        return any(r is not None and r.calibrator for r in (self.attention, self.ffn, self.head))

    def with_float_sites(self, sites) -> "Recipe":
        return replace(self, float_sites=frozenset(sites))

    def describe(self, model=None) -> str:
        lines = [f"recipe {self.name}: {self.summary}"]
        for role in ("attention", "ffn", "head"):
            r = getattr(self, role)
            lines.append(f"  {role:9s} {r.describe() if r else 'float'}")
        lines.append("  lm_head   float")
        emb = self.embeddings
        tables = "+".join(self.embedding_tables)
        lines.append(f"  embeddings {'float' if emb is None else f'{tables}: int{emb.bits} {emb.dialect} {emb.granularity}'}"
                     + ("; GELU output clipped at 10 (GELU10)" if self.gelu10 else ""))
        if self.float_sites:
            lines.append(f"  left float: {', '.join(sorted(self.float_sites))}")
        if model is not None:
            plan = self.plan(model)
            lines.append(f"  {sum(r is not None for r in plan.values())} of {len(plan)} sites quantized")
        return "\n".join(lines)

    __str__ = describe


# ---------------------------------------------------------------------------------------
# the named recipes
# ---------------------------------------------------------------------------------------
def _nvidia(method, percentile, bias):
    weight = dialect("modelopt", granularity="channel", axis=0, narrow=True)
    act = dialect("modelopt", narrow=True)
    opts = (("percentile", float(percentile)),) if method == "percentile" else ()
    rule = SiteRule(weight, act, method, opts, bias)
    return dict(summary=f"NVIDIA PTQ: int8 per-row max weights, static per-tensor int8 inputs ({method} "
                        "calibration), narrow range", attention=rule, ffn=rule, head=rule,
                embeddings=dialect("modelopt", granularity="channel", axis=0, narrow=True))


def _q8bert(static, bias):
    weight = dialect("q8bert")
    act = dialect("q8bert", dynamic=not static)
    rule = SiteRule(weight, act, "ema" if static else None, (("decay", 0.9999),) if static else (), bias)
    what = "static EMA(0.9999) input thresholds" if static else "each input's own max|x| (dynamic)"
    return dict(summary=f"Q8BERT: int8 per-tensor weights at 127/max, {what}, int32 bias",
                attention=rule, ffn=rule, head=rule, embeddings=dialect("q8bert"))


def _zeroquant(ffn_bits, activations, num_groups, bias):
    act = dialect("deepspeed", granularity="token", dynamic=True) if activations else None

    def weights(bits):
        return dialect("deepspeed", bits=bits, granularity="group", group_kind="rows", num_groups=num_groups)
    attention = SiteRule(weights(8), act, bias=bias)
    ffn = SiteRule(weights(ffn_bits), act, bias=bias)
    w = "W8" if ffn_bits == 8 else "W4/8 (int4 FFN, int8 attention)"
    a = "per-token dynamic int8 inputs" if activations else "float inputs"
    return dict(summary=f"ZeroQuant {w}: {num_groups} row-block groups of whole output rows (num_groups must "
                        f"divide every site's rows), {a}", attention=attention, ffn=ffn,
                head=attention, embeddings=dialect("deepspeed", granularity="channel", axis=0),
                embedding_tables=("word",))


def _weight_only(bits, group):
    if group:
        weight = dialect("compressed_tensors", bits=bits, granularity="group", group_kind="input",
                         group_size=group, axis=-1, partial_group="allow")
    else:
        weight = dialect("compressed_tensors", bits=bits, granularity="channel", axis=0)
    rule = SiteRule(weight)
    what = f"groups of {group} along the input" if group else "per output channel"
    return dict(summary=f"weight-only round-to-nearest int{bits}, {what}; float inputs",
                attention=rule, ffn=rule, head=rule,
                embeddings=dialect("compressed_tensors", granularity="channel", axis=0))


_DEFAULT_EMBEDDINGS = {"q8bert", "q8bert-dq", "zeroquant-w8a8", "zeroquant-w4a8", "zeroquant-w4a16"}

RECIPES = ("nvidia-ptq-max", "nvidia-ptq-entropy", "nvidia-ptq-percentile", "nvidia-ptq-mse", "q8bert-dq",
           "q8bert", "zeroquant-w8a8", "zeroquant-w4a8", "zeroquant-w4a16", "w8a16-channel", "w4a16-g128")


def recipe(name: str, *, quantize_embeddings: bool | None = None, bias: str | None = None,
           gelu10: bool = False, num_groups: int = 48, percentile: float = 99.999,
           float_sites=()) -> Recipe:
    """The named recipe (RECIPES), with the shared options applied (module docstring)."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"recipe {name}: percentile must be in (0, 100], got {percentile}")
    if name.startswith("nvidia-ptq-"):
        parts = _nvidia(name.rsplit("-", 1)[1], percentile, bias or "float")
    elif name.startswith("q8bert"):
        parts = _q8bert(name == "q8bert", bias or "int32")
    elif name.startswith("zeroquant-"):
        parts = _zeroquant(4 if "w4" in name else 8, name.endswith("a8"), num_groups, bias or "float")
    else:
        if bias == "int32":
            raise ConfigError(f"recipe {name}: weight-only recipes have float inputs, so no int32 bias")
        parts = _weight_only(4 if name.startswith("w4") else 8, 128 if name.endswith("g128") else None)
    embed = name in _DEFAULT_EMBEDDINGS if quantize_embeddings is None else quantize_embeddings
    if not embed:
        parts["embeddings"] = None
    return Recipe(name=name, gelu10=gelu10, float_sites=frozenset(float_sites), **parts)
