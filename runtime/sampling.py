"""Choosing the next token from logits, in the order RWKV users know from the rwkv package's PIPELINE.

softmax -> top-p cut -> top-k cut -> temperature as probs ** (1 / T) -> renormalise -> draw.
Pure: never modifies the logits it is given.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def sample_logits(
    logits: np.ndarray,  # (V,) float32
    rng: np.random.Generator,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> int:
    """One token id. temperature 0 (or top_k 1) is greedy."""
    if temperature < 0 or not 0 <= top_p <= 1 or top_k < 0:
        raise ValueError("need temperature >= 0, 0 <= top_p <= 1 and top_k >= 0")
    if temperature == 0 or top_k == 1:
        return int(np.argmax(logits))
    probs = softmax(logits)  # (V,) float64
    if top_p < 1:
        order = np.sort(probs)[::-1]
        cutoff = order[min(int(np.searchsorted(np.cumsum(order), top_p)), len(order) - 1)]
        probs = np.where(probs < cutoff, 0.0, probs)
    if 0 < top_k < len(probs):
        kth = np.sort(probs)[::-1][top_k - 1]
        probs = np.where(probs < kth, 0.0, probs)
    if temperature != 1:
        probs = probs ** (1.0 / temperature)
    probs = probs / probs.sum()
    return int(rng.choice(len(probs), p=probs))
