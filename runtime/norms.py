"""LayerNorm and per-head GroupNorm over the last axis, in float32 with two-pass statistics."""

from __future__ import annotations

import numpy as np


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """x: (..., C) float32; weight, bias: (C,). Biased variance, as PyTorch."""
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    return centered / np.sqrt(var + np.float32(eps)) * weight + bias


def group_norm(x: np.ndarray, n_head: int, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """x: (T, C) float32 normalised in n_head contiguous groups (one per head); weight, bias: (C,)."""
    T, C = x.shape
    g = x.reshape(T, n_head, C // n_head)  # (T, H, N)
    mean = g.mean(axis=-1, keepdims=True)
    centered = g - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    return (centered / np.sqrt(var + np.float32(eps))).reshape(T, C) * weight + bias
