"""The C kernels (the cffi module _ext) behind reference.py's operations, arguments checked
first. `impl` picks the implementation (lib.RKE_IMPL_SCALAR, _AVX2 or _AVXVNNI); the caller
(dispatch.py) makes sure the CPU has it."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import checks
from ._ext import ffi, lib
from .pool import ThreadPool
from .reference import Q8X, QK, QUANT_TYPES


def _pool(pool: ThreadPool | None) -> Any:
    if pool is None:
        return ffi.NULL
    if not isinstance(pool, ThreadPool):
        raise ValueError(f"pool must be a ThreadPool, got {type(pool).__name__}")  # noqa: TRY004
    return pool.handle()


def _status(rc: int, what: str) -> None:
    if rc != lib.RKE_OK:  # checks.py rejects everything C would, so this is a bug
        raise RuntimeError(f"{what}: C kernel status {rc}")


def _scratch(qtype: int, n_tokens: int, n_cols: int) -> Any:
    """Room for the q8x activations of the quantized types (NULL for the float types)."""
    if qtype not in QUANT_TYPES:
        return ffi.NULL
    return ffi.from_buffer("rke_block_q8x[]", np.empty(n_tokens * (n_cols // QK), Q8X))


def quantize_q8x(impl: int, x: np.ndarray) -> np.ndarray:
    """(T, n) float32, n % 32 == 0 -> (T, n / 32) Q8X blocks, as the kernels quantize x."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("x must be a 2-D numpy array")
    n_cols = checks.count("n_cols", x.shape[1])
    if n_cols % QK:
        raise ValueError(f"q8x activations need a multiple of {QK} columns, got {n_cols}")
    x = checks.activations(x, n_cols, tokens=True)
    out = np.empty((x.shape[0], n_cols // QK), Q8X)
    rc = lib.rke_quantize_q8x(
        impl, ffi.from_buffer("float[]", x), ffi.from_buffer("rke_block_q8x[]", out), out.size
    )
    _status(rc, "quantize_q8x")
    return out


def matvec(
    impl: int,
    qtype: int,
    w: np.ndarray,
    n_rows: int,
    n_cols: int,
    x: np.ndarray,
    out: np.ndarray | None = None,
    *,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """y (n_rows,) = W (n_rows, n_cols) @ x (n_cols,), W being `w`'s bytes of type `qtype`."""
    qtype = checks.qtype_of(qtype)
    n_rows, n_cols = checks.count("n_rows", n_rows), checks.count("n_cols", n_cols)
    w = checks.weights(qtype, w, n_rows, n_cols)
    x = checks.activations(x, n_cols, tokens=False)
    y = checks.output(out, (n_rows,), w, x)
    rc = lib.rke_matvec(
        _pool(pool),
        impl,
        qtype,
        ffi.from_buffer(w),
        ffi.from_buffer("float[]", x),
        _scratch(qtype, 1, n_cols),
        ffi.from_buffer("float[]", y, require_writable=True),
        n_rows,
        n_cols,
    )
    _status(rc, "matvec")
    return y


def matmul(
    impl: int,
    qtype: int,
    w: np.ndarray,
    n_rows: int,
    n_cols: int,
    x: np.ndarray,
    out: np.ndarray | None = None,
    *,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """Y (T, n_rows) = X (T, n_cols) @ W^T; row t equals matvec of X[t] bit for bit."""
    qtype = checks.qtype_of(qtype)
    n_rows, n_cols = checks.count("n_rows", n_rows), checks.count("n_cols", n_cols)
    w = checks.weights(qtype, w, n_rows, n_cols)
    x = checks.activations(x, n_cols, tokens=True)
    n_tokens = x.shape[0]
    y = checks.output(out, (n_tokens, n_rows), w, x)
    rc = lib.rke_matmul(
        _pool(pool),
        impl,
        qtype,
        ffi.from_buffer(w),
        ffi.from_buffer("float[]", x),
        _scratch(qtype, n_tokens, n_cols),
        ffi.from_buffer("float[]", y, require_writable=True),
        n_tokens,
        n_rows,
        n_cols,
    )
    _status(rc, "matmul")
    return y
