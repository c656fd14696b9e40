"""QuantizedModel: a float model with its GEMM sites quantized by a recipe.

``quantize_model(model, recipe, calib=batches)`` quantizes every site's weight once (integer
values and scales are kept: int8 arrays, int4 values in int8), calibrates static activation
ranges on ``calib`` (the float model runs; each site's input is observed, after GELU10's clip
where the recipe asks for it) and returns a QuantizedModel. Its forward is the float model's
forward with each site computed as

    y = fake_quant(x) @ dequantize(W_q).T + b      (bias "float")
    y = fake_quant(x) @ dequantize(W_q).T + q_b * (s_x * s_w),
        q_b = clip(round(b / (s_x * s_w)), -(2^31 - 1), 2^31 - 1)   (bias "int32", Q8BERT)

in float32 NumPy (the fake-quant path; the integer kernels come through the same object).
Non-GEMM ops (softmax, LayerNorm, GELU, residual adds) stay float32, as in all three papers.
Quantized embeddings are dequantized tables; with tied embeddings the LM head multiplies by
the quantized table.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from weights_io.errors import ConfigError, ShapeError

from .nn import linear_forward
from .quant import (QParams, choose_qparams, dequantize, fake_quant, per_output_row, qparams_from_amax,
                    quantize)
from .recipes import Recipe, SiteRule, ffn_second_gemm, recipe as named_recipe

F32 = np.float32
INT32_LIMIT = 2 ** 31 - 1
GELU10 = F32(10.0)
ZEROQUANT_GROUPS = {"bert": 48, "gpt2": 64, "llama": 64}  # DeepSpeed's BERT and GPT-2 configs
EMBEDDINGS = {"bert": {"word": "embeddings.word_embeddings.weight", "position": "embeddings.position_embeddings.weight"},
              "gpt2": {"word": "wte.weight", "position": "wpe.weight"}, "llama": {"word": "embed_tokens.weight"}}


@dataclass
class QuantizedSite:
    """One GEMM site: its rule, integer weight and scales, static input range.

    ``weight_q`` is the int8 [out, in] weight (int4 values when bits=4). Once the numba kernels
    have prepacked it (``packed``, their layout), the canonical array is released, so that the
    integer weights are held once; reading ``weight_q`` then unpacks a fresh copy, byte for byte.
    """

    name: str
    rule: SiteRule
    _weight_q: np.ndarray | None = field(default=None, repr=False)
    weight_qp: QParams | None = None
    input_amax: float | None = None         # static activations: the calibrated range
    input_qp: QParams | None = None
    packed: object = field(default=None, repr=False)  # cpu.PackedWeight / PackedW4, once built

    @property
    def weight_q(self) -> np.ndarray | None:
        if self._weight_q is None and self.packed is not None:
            return self.packed.unpack() if hasattr(self.packed, "unpack") else self.packed.values()
        return self._weight_q

    @weight_q.setter
    def weight_q(self, value) -> None:
        self._weight_q, self.packed = value, None

    def hold_packed(self, packed) -> None:
        """Keep only the kernels' packed copy of the weight (weight_q unpacks it on demand)."""
        self._weight_q, self.packed = None, packed

    def weight_shape(self) -> tuple:
        return (self.packed.N, self.packed.K) if self._weight_q is None else self._weight_q.shape

    def held_arrays(self) -> list:
        """The arrays this site holds for its weight: one integer copy and the scales."""
        held = [self._weight_q] if self._weight_q is not None else \
            [getattr(self.packed, part, None) for part in ("data", "colinit")]
        return [a for a in held + [self.weight_qp.scale, self.weight_qp.multiplier] if a is not None]

    def weight_scale_per_row(self) -> np.ndarray:
        """s_w per output row (for the int32 bias): channel scales, or each row's group scale."""
        qp = self.weight_qp
        return per_output_row(qp.scale, self.weight_shape(), qp.spec, self.name + ".weight").astype(F32)


class DequantizedRows:
    """An int8 embedding table that dequantizes only the rows an index picks (``table[ids]``,
    ``table[:T]``): the same bits as dequantizing the whole table and indexing it, without
    holding a float32 copy. ``np.asarray`` gives the whole float32 table (a tied LM head)."""

    def __init__(self, q: np.ndarray, qp: QParams, name: str):
        self.q, self.qp, self.name = q, qp, name
        self.shape, self.ndim, self.dtype = q.shape, q.ndim, np.dtype(F32)

    def _params_for(self, rows) -> QParams:
        if self.qp.spec.granularity == "tensor":
            return self.qp
        pick = (lambda a: None if a is None else np.asarray(a)[rows])
        return QParams(pick(self.qp.scale), pick(self.qp.zero_point), self.qp.spec,
                       pick(self.qp.multiplier), pick(self.qp.offset))

    def __getitem__(self, index):
        rows = np.arange(self.shape[0])[index]
        q = self.q[rows]
        if self.qp.spec.granularity == "tensor":
            return dequantize(q, self.qp, self.name)
        flat = rows.reshape(-1)
        out = dequantize(q.reshape(-1, self.shape[1]), self._params_for(flat), self.name)
        return out.reshape(q.shape)

    def __array__(self, dtype=None, copy=None):
        full = dequantize(self.q, self.qp, self.name)
        return full if dtype is None else full.astype(dtype)


class QuantizedModel:
    """A model whose GEMM sites are quantized by ``recipe`` (see the module docstring).

    Everything the float model offers (encode, sentence_embedding, sites, config, family, ...)
    is available here and runs through the quantized sites.
    """

    def __init__(self, model, recipe: Recipe, sites: dict, embeddings: dict):
        self.float_model = model
        self.recipe = recipe
        self.quantized_sites = sites            # {site: QuantizedSite}, quantized sites only
        self.embeddings = embeddings            # {weight name: (int8 table, QParams)}
        self.saturation = None                  # {site: [saturated, total]} while tracked
        self.uncalibrated: list[str] = []       # static sites calibration never reached: float
        self._dequantized: dict = {}            # {site: float32 weight, "packed:" + site: its PackedF32, ...}
        self._net = copy.copy(model)            # shares weights and caches; its linear is ours
        self._net.linear = self._site
        self._net.w = self._w
        # forward's default: the integer path, unless a site's specs are outside what the
        # integer kernels run (affine or unsigned activations or weights): then fake-quant
        self.backend = "numba" if not self.integer_unsupported() else "fake"
        self._kernel_weights: dict = {}         # {(backend, site): weights in that kernel's layout}

    def __getattr__(self, name):  # forward, encode, sentence_embedding, sites, family, ...
        if name.startswith("_") or name in ("float_model", "recipe", "quantized_sites", "embeddings",
                                            "uncalibrated", "saturation", "backend"):
            raise AttributeError(name)
        return getattr(self._net, name)

    def forward(self, *args, backend: str | None = None, **kwargs):
        """The float model's forward with every quantized site computed by ``backend``:

        "numba"  the real integer path on refquant.kernels.cpu (int8 / int4 weights resident,
                 activations quantized per the recipe, exact int32 GEMMs, float32 epilogues);
        "numpy"  the same integer path on refquant.kernels.reference: identical bytes;
        "cuda"   the same integer path on refquant.kernels.cuda (numba.cuda on a GPU, or the
                 CUDA simulator; weights resident on the device): identical bytes;
        "fake"   the fake-quant float32 path: fake_quant(x) @ dequantize(W).T + b (module doc).
        Default: ``self.backend`` ("numba"; "fake" when the recipe has affine or unsigned specs,
        which the integer kernels do not run), which sentence_embedding, perplexity etc. use.
        """
        previous = self.backend
        self.backend = previous if backend is None else _check_backend(backend)
        if self.backend == "cuda":
            try:
                _kernels("cuda")
            except ConfigError:
                self.backend = previous
                raise
        if self.backend != "fake":
            unsupported = self.integer_unsupported()
            if unsupported:
                self.backend = previous
                raise ConfigError(f"backend {backend!r}: the integer kernels cannot run this recipe: "
                                  + next(iter(unsupported.values())) + " (use backend='fake')")
        try:
            return self._net.forward(*args, **kwargs)
        finally:
            self.backend = previous

    def with_float_sites(self, sites) -> "QuantizedModel":
        """The same quantized state with ``sites`` computed in float (partial quantization)."""
        keep = {s: q for s, q in self.quantized_sites.items() if s not in set(sites)}
        out = QuantizedModel(self.float_model, self.recipe.with_float_sites(sites), keep, self.embeddings)
        out._dequantized = self._dequantized
        out._kernel_weights = self._kernel_weights
        out.backend = self.backend
        out.uncalibrated = self.uncalibrated
        return out

    # -- the site computation ------------------------------------------------------------
    def dequantized_weight(self, site: str) -> np.ndarray:
        if site not in self._dequantized:
            q = self.quantized_sites[site]
            self._dequantized[site] = dequantize(q.weight_q, q.weight_qp, site + ".weight")
        return self._dequantized[site]

    def _packed_dequantized(self, site: str):
        """dequantized_weight(site) prepacked for the float32 GEMM (fake-quant path), built once."""
        key = "packed:" + site
        if key not in self._dequantized:
            from .kernels.gemm_f32 import prepack_f32
            self._dequantized[key] = prepack_f32(self.dequantized_weight(site))
        return self._dequantized[key]

    def input_qparams(self, site: str, x: np.ndarray) -> QParams:
        q = self.quantized_sites[site]
        return choose_qparams(x, q.rule.activation, site) if q.rule.activation.dynamic else q.input_qp

    def _site(self, site: str, x: np.ndarray) -> np.ndarray:
        if self.backend == "fake" or site not in self.quantized_sites:
            return self._linear(site, x)
        return self._integer_linear(site, x, _kernels(self.backend))

    def integer_unsupported(self) -> dict:
        """{site: reason} for sites the integer kernels cannot run (empty: all can)."""
        from .kernels.reference import check_activation_spec
        out = {}
        for site, q in self.quantized_sites.items():
            rule = q.rule
            if rule.activation is None:
                continue  # weight-only: dequantized weights, float GEMM
            try:
                check_activation_spec(rule.activation, site)
            except ConfigError as e:
                out[site] = str(e)
                continue
            w = rule.weight
            if w is None or not (w.symmetric and w.signed) or w.bits not in (4, 8):
                out[site] = f"{site}: weights must be signed symmetric int8 or int4 for the integer GEMM"
        return out

    def weight_steps(self, site: str) -> np.ndarray:
        """The integer epilogue's weight step s_w per output row [N] (input-dimension groups:
        [N, G]): the scale, or float32(1 / multiplier) for multiplier specs (kernels.reference)."""
        from .kernels.reference import dequant_step
        q = self.quantized_sites[site]
        step = dequant_step(q.weight_qp).astype(F32)
        spec = q.rule.weight
        if spec.granularity == "group" and spec.group_kind == "input":
            return step  # [N, G]
        return per_output_row(step, q.weight_shape(), spec, site + ".weight").astype(F32)

    def _kernel_weight(self, site: str, backend: str):
        """The site's integer weight in the layout of ``backend``'s kernels, built once."""
        key = (backend, site)
        q = self.quantized_sites[site]
        if backend == "numba":
            if q.packed is None:
                from .kernels import cpu, reference
                spec = q.rule.weight
                if spec.bits == 8:
                    q.hold_packed(cpu.prepack(q.weight_q))
                else:
                    group = spec.group_size if spec.granularity == "group" and spec.group_kind == "input" \
                        else None
                    q.hold_packed(cpu.prepack_w4(reference.pack_w4(q.weight_q), q.weight_shape()[1], group))
            return q.packed
        if key not in self._kernel_weights:
            from .kernels import reference
            w = q.weight_q
            packed = w if q.rule.weight.bits == 8 else reference.pack_w4(w)
            if backend == "cuda":  # device-resident, in the GPU kernels' layout, built once
                from .kernels import cuda
                spec = q.rule.weight
                group = spec.group_size if spec.granularity == "group" and spec.group_kind == "input" else None
                packed = cuda.prepack(w) if spec.bits == 8 else cuda.prepack_w4(packed, w.shape[1], group)
            self._kernel_weights[key] = packed
        return self._kernel_weights[key]

    def resident_weight_bytes(self) -> int:
        """Bytes of weights this model holds for its integer path: each quantized site's one
        integer copy (canonical or packed) and scales, the quantized embedding tables and scales,
        and float32 for every other tensor the forward reads (LayerNorms, biases, float sites and
        embeddings). Each array counted once."""
        seen, total = set(), 0
        arrays = [a for q in self.quantized_sites.values() for a in q.held_arrays()]
        arrays += [a for table, qp in self.embeddings.values() for a in (table, qp.scale)]
        for a in arrays:
            if a is not None and id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
        quantized = {s + ".weight" for s in self.quantized_sites} | set(self.embeddings)
        for name, shape in self.float_model.expected_shapes().items():
            if name not in quantized:
                total += 4 * int(np.prod(shape))
        return total

    def _integer_linear(self, site: str, x: np.ndarray, kern) -> np.ndarray:
        """The site on the integer kernels: quantize the input (the recipe's dynamic spec or
        calibrated QParams), exact int32 GEMM, float32 epilogue y = float32(acc) * (s_a * s_w)
        + b (int32 bias: float32(acc + q_b) * (s_a * s_w), q_b = clip(rint(b / (s_a * s_w))))."""
        q = self.quantized_sites[site]
        rule = q.rule
        if self.recipe.gelu10 and ffn_second_gemm(site):
            x = np.minimum(x, GELU10)
        bias = self.float_model.w(site + ".bias", optional=True)
        if rule.activation is None:  # weight-only: the int weights stay resident; float GEMM
            return linear_forward(x, dequantize(q.weight_q, q.weight_qp, site + ".weight"), bias)[0]
        K, lead = x.shape[-1], x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, K), dtype=F32)
        w, s_w, spec = self._kernel_weight(site, self.backend), self.weight_steps(site), rule.weight
        quant = rule.activation if rule.activation.dynamic else q.input_qp
        if self.saturation is not None:
            self._count_saturation(site, x2, choose_qparams(x2, quant, site) if rule.activation.dynamic else quant)
        if spec.bits == 8 and (rule.bias == "float" or bias is None):
            y = kern.quantize_linear_i8(x2, quant, w, s_w, bias)
        else:
            a, s_a = kern.quantize_dynamic(x2, quant) if rule.activation.dynamic else kern.quantize_activation(x2, quant)
            if rule.bias == "int32" and bias is not None:
                s = (s_a[:, None] if s_a.ndim else s_a) * s_w  # [M, N] or [N], one float32 multiply
                q_bias = np.clip(np.rint(bias / s), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)
                y = kern.linear_i8_int32_bias(a, s_a, w, s_w, q_bias)
            elif spec.granularity == "group" and spec.group_kind == "input":
                y = kern.linear_w4a8_groups(a, s_a, w, K, s_w, spec.group_size, bias)
            else:
                y = kern.linear_w4a8_rows(a, s_a, w, K, s_w, bias)
        return y.reshape(*lead, y.shape[-1])

    def _linear(self, site: str, x: np.ndarray) -> np.ndarray:
        """The site on the fake-quant float32 path (backend "fake")."""
        q = self.quantized_sites.get(site)
        if q is None:
            return type(self._net).linear(self._net, site, x)
        if self.recipe.gelu10 and ffn_second_gemm(site):
            x = np.minimum(x, GELU10)
        rule = q.rule
        bias = self.float_model.w(site + ".bias", optional=True)
        qp_x = None
        if rule.activation is not None:
            qp_x = self.input_qparams(site, x)
            if self.saturation is not None:
                self._count_saturation(site, x, qp_x)
            x = fake_quant(x, qp_x, site + ".input")
        if rule.weight is not None:
            w, packed = self.dequantized_weight(site), self._packed_dequantized(site)
        else:
            w, packed = self.float_model.w(site + ".weight"), self.float_model.packed_weight(site + ".weight")
        if rule.bias == "float" or bias is None:
            return linear_forward(x, w, bias, packed=packed)[0]
        y = linear_forward(x, w, packed=packed)[0]
        bias_scale = (qp_x.scale.astype(F32)[..., None] if qp_x.scale.ndim else qp_x.scale.astype(F32)) \
            * q.weight_scale_per_row()                           # s_x * s_w: [..., out] or [out]
        q_bias = np.clip(np.rint(bias / bias_scale), -INT32_LIMIT, INT32_LIMIT)
        return y + (q_bias * bias_scale).astype(F32)

    def _count_saturation(self, site: str, x: np.ndarray, qp: QParams) -> None:
        """While ``self.saturation`` is a dict: count the site's input codes at qmin or qmax."""
        codes = quantize(x, qp, site + ".input")
        spec = qp.spec
        counts = self.saturation.setdefault(site, [0, 0])
        counts[0] += int(np.count_nonzero((codes == spec.qmin) | (codes == spec.qmax)))
        counts[1] += codes.size

    def _w(self, name: str, optional: bool = False):
        if name in self.embeddings:
            table, qp = self.embeddings[name]
            if qp.spec.granularity in ("tensor", "channel") and (qp.spec.axis or 0) == 0:
                return DequantizedRows(table, qp, name)  # lookups dequantize only their rows
            key = "embedding:" + name
            if key not in self._dequantized:
                self._dequantized[key] = dequantize(table, qp, name)
            return self._dequantized[key]
        return type(self._net).w(self._net, name, optional)

    def save(self, directory):
        """Write a compressed-tensors-style quantized checkpoint (refquant.checkpoint); load it
        back, byte for byte, with rq.load_quantized(directory)."""
        from .checkpoint import save_quantized
        return save_quantized(self, directory)

    def describe(self) -> str:
        return self.recipe.describe(self.float_model)

    def __repr__(self):
        return f"QuantizedModel({self.float_model!r}, recipe {self.recipe.name!r}, " \
               f"{len(self.quantized_sites)} quantized sites)"


BACKENDS = ("numba", "numpy", "cuda", "fake")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"QuantizedModel.forward: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return backend


def _kernels(backend: str):
    from .kernels import backend_module
    return backend_module(backend)


# ---------------------------------------------------------------------------------------
# building one
# ---------------------------------------------------------------------------------------
def _batches(calib):
    """Calibration batches as keyword dicts for model.forward (dicts from model.encode, or ids)."""
    for b in calib:
        if isinstance(b, dict):
            yield {k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        else:
            yield {"input_ids": np.asarray(b)}


def _calibrate(model, recipe: Recipe, plan: dict, calib, progress: bool) -> dict:
    """Run the float model over ``calib`` and observe each static site's input: {site: amax}."""
    static = {site: rule for site, rule in plan.items()
              if rule is not None and rule.activation is not None and not rule.activation.dynamic}
    if not static:
        return {}
    from .calib import make_observer
    observers = {site: make_observer(rule.calibrator, name=site, **dict(rule.calib_options))
                 for site, rule in static.items()}
    if calib is None:
        raise ConfigError(f"recipe {recipe.name} has static activation ranges: pass calib=batches")
    net = copy.copy(model)

    def observe(site, x):
        if site in observers:
            observers[site].update(np.minimum(x, GELU10) if recipe.gelu10 and ffn_second_gemm(site) else x)
        return type(model).linear(model, site, x)
    net.linear = observe
    batches = list(calib) if not isinstance(calib, list) else calib
    if not batches:
        raise ConfigError(f"recipe {recipe.name}: the calibration data is empty")
    try:
        from tqdm import tqdm
        it = tqdm(batches, desc=f"calibrating {recipe.name}", unit="batch", disable=None if progress else True,
                  leave=False)
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        it = batches
    for kwargs in _batches(it):
        net.forward(**kwargs)
    # a site the forward never reaches (BERT's pooler for hidden states) gets no range: None
    return {site: float(obs.amax()) if obs.batches else None for site, obs in observers.items()}


def resolve_recipe(model, recipe, **options) -> Recipe:
    """A Recipe, or a recipe name with ``options`` and the family's defaults (ZeroQuant: 48 groups
    and int8 word embeddings for BERT, 64 groups and float embeddings for GPT-2 and Llama)."""
    if isinstance(recipe, Recipe):
        if options:
            raise ConfigError("options apply to a recipe name, not to a Recipe object")
        return recipe
    if recipe.startswith("zeroquant-"):
        options.setdefault("num_groups", ZEROQUANT_GROUPS.get(model.family, 48))
        options.setdefault("quantize_embeddings", model.family == "bert")  # as DeepSpeed's configs
    return named_recipe(recipe, **options)


def quantize_model(model, recipe, calib=None, progress: bool = True, amax: dict | None = None,
                   **options) -> QuantizedModel:
    """Quantize ``model``'s GEMM sites by ``recipe`` (a Recipe or a name from RECIPES, with
    ``options`` passed to refquant.recipes.recipe); static recipes calibrate on ``calib``, an
    iterable of batches (dicts from model.encode, or token-id arrays). ZeroQuant recipes named
    here follow DeepSpeed's shipped configs per family: 48 groups and int8 word embeddings for
    BERT, 64 groups and float embeddings for GPT-2 and Llama (its GPT-2 configs). A static site that the
    calibration forward never reaches (BERT's pooler, which the hidden states do not use) has
    no range and stays float; ``qm.uncalibrated`` lists such sites. ``amax`` {site: range} gives
    static input ranges directly (e.g. the EMA thresholds QAT trained): those sites are not
    calibrated, and without ``calib`` the static sites it omits stay float (uncalibrated)."""
    rec = resolve_recipe(model, recipe, **options)
    plan = rec.plan(model)
    given = {s: (None if a is None else float(a)) for s, a in (amax or {}).items()}
    if given and calib is None:
        amax = {s: given.get(s) for s, r in plan.items()
                if r is not None and r.activation is not None and not r.activation.dynamic}
    else:
        amax = _calibrate(model, rec, {s: (None if s in given else r) for s, r in plan.items()}, calib, progress)
        amax.update({s: a for s, a in given.items() if s in plan})
    sites = {}
    for site, rule in plan.items():
        if rule is None or (site in amax and amax[site] is None):
            continue  # float: by the recipe, or never reached during calibration
        q = QuantizedSite(site, rule)
        if rule.weight is not None:
            w = model.w(site + ".weight")
            q.weight_qp = choose_qparams(w, rule.weight, site + ".weight")
            q.weight_q = quantize(w, q.weight_qp, site + ".weight")
        if site in amax:
            q.input_amax = amax[site]
            q.input_qp = qparams_from_amax(np.float32(amax[site]), rule.activation)
        sites[site] = q
    embeddings = {}
    if rec.embeddings is not None:
        tables = EMBEDDINGS.get(model.family, {})
        for name in [tables[k] for k in rec.embedding_tables if k in tables]:
            table = model.w(name)
            if table.ndim != 2:
                raise ShapeError(f"{name}: expected a 2-D embedding table, got shape {list(table.shape)}")
            qp = choose_qparams(table, rec.embeddings, name)
            embeddings[name] = (quantize(table, qp, name), qp)
    qm = QuantizedModel(model, rec, sites, embeddings)
    qm.uncalibrated = sorted(site for site, a in amax.items() if a is None)
    return qm
