"""Compute kernels: W x (decode) and X W^T (prompts) for every weight type, in C with a numpy
twin. The implementation is chosen once at import (see dispatch.py); all give the same bits.

    from rwkv_edge import kernels
    with kernels.ThreadPool() as pool:
        y = kernels.matvec(qtype, w, n_rows, n_cols, x, pool=pool)
"""

from .dispatch import CHOSEN as _CHOSEN
from .pool import ThreadPool, default_threads

backend: str = _CHOSEN.name  # "avxvnni" | "avx2" | "scalar" | "numpy"
features: frozenset[str] = _CHOSEN.features  # CPU extensions seen (avx, fma, f16c, avx2, avxvnni)
matvec = _CHOSEN.matvec  # (qtype, w, n_rows, n_cols, x (n_cols,), out=None, *, pool=None)
matmul = _CHOSEN.matmul  # (qtype, w, n_rows, n_cols, x (T, n_cols), out=None, *, pool=None)

__all__ = ["ThreadPool", "backend", "default_threads", "features", "matmul", "matvec"]
