"""Score a model on a token sequence: perplexity, bits per token, and divergence from a base model.

The sequence is cut into windows of `ctx` tokens, each run from a fresh state (llama.cpp and rwkv.cpp
perplexity do the same); every token of a window after its first is predicted and scored. Both models
advance through a window together, chunk by chunk, so at most one chunk of logits per model is alive,
whatever the vocabulary and text length. All statistics come from log-softmax in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .model import CHUNK_LEN, Model
from .state import State

# Rows of float64 log-probabilities handled at once: about 32 MiB per array even for a 65536-word vocabulary.
_STAT_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Evaluation:
    """Scores of `model` on a token sequence; the divergence fields are None without a base model."""

    n_tokens: int  # tokens in the sequence
    n_predicted: int  # tokens scored (all but the first of each window)
    ctx: int  # window length
    nll_mean: float  # mean negative log-likelihood, nats per token
    ppl: float  # exp(nll_mean)
    bits_per_token: float  # nll_mean / ln 2
    base_ppl: float | None = None  # the base model's perplexity on the same tokens
    kl_mean: float | None = None  # mean over scored positions of KL(base || model), nats
    kl_p99: float | None = None  # 99th percentile of the per-position KL (linear interpolation)
    top1_agreement: float | None = None  # fraction of positions where both models' argmax agree


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., V) logits -> (..., V) float64 log-probabilities."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(T, V) logits and (T,) target ids -> (T,) float64 negative log-probability of each target."""
    logp = log_softmax(logits)  # (T, V)
    return -logp[np.arange(len(targets)), targets]


def kl_divergence(base_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """(T, V) logits of the base and of the model -> (T,) float64 KL(base || model) per position."""
    base_logp, logp = log_softmax(base_logits), log_softmax(logits)  # (T, V) each
    return np.sum(np.exp(base_logp) * (base_logp - logp), axis=-1)


def windows(n_tokens: int, ctx: int) -> list[tuple[int, int]]:
    """[start, end) of each window; a last window of one token predicts nothing and is dropped."""
    return [(s, min(s + ctx, n_tokens)) for s in range(0, n_tokens, ctx) if min(s + ctx, n_tokens) - s >= 2]


def check_comparable(model: Model, base: Model) -> None:
    """Raise ValueError unless `model` and `base` predict over the same vocabulary and tokenizer."""
    if model.spec.n_vocab != base.spec.n_vocab:
        raise ValueError(
            f"vocabulary mismatch: {model.path} has {model.spec.n_vocab} tokens, "
            f"the base {base.path} has {base.spec.n_vocab}"
        )
    name, base_name = _tokenizer_name(model), _tokenizer_name(base)
    if name != base_name:
        raise ValueError(f"tokenizer mismatch: {model.path} uses {name}, the base {base.path} uses {base_name}")


def evaluate_text(model: Model, text: str, *, ctx: int | None = None, base: Model | None = None) -> Evaluation:
    """Tokenize `text` with the model's tokenizer and score it (see `evaluate_tokens`)."""
    if not text:
        raise ValueError("the text is empty")
    if model.tokenizer is None:
        raise ValueError(f"{model.path} has no standard tokenizer for its {model.spec.n_vocab}-word vocabulary")
    if base is not None:
        check_comparable(model, base)
    tokens = model.tokenizer.encode(text)
    if base is not None and base.tokenizer is not None and base.tokenizer.encode(text) != tokens:
        raise ValueError(f"tokenizer mismatch: {model.path} and the base {base.path} tokenize the text differently")
    return evaluate_tokens(model, tokens, ctx=ctx, base=base)


def evaluate_tokens(
    model: Model, tokens: Sequence[int] | np.ndarray, *, ctx: int | None = None, base: Model | None = None
) -> Evaluation:
    """Score `model` on token ids (T,) in windows of `ctx` tokens (None: one window of all T).

    With `base`, also KL(base || model) per position (mean and 99th percentile) and top-1 agreement.
    """
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)  # (T,)
    if len(ids) < 2:
        raise ValueError(f"the text is {len(ids)} token{'s' if len(ids) != 1 else ''} long; at least 2 are needed")
    if ctx is None:
        ctx = len(ids)
    if ctx < 2:
        raise ValueError(f"ctx must be at least 2 tokens, got {ctx}")
    if base is not None:
        check_comparable(model, base)
    chunk = max(1, min(CHUNK_LEN, _STAT_ELEMENTS // model.spec.n_vocab))
    nll_sum = 0.0
    base_nll_sum = 0.0
    agree = 0
    kl_parts: list[np.ndarray] = []  # (rows,) float64 per chunk: one float per scored token in all
    for start, end in windows(len(ids), ctx):
        for logits, base_logits, targets in _window_logits(model, base, ids[start:end], chunk):
            logp = log_softmax(logits)  # (rows, V)
            rows = np.arange(len(targets))
            nll_sum += float(-logp[rows, targets].sum())
            if base_logits is not None:
                base_logp = log_softmax(base_logits)  # (rows, V)
                base_nll_sum += float(-base_logp[rows, targets].sum())
                kl_parts.append(np.sum(np.exp(base_logp) * (base_logp - logp), axis=-1))
                agree += int(np.count_nonzero(logits.argmax(axis=-1) == base_logits.argmax(axis=-1)))
    n = sum(end - start - 1 for start, end in windows(len(ids), ctx))
    nll_mean = nll_sum / n
    result = Evaluation(
        n_tokens=len(ids), n_predicted=n, ctx=ctx,
        nll_mean=nll_mean, ppl=math.exp(nll_mean), bits_per_token=nll_mean / math.log(2),
    )
    if base is None:
        return result
    kl = np.concatenate(kl_parts)  # (n,)
    return replace(
        result,
        base_ppl=math.exp(base_nll_sum / n),
        kl_mean=float(kl.mean()),
        kl_p99=float(np.percentile(kl, 99)),
        top1_agreement=agree / n,
    )


def _window_logits(
    model: Model, base: Model | None, window: np.ndarray, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """Run both models over `window` (n,) from fresh states, chunk by chunk.

    Yields (logits (rows, V), base logits (rows, V) or None, targets (rows,)) for every position that has
    a next token inside the window; the window's last position predicts nothing and is left out.
    """
    state: State | None = None
    base_state: State | None = None
    n = len(window)
    for a in range(0, n - 1, chunk):
        b = min(a + chunk, n - 1)  # positions a..b-1 predict window[a+1..b]
        # Stepping in place (out=) keeps one state per model for the whole window.
        logits, state = model.forward(window[a:b], state, all_logits=True, out=state)
        base_logits = None
        if base is not None:
            base_logits, base_state = base.forward(window[a:b], base_state, all_logits=True, out=base_state)
        yield logits, base_logits, window[a + 1 : b + 1]


def _tokenizer_name(model: Model) -> str:
    return model.tokenizer.name if model.tokenizer is not None else "no tokenizer"
