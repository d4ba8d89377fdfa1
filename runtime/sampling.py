"""Choosing the next token from logits, the way RWKV users know it from the rwkv package's PIPELINE.

Order, applied to the model's logits (V,) at every step:
  1. repetition penalty: logits[t] -= presence + occurrence[t] * frequency for every token t generated so far
     (`Penalties`; occurrence decays by `decay` per generated token, as PIPELINE's alpha_decay; as in
     PIPELINE a token whose text is a substring of " \\t0123456789" (" ", "7", "89", not "98") adds 0 to
     its occurrence)
  2. logit_bias: logits[t] += bias[t] (-inf bans a token, like PIPELINE's token_ban)
  3. temperature 0 (or top_k 1): the most likely token (lowest id on ties); nothing else applies
  4. probs = softmax(logits)
  5. top_p: drop tokens less likely than the one where the sorted cumulative probability reaches top_p
  6. top_k: keep the k most likely tokens (ties with the k-th kept); 0 = off
  7. min_p: drop tokens with p < min_p * max(p); 0 = off
  8. temperature: probs ** (1 / temperature), renormalised
  9. draw: one `rng.random()` u, then the first token id whose cumulative probability exceeds u
     (cumulated in token id order); greedy sampling draws nothing
Steps 4-8 are PIPELINE.sample_logits (min_p is ours); computed in float64. Pure: inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# PIPELINE counts a token whose text is a substring of this (`text in _FREE_TEXT`) with weight 0 in
# `occurrence`: it still gets the presence penalty, but repeating it adds no frequency penalty.
_FREE_TEXT = " \t0123456789"


@dataclass(frozen=True)
class SamplingSettings:
    """Every knob of one generation's sampler, checked once."""

    temperature: float = 1.0
    top_p: float = 0.85
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 0.996
    logit_bias: Mapping[int, float] | None = None

    def check(self, n_vocab: int) -> None:
        """Raise ValueError naming the first setting out of range."""
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "penalty_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0 <= self.penalty_decay <= 1:
            raise ValueError(f"penalty_decay must be in [0, 1], got {self.penalty_decay}")
        for token, bias in (self.logit_bias or {}).items():
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < n_vocab:
                raise ValueError(f"logit_bias token {token!r} is not a token id of this model (0..{n_vocab - 1})")
            if isinstance(bias, bool) or not isinstance(bias, (int, float, np.integer, np.floating)):
                raise ValueError(f"logit_bias for token {token} must be a number, got {bias!r}")
            if math.isnan(bias) or bias == math.inf:
                raise ValueError(f"logit_bias for token {token} must be a number or -inf, got {bias}")


class Penalties:
    """Steps 1-2 for one generation: PIPELINE's decaying occurrence counts, and the fixed logit_bias."""

    def __init__(self, settings: SamplingSettings, n_vocab: int) -> None:
        self.presence = settings.presence_penalty
        self.frequency = settings.frequency_penalty
        self.decay = settings.penalty_decay
        # Sparse: only generated tokens have counts, so a step costs O(distinct tokens), not O(vocab).
        self.slot: dict[int, int] = {}  # token id -> index into ids / occurrence
        self.ids = np.zeros(0, dtype=np.int64)  # (n_seen,) token ids in order of first appearance
        self.occurrence = np.zeros(0, dtype=np.float64)  # (n_seen,) decayed weighted counts
        bias = settings.logit_bias or {}
        self.bias_ids = np.array([int(t) for t in bias], dtype=np.int64)  # (n_bias,)
        self.bias_values = np.array([float(v) for v in bias.values()], dtype=np.float64)  # (n_bias,)
        self.active = self.presence != 0 or self.frequency != 0
        if len(set(self.bias_ids.tolist())) == n_vocab and np.all(self.bias_values == -np.inf):
            raise ValueError("logit_bias bans every token")

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """logits (V,) -> adjusted float64 logits (V,), a new array."""
        out = logits.astype(np.float64)
        if self.active and len(self.ids):
            out[self.ids] -= self.presence + self.occurrence * self.frequency
        if len(self.bias_ids):
            out[self.bias_ids] += self.bias_values
        return out

    def record(self, token: int, text: str) -> None:
        """Count a generated token whose decoded text is `text`, after decaying the older counts."""
        if not self.active:
            return
        self.occurrence *= self.decay
        if token not in self.slot:
            self.slot[token] = len(self.ids)
            self.ids = np.append(self.ids, token)
            self.occurrence = np.append(self.occurrence, 0.0)
        self.occurrence[self.slot[token]] += 0.0 if text in _FREE_TEXT else 1.0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def probabilities(
    logits: np.ndarray,  # (V,) float32 or float64
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
) -> np.ndarray:
    """The distribution (V,) float64 that `sample_logits` draws from (steps 3-8 of the module docstring)."""
    ids, probs = _support(logits, temperature, top_p, top_k, min_p)
    out = np.zeros(len(logits), dtype=np.float64)
    out[ids] = probs
    return out


def sample_logits(
    logits: np.ndarray,  # (V,) float32 or float64
    rng: np.random.Generator,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
) -> int:
    """One token id. temperature 0 (or top_k 1) is greedy and draws nothing from rng."""
    ids, probs = _support(logits, temperature, top_p, top_k, min_p)
    if temperature == 0 or top_k == 1:
        return int(ids[0])
    cdf = np.cumsum(probs)  # (K,)
    # The first id whose cumulative probability exceeds u always has probability > 0.
    return int(ids[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(ids) - 1)])


def _support(
    logits: np.ndarray, temperature: float, top_p: float, top_k: int, min_p: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (K,) ascending, probs (K,) float64 summing to 1): the tokens left after steps 3-7, weighted.

    Every cut keeps the tokens at or above a threshold of the softmax probabilities, so the cuts are one
    threshold, and the later steps only touch the few tokens left.
    """
    if temperature < 0 or not 0 <= top_p <= 1 or top_k < 0 or not 0 <= min_p <= 1:
        raise ValueError("need temperature >= 0, 0 <= top_p <= 1, top_k >= 0 and 0 <= min_p <= 1")
    if temperature == 0 or top_k == 1:
        return np.array([int(np.argmax(logits))]), np.ones(1)
    probs = softmax(logits)  # (V,) float64
    floor = 0.0
    if top_p < 1:
        floor = max(floor, _top_p_cutoff(probs, top_p))
    if 0 < top_k < len(probs):
        floor = max(floor, _kth_largest(probs, top_k))
    if min_p > 0:
        floor = max(floor, min_p * float(probs.max()))
    ids = np.flatnonzero(probs >= floor) if floor > 0 else np.arange(len(probs))  # (K,)
    kept = probs[ids]  # (K,)
    if temperature != 1:
        # Scaled by the largest first: p ** (1 / 0.001) underflows to 0 for every p below ~0.49, which
        # would leave 0 / 0; the ratio is the same distribution once renormalised.
        kept = (kept / kept.max()) ** (1.0 / temperature)
    return ids, kept / kept.sum()


def _kth_largest(values: np.ndarray, k: int) -> float:
    """values (V,): the k-th largest, in O(V)."""
    return float(np.partition(values, len(values) - k)[len(values) - k])


def _top_p_cutoff(probs: np.ndarray, top_p: float) -> float:
    """The probability at which the descending cumulative sum first reaches top_p (PIPELINE's cutoff).

    Sorts only the largest few hundred probabilities unless they do not reach top_p: O(V) in practice.
    """
    n = len(probs)
    k = min(n, 256)
    while True:
        top = np.sort(np.partition(probs, n - k)[n - k :])[::-1]  # (k,) the k largest, descending
        reached = int(np.searchsorted(np.cumsum(top), top_p))
        if reached < k or k == n:
            return float(top[min(reached, k - 1)])
        k = min(n, 8 * k)
