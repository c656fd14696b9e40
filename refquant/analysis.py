"""Metrics: how far a result is from its reference, and language-model perplexity."""
from __future__ import annotations

import numpy as np

from weights_io.errors import ConfigError, ShapeError

F32 = np.float32


def cosine(a, b, axis=-1) -> np.ndarray:
    """Cosine similarity along ``axis``, computed in float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = np.sum(a * b, axis=axis)
    den = np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis)
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


__all__ = ["cosine", "log_softmax", "perplexity", "greedy_generate"]
