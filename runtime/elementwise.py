"""Small per-token operations shared by every version: activations and the token shift."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def silu(z: np.ndarray) -> np.ndarray:
    return z * sigmoid(z)


def relu_squared(z: np.ndarray) -> np.ndarray:
    return np.square(np.maximum(z, 0))


def token_shift(x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
    """xx = (previous token's input) - x for T tokens; x: (T, C), x_prev: (C,) is then set to x[-1]."""
    xx = np.concatenate([x_prev[None, :], x[:-1]]) - x
    x_prev[:] = x[-1]
    return xx
