"""The numpy backend: reference.py's kernels behind native.py's signatures and argument checks,
for installs without a C compiler (and as the third column of the cross-backend tests)."""

from __future__ import annotations

import numpy as np

from . import checks, reference
from .pool import ThreadPool


def matvec(
    qtype: int,
    w: np.ndarray,
    n_rows: int,
    n_cols: int,
    x: np.ndarray,
    out: np.ndarray | None = None,
    *,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """y (n_rows,) = W (n_rows, n_cols) @ x (n_cols,); `pool` is accepted and unused."""
    qtype = checks.qtype_of(qtype)
    n_rows, n_cols = checks.count("n_rows", n_rows), checks.count("n_cols", n_cols)
    w = checks.weights(qtype, w, n_rows, n_cols)
    x = checks.activations(x, n_cols, tokens=False)
    y = checks.output(out, (n_rows,), w, x)
    y[...] = reference.matvec(qtype, w, n_rows, n_cols, x)
    return y


def matmul(
    qtype: int,
    w: np.ndarray,
    n_rows: int,
    n_cols: int,
    x: np.ndarray,
    out: np.ndarray | None = None,
    *,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """Y (T, n_rows) = X (T, n_cols) @ W^T; `pool` is accepted and unused."""
    qtype = checks.qtype_of(qtype)
    n_rows, n_cols = checks.count("n_rows", n_rows), checks.count("n_cols", n_cols)
    w = checks.weights(qtype, w, n_rows, n_cols)
    x = checks.activations(x, n_cols, tokens=True)
    y = checks.output(out, (x.shape[0], n_rows), w, x)
    y[...] = reference.matmul(qtype, w, n_rows, n_cols, x)
    return y


def quantize_q8x(x: np.ndarray) -> np.ndarray:
    """(T, n) float32 -> (T, n / 32) Q8X blocks."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("x must be a 2-D numpy array")
    n_cols = checks.count("n_cols", x.shape[1])
    if n_cols % reference.QK:
        raise ValueError(f"q8x activations need a multiple of {reference.QK} columns, got {n_cols}")
    return reference.quantize_q8x(checks.activations(x, n_cols, tokens=True))
