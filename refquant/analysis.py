"""Metrics: how far a result is from its reference, and language-model perplexity."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from weights_io.errors import ConfigError, DTypeError, NonFiniteError, OutOfRangeError, ShapeError
from weights_io.int4 import integer_values

from .floats import sum_in_order, sums_in_order

F32 = np.float32


def cosine(a, b, axis=-1) -> np.ndarray:
    """Cosine similarity along ``axis``, computed in float64, its sums left to right (contract
    rule 14)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = sums_in_order(a * b, axis=axis)
    den = np.sqrt(sums_in_order(a * a, axis=axis)) * np.sqrt(sums_in_order(b * b, axis=axis))
    return num / np.maximum(den, 1e-300)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis in float64 (for losses and perplexity)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def perplexity(model, text, window: int | None = None, stride: int | None = None) -> float:
    """exp(mean negative log-likelihood) of ``text`` (a string, or token ids) under a causal LM.

    Sliding window as transformers' perplexity guide: windows of ``window`` tokens (default:
    min(1024, max positions)) advanced by ``stride`` (default window // 2); each token is
    scored once, by the window that ends at or after it, with the context the window holds.
    """
    if model.family not in ("gpt2", "llama"):
        raise ConfigError(f"perplexity needs a causal language model, not {model.family!r}")
    ids = np.asarray(model.encode(text)["input_ids"][0] if isinstance(text, str) else text, np.int64).reshape(-1)
    if ids.size < 2:
        raise ShapeError("perplexity: the text must have at least 2 tokens")
    limit = model.max_positions or 1024
    window = min(window or 1024, limit)
    stride = stride or max(window // 2, 1)
    if not 0 < stride <= window:
        raise ShapeError(f"perplexity: stride {stride} must be in (0, window={window}]")
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.size, stride):
        end = min(begin + window, ids.size)
        chunk = ids[begin:end]
        logp = log_softmax(model.forward(chunk[None])[0])  # [T, V]
        first_new = max(prev_end - begin, 0)  # tokens before it were scored by the last window
        targets = np.arange(max(first_new, 1), chunk.size)  # token t is predicted at t - 1
        nll -= float(logp[targets - 1, chunk[targets]].sum())
        count += targets.size
        prev_end = end
        if end == ids.size:
            break
    return float(np.exp(nll / count))


def greedy_generate(model, text: str, max_new_tokens: int = 8) -> str:
    """Greedy continuation of ``text`` (recomputes the whole prefix each step: a reference,
    not a server)."""
    ids = list(model.encode(text)["input_ids"][0])
    for _ in range(max_new_tokens):
        ids.append(int(np.argmax(model.forward(np.array([ids]))[0, -1])))
    return model.tokenizer.decode(ids)


# ---------------------------------------------------------------------------------------------
# Error metrics between a reference result and a test (quantized, or other-kernel) result.
# Every pairwise metric takes two arrays of the *same shape* (no broadcasting: a shape mismatch
# is a ShapeError naming the argument), works in float64, and refuses NaN with NonFiniteError.
# ---------------------------------------------------------------------------------------------

def _as_f64(x, name: str, fn: str, allow_inf: bool = False) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ShapeError(f"{fn}: {name} is not an array ({e})") from None
    if a.dtype.kind not in "biuf":
        raise DTypeError(f"{fn}: {name} must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    bad = np.isnan(a) if allow_inf else ~np.isfinite(a)
    if bad.any():
        what = "NaN" if allow_inf else "NaN or Inf"
        raise NonFiniteError(f"{fn}: {name} holds {what} at index {np.argwhere(bad)[0].tolist()}")
    return a


def _pair(reference, test, fn: str, names=("reference", "test"), allow_inf_test: bool = True,
          nonempty: bool = True):
    r = _as_f64(reference, names[0], fn)
    t = _as_f64(test, names[1], fn, allow_inf=allow_inf_test)
    if r.shape != t.shape:
        raise ShapeError(f"{fn}: {names[1]} has shape {list(t.shape)}, but {names[0]} has shape "
                         f"{list(r.shape)} (they must be equal; no broadcasting)")
    if nonempty and r.size == 0:
        raise ShapeError(f"{fn}: {names[0]} and {names[1]} are empty")
    return r, t


def sqnr_db(reference, test) -> float:
    """Signal-to-quantization-noise ratio in decibels, over the whole array::

        SQNR = 10 * log10( sum(ref**2) / sum((ref - test)**2) )

    in float64. ``+inf`` when ``test`` equals ``reference`` exactly (no noise), including the
    all-zero reference. An all-zero reference with a nonzero ``test`` has no signal: ``-inf``.
    ``reference`` must be finite; ``test`` may hold +-Inf (an overflow: noise is infinite,
    ``-inf``), not NaN. Shapes must be equal (ShapeError otherwise); empty arrays are refused.
    """
    r, t = _pair(reference, test, "sqnr_db")
    with np.errstate(over="ignore", invalid="ignore"):
        noise = sum_in_order((r - t) ** 2)  # contract rule 14
    signal = sum_in_order(r ** 2)
    if noise == 0.0:
        return float("inf")
    if signal == 0.0 or noise == float("inf"):
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def max_abs_error(reference, test) -> float:
    """max |ref - test| over all elements, in float64 (``inf`` if ``test`` holds an Inf).

    Shapes must be equal (ShapeError otherwise); empty arrays, NaN, and a non-finite
    ``reference`` are refused.
    """
    r, t = _pair(reference, test, "max_abs_error")
    return float(np.max(np.abs(r - t)))


REL_FLOOR = 1e-3  # default floor of max_rel_error, as a fraction of max|reference|


def max_rel_error(reference, test, floor: float | None = None) -> float:
    """Largest elementwise relative error, with a floor on the denominator::

        max over i of |ref_i - test_i| / max(|ref_i|, floor)

    A plain elementwise relative error blows up at elements near zero (where a quantized or
    reassociated result has an absolute error of the array's scale, not of the element's), so
    the denominator is floored. Default ``floor = 1e-3 * max|ref|`` (``REL_FLOOR``): elements
    below 0.1 % of the array's largest magnitude are judged relative to that level. (For scale:
    an int8 symmetric grid has a step of max|ref|/127, about 8e-3 * max|ref|, so every element the
    floor affects rounds to the zero code anyway.) ``floor=0`` gives the pure elementwise error.

    Elements with zero error count 0 (also where ref_i = floor = 0); an element with nonzero
    error and zero denominator counts ``inf`` (e.g. an all-zero reference and a nonzero test).
    Float64 throughout; shapes must be equal (ShapeError); NaN, a non-finite reference, empty
    arrays and a negative or non-finite ``floor`` are refused.
    """
    r, t = _pair(reference, test, "max_rel_error")
    if floor is None:
        floor = REL_FLOOR * float(np.max(np.abs(r)))
    floor = float(floor)
    if not (np.isfinite(floor) and floor >= 0.0):
        raise ConfigError(f"max_rel_error: floor must be a finite number >= 0, got {floor}")
    err = np.abs(r - t)
    den = np.maximum(np.abs(r), floor)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel = np.where(err == 0.0, 0.0, err / den)  # err > 0 over den 0 -> inf
    return float(np.max(rel))


# ---- units in the last place --------------------------------------------------------------------

_ULP_INT = {np.dtype(np.float16): np.int16, np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _ordered_key(x: np.ndarray) -> np.ndarray:
    """int64 keys in which consecutive floats of x's dtype are consecutive integers (-0.0 and
    +0.0 both map to 0): the sign-magnitude bit pattern, read as two's complement."""
    itype = _ULP_INT[x.dtype]
    i = x.view(itype).astype(np.int64)
    lowest = np.int64(np.iinfo(itype).min)  # the bit pattern of -0.0
    return np.where(i < 0, lowest - i, i)  # negative floats: -(magnitude bits); never overflows


def ulp_distance(a, b) -> np.ndarray:
    """Elementwise distance between ``a`` and ``b`` in units in the last place of their dtype.

    Ordered-integer trick: a float's sign-magnitude bit pattern is mapped to an integer key
    (k = bits for sign 0, k = -(bits without the sign) for sign 1), so consecutive representable
    values have consecutive keys; the distance is |k(a) - k(b)|, i.e. how many representable
    values lie between a and b, plus one. Hence -0.0 and +0.0 are 0 apart; ``np.nextafter``
    neighbours are 1 apart, also across zero (the smallest negative and positive subnormals are
    2 apart: -0.0/+0.0 sits between them); +-Inf sits one step past the largest finite value.

    ``a`` and ``b`` must have the same float dtype, float16, float32 or float64 (DTypeError
    otherwise: nothing is cast, since the ULP is the dtype's), and the same shape (ShapeError).
    NaN has no place in the order: NaN in either is refused with NonFiniteError.
    Returns uint64 distances of the inputs' shape (uint64 because two float64 values can be up
    to 2**64 - 2 apart).
    """
    fn = "ulp_distance"
    x, y = np.asarray(a), np.asarray(b)
    for name, arr in (("a", x), ("b", y)):
        if arr.dtype not in _ULP_INT:
            raise DTypeError(f"{fn}: {name} has dtype {arr.dtype}; expected float16, float32 or float64")
    if x.dtype != y.dtype:
        raise DTypeError(f"{fn}: b has dtype {y.dtype}, but a has dtype {x.dtype} (the ULP is the "
                         f"dtype's: cast one of them explicitly)")
    if x.shape != y.shape:
        raise ShapeError(f"{fn}: b has shape {list(y.shape)}, but a has shape {list(x.shape)}")
    for name, arr in (("a", x), ("b", y)):
        if np.isnan(arr).any():
            raise NonFiniteError(f"{fn}: {name} holds NaN at index {np.argwhere(np.isnan(arr))[0].tolist()} "
                                 f"(NaN has no ULP distance)")
    ka = _ordered_key(np.asarray(x, order="C"))  # (ascontiguousarray would make 0-d inputs 1-d)
    kb = _ordered_key(np.asarray(y, order="C"))
    ua, ub = ka.view(np.uint64), kb.view(np.uint64)  # modular subtraction, exact since |ka-kb| < 2**64
    return np.where(ka >= kb, ua - ub, ub - ua).astype(np.uint64)


def max_ulp(a, b) -> int:
    """max over all elements of ``ulp_distance(a, b)`` as a Python int (same rules; empty
    arrays are refused with ShapeError)."""
    d = ulp_distance(a, b)
    if d.size == 0:
        raise ShapeError("max_ulp: a and b are empty")
    return int(d.max())


# ---- integer codes --------------------------------------------------------------------------

def saturation_rate(q, qmin: int, qmax: int) -> float:
    """Fraction of integer codes that sit on a clipping bound::

        count(q == qmin or q == qmax) / q.size

    ``q`` must have an integer dtype (DTypeError), be non-empty (ShapeError) and lie in
    [qmin, qmax] (OutOfRangeError: a code outside it is not a code of that grid); ``qmin < qmax``
    must be integers (ConfigError).
    """
    fn = "saturation_rate"
    codes = integer_values(q, f"{fn}: q")
    if codes.size == 0:
        raise ShapeError(f"{fn}: q is empty")
    if int(qmin) != qmin or int(qmax) != qmax or not int(qmin) < int(qmax):
        raise ConfigError(f"{fn}: need integers qmin < qmax, got qmin={qmin}, qmax={qmax}")
    qmin, qmax = int(qmin), int(qmax)
    lo, hi = int(codes.min()), int(codes.max())
    if lo < qmin or hi > qmax:
        raise OutOfRangeError(f"{fn}: q holds {lo if lo < qmin else hi}, outside [{qmin}, {qmax}]")
    return float(np.count_nonzero((codes == qmin) | (codes == qmax)) / codes.size)


# ---- logits -----------------------------------------------------------------------------------

def _logit_pair(ref_logits, test_logits, mask, fn: str):
    """float64 [P, V] reference and test logits over the positions that ``mask`` selects."""
    r, t = _pair(ref_logits, test_logits, fn, names=("ref_logits", "test_logits"), allow_inf_test=False)
    if r.ndim < 1 or r.shape[-1] < 1:
        raise ShapeError(f"{fn}: logits need a class axis (last), got shape {list(r.shape)}")
    lead = r.shape[:-1]
    r, t = r.reshape(-1, r.shape[-1]), t.reshape(-1, t.shape[-1])
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != lead:
            raise ShapeError(f"{fn}: mask has shape {list(m.shape)}, expected the logits' positions "
                             f"{list(lead)} (logits shape without the last axis)")
        if m.dtype != np.bool_:
            if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
                raise OutOfRangeError(f"{fn}: mask must be boolean or hold only 0 and 1")
            m = m != 0
        keep = m.reshape(-1)
        r, t = r[keep], t[keep]
    if r.shape[0] == 0:
        raise ShapeError(f"{fn}: no positions to average over (mask selects none)")
    return r, t


def top1_agreement(ref_logits, test_logits, mask=None) -> float:
    """Fraction of positions whose argmax over the last (class) axis is the same::

        mean over positions p with mask[p] of [argmax(ref[p]) == argmax(test[p])]

    Logits are [..., V]; every leading index is a position. Ties follow ``np.argmax``: the first
    (lowest) index of the maximum wins, in both arrays. ``mask`` (optional, bool or 0/1, shape
    ``logits.shape[:-1]``) selects the positions counted, e.g. real tokens. Shapes must be equal
    (ShapeError), logits finite (NonFiniteError); a mask that selects nothing is a ShapeError.
    """
    r, t = _logit_pair(ref_logits, test_logits, mask, "top1_agreement")
    return float(np.mean(np.argmax(r, axis=-1) == np.argmax(t, axis=-1)))


def logit_kl(ref_logits, test_logits, mask=None) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(test)), in nats::

        KL_p = sum_v  P_v * (log P_v - log Q_v),   P = softmax(ref[p]),  Q = softmax(test[p])
        result = mean over positions p with mask[p] of KL_p

    in float64 via ``log_softmax``. Rounding can make a KL_p of nearly equal distributions a few
    ulps negative: each KL_p is clipped at 0, so the result is >= 0 (and exactly 0 for identical
    logits). Positions, mask and errors as ``top1_agreement``.
    """
    r, t = _logit_pair(ref_logits, test_logits, mask, "logit_kl")
    lp, lq = log_softmax(r), log_softmax(t)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    return float(np.mean(np.maximum(kl, 0.0)))


def perplexity_delta(model_ref, model_test, text, **kw) -> tuple[float, float, float]:
    """(ppl_ref, ppl_test, relative change) of ``text`` under two causal LMs, with the same
    ``perplexity(model, text, **kw)`` (window, stride): relative change = (ppl_test - ppl_ref)
    / ppl_ref, e.g. +0.02 for a quantized model 2 % worse than the float one."""
    ppl_ref = perplexity(model_ref, text, **kw)
    ppl_test = perplexity(model_test, text, **kw)
    return ppl_ref, ppl_test, (ppl_test - ppl_ref) / ppl_ref


# ---------------------------------------------------------------------------------------------
# Embedding tasks on gensim's test data (docs: /work/shared/docs/data.md "Evaluation data").
# ``embed`` is any callable list[str] -> array [n, dim]; ``sentence_embedder(model)`` makes one
# from a refquant encoder (float or quantized).
# ---------------------------------------------------------------------------------------------

GENSIM_HINT = "install it with `pip install --no-deps gensim` (its test data is all that is used)"


def gensim_test_data(filename: str) -> Path:
    """Path of ``gensim/test/test_data/<filename>``, located without importing gensim.
    ConfigError (saying ``pip install --no-deps gensim``) if gensim or the file is missing."""
    try:
        spec = importlib.util.find_spec("gensim")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"gensim's test data ({filename}) is needed, but gensim is not installed: "
                          f"{GENSIM_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / filename
    if not path.is_file():
        raise ConfigError(f"{path} is missing (gensim installed without its test data?): {GENSIM_HINT}")
    return path


def _embeddings(embed, texts: list[str], fn: str) -> np.ndarray:
    e = _as_f64(embed(texts), "embed(texts)", fn)
    if e.ndim != 2 or e.shape[0] != len(texts):
        raise ShapeError(f"{fn}: embed(texts) must return [n={len(texts)}, dim], got shape {list(e.shape)}")
    return e


def _cosine_matrix(e: np.ndarray) -> np.ndarray:
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)
    return u @ u.T


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation in float64; NaN when either side is constant."""
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / den) if den > 0 else float("nan")


def _rank(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (as scipy.stats.rankdata's default)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]  # first element of each run of equal values
    run = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], xs.size] - 1
    ranks = np.empty(x.size)
    ranks[order] = (first[run] + last[run]) / 2.0 + 1.0
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average-tie ranks."""
    return _pearson(_rank(np.asarray(x, np.float64)), _rank(np.asarray(y, np.float64)))


def lee2005_pearson(embed) -> float:
    """Lee et al. (2005) document similarity: Pearson r between cosine similarities of document
    embeddings and the human similarity judgements.

    Data (gensim's test data): ``lee.cor``, 50 short news documents, one per line, latin-1
    encoded; ``similarities0-1.txt``, a 50x50 whitespace-separated matrix of mean human ratings
    in [0, 1] (the upper triangle and a unit diagonal are filled, the lower triangle is 0).
    Protocol (as gensim's own test_lee.py)::

        E = embed(documents)                          # [50, dim], one call with all 50
        S_ij = cos(E_i, E_j)                          # float64
        r = pearson( S[i<j], H[i<j] )                 # the 1225 pairs of the upper triangle

    ``embed`` gets the raw document strings (no preprocessing); any truncation to a model's
    length is its business (see ``sentence_embedder``). Returns NaN if all similarities are
    equal. ConfigError (saying ``pip install --no-deps gensim``) if the data is missing.
    """
    fn = "lee2005_pearson"
    with open(gensim_test_data("lee.cor"), encoding="latin-1") as f:
        docs = [line.rstrip("\r\n") for line in f]
    docs = [d for d in docs if d.strip()]
    human = np.loadtxt(gensim_test_data("similarities0-1.txt"), dtype=np.float64)
    n = len(docs)
    if human.shape != (n, n):
        raise ShapeError(f"{fn}: similarities0-1.txt is {list(human.shape)}, but lee.cor has {n} documents")
    upper = np.triu_indices(n, 1)
    sims = _cosine_matrix(_embeddings(embed, docs, fn))
    return _pearson(sims[upper], human[upper])


def wordsim353_spearman(embed) -> float:
    """WordSim-353: Spearman rho between cosine similarities of word embeddings and the human
    relatedness scores.

    Data: gensim's ``wordsim353.tsv``: lines starting with ``#`` are comments (the first two:
    source and header "Word 1, Word 2, Human (mean)"); then 353 tab-separated lines
    ``word1 <TAB> word2 <TAB> score`` (scores in [0, 10]). Protocol::

        words = the distinct words, in sorted order; E = embed(words)   # each word a text alone
        s_k = cos(E[w1_k], E[w2_k]);  rho = spearman(s, score)          # 353 pairs, ties averaged

    Words are passed as written (mixed case, e.g. "Maradona"; an uncased tokenizer lowercases).
    Returns NaN if all similarities are equal. ConfigError (saying ``pip install --no-deps
    gensim``) if the data is missing.
    """
    fn = "wordsim353_spearman"
    pairs, scores = [], []
    with open(gensim_test_data("wordsim353.tsv"), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) != 3:
                raise ShapeError(f"{fn}: wordsim353.tsv line {lineno} has {len(cols)} fields, expected 3")
            pairs.append((cols[0].strip(), cols[1].strip()))
            scores.append(float(cols[2]))
    words = sorted({w for p in pairs for w in p})
    index = {w: i for i, w in enumerate(words)}
    u = _embeddings(embed, words, fn)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-300)
    a = np.array([index[w] for w, _ in pairs])
    b = np.array([index[w] for _, w in pairs])
    sims = np.sum(u[a] * u[b], axis=1)
    return _spearman(sims, np.array(scores))


def sentence_embedder(model, batch_size: int = 16, max_tokens: int | None = None, normalize: bool = False):
    """A callable list[str] -> float32 [n, dim] of ``model.sentence_embedding`` (mean pooling),
    for ``lee2005_pearson`` / ``wordsim353_spearman``, the way sentence-transformers embeds:

    - each text is tokenized alone and truncated to ``max_tokens`` tokens *including* [CLS]
      and [SEP] (the tokenizer's own truncation, as transformers' ``truncation=True``);
      default: ``max_seq_length`` from ``sentence_bert_config.json`` beside the checkpoint
      (256 for all-MiniLM-L6-v2), else the model's max positions;
    - texts go through the model in chunks of ``batch_size``, each padded to its longest text
      (padding is masked out of attention and pooling, so the chunking does not change results
      beyond float32 rounding);
    - ``normalize`` L2-normalizes (sentence-transformers' Normalize module; cosine does not care).
    """
    if not hasattr(model, "sentence_embedding"):
        raise ConfigError(f"sentence_embedder: a {model.family!r} model has no sentence_embedding")
    if model.tokenizer is None:
        raise ConfigError(f"{model.source}: no tokenizer.json next to the checkpoint")
    if int(batch_size) < 1:
        raise ConfigError(f"sentence_embedder: batch_size must be >= 1, got {batch_size}")
    limit = model.max_positions
    if max_tokens is None:
        src = Path(model.source)
        st_config = (src if src.is_dir() else src.parent) / "sentence_bert_config.json"
        if st_config.is_file():
            max_tokens = json.loads(st_config.read_text()).get("max_seq_length")
        max_tokens = max_tokens or limit
    if max_tokens is not None:
        max_tokens = int(max_tokens)
        if max_tokens < 2 or (limit is not None and max_tokens > limit):
            raise ConfigError(f"sentence_embedder: max_tokens={max_tokens} must lie in [2, {limit}]")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(model.tokenizer.to_str())  # a copy: the model's own stays untruncated
    tok.no_padding()
    if max_tokens is not None:
        tok.enable_truncation(max_tokens)
    else:
        tok.no_truncation()
    pad_id = model.pad_token_id

    def embed(texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for s in range(0, len(texts), int(batch_size)):
            encs = tok.encode_batch(texts[s:s + int(batch_size)])
            width = max(len(e.ids) for e in encs)
            ids = np.full((len(encs), width), pad_id, np.int64)
            mask = np.zeros((len(encs), width), np.int64)
            types = np.zeros((len(encs), width), np.int64)
            for i, e in enumerate(encs):
                ids[i, :len(e.ids)] = e.ids
                mask[i, :len(e.ids)] = 1
                types[i, :len(e.ids)] = e.type_ids
            batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out.append(model.sentence_embedding(batch, normalize=normalize))
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out, axis=0)

    return embed


def sensitivity(model, recipe, data, metric=None, calib=None, progress: bool = True, **options):
    """Sensitivity analysis and partial quantization: refquant.sensitivity.sensitivity."""
    from .sensitivity import sensitivity as run
    return run(model, recipe, data, metric=metric, calib=calib, progress=progress, **options)


__all__ = ["cosine", "log_softmax", "perplexity", "greedy_generate", "sensitivity",
           "sqnr_db", "max_abs_error", "max_rel_error", "REL_FLOOR", "ulp_distance", "max_ulp",
           "saturation_rate", "top1_agreement", "logit_kl", "perplexity_delta",
           "gensim_test_data", "lee2005_pearson", "wordsim353_spearman", "sentence_embedder"]
