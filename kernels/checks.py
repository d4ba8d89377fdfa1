"""Argument checks for every kernel entry, run before any pointer reaches C.

A wrong dtype, shape, byte count, alignment or overlap raises ValueError naming the offending
value, so malformed model data can never make a kernel read or write out of bounds. Wrong types
raise ValueError too (not TypeError): callers catch one exception for every malformed argument.
"""

from __future__ import annotations

import operator

import numpy as np

from .ggml_types import BLOCK_SIZES, GGMLType

# Weight dtypes accepted per type, besides raw bytes (uint8 / int8).
_TYPED = {
    GGMLType.F32: (np.dtype("<f4"),),
    GGMLType.F16: (np.dtype("<f2"), np.dtype("<u2")),
    GGMLType.BF16: (np.dtype("<u2"),),
}
SUPPORTED = (
    GGMLType.F32,
    GGMLType.F16,
    GGMLType.BF16,
    GGMLType.Q4_0,
    GGMLType.Q4_1,
    GGMLType.Q5_0,
    GGMLType.Q5_1,
    GGMLType.Q8_0,
    GGMLType.IQ4_NL,
)


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def qtype_of(qtype: int) -> GGMLType:
    """The supported weight type with ggml id `qtype`."""
    try:
        t = GGMLType(operator.index(qtype))
    except (TypeError, ValueError):
        raise ValueError(f"unknown weight type {qtype!r}") from None
    if t not in SUPPORTED:
        raise ValueError(f"no kernel for weight type {t.name}")
    return t


def count(name: str, value: int) -> int:
    """A positive integer size (not a bool, not a float)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")
    return n


def weights(qtype: GGMLType, w: object, n_rows: int, n_cols: int) -> np.ndarray:
    """`w` (an array, or any contiguous buffer such as bytes or mmap) as n_rows rows of n_cols
    `qtype` elements: whole blocks, exact bytes, contiguous, aligned for the C structs (4 bytes
    for F32, 2 for the fp16 fields of the others)."""
    if not isinstance(w, np.ndarray):
        try:
            w = np.frombuffer(w, np.uint8)
        except (TypeError, ValueError, BufferError):
            raise ValueError(
                f"weights must be an array or a contiguous buffer, got {type(w).__name__}"
            ) from None
    block, size = BLOCK_SIZES[qtype]
    if n_cols % block:
        raise ValueError(f"{qtype.name} rows need a multiple of {block} columns, got {n_cols}")
    if w.dtype.itemsize != 1 and w.dtype not in _TYPED.get(qtype, ()):
        raise ValueError(f"{qtype.name} weights cannot be given as {w.dtype}")
    if not w.flags.c_contiguous:
        raise ValueError("weights must be C-contiguous")
    expected = n_rows * (n_cols // block) * size
    if w.nbytes != expected:
        raise ValueError(
            f"{n_rows} x {n_cols} {qtype.name} weights need {expected} bytes, got {w.nbytes}"
        )
    align = 4 if qtype == GGMLType.F32 else 2
    if _address(w) % align:
        raise ValueError(f"{qtype.name} weights must be {align}-byte aligned")
    return w


def activations(x: np.ndarray, n_cols: int, *, tokens: bool) -> np.ndarray:
    """`x` as float32 (n_cols,) or, with `tokens`, (n_tokens, n_cols): C-contiguous, aligned."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x must be a numpy array, got {type(x).__name__}")  # noqa: TRY004
    if x.dtype != np.dtype("<f4"):
        raise ValueError(f"x must be float32, got {x.dtype}")
    ndim = 2 if tokens else 1
    if x.ndim != ndim or x.shape[-1] != n_cols or (tokens and x.shape[0] < 1):
        want = "(n_tokens, n_cols)" if tokens else "(n_cols,)"
        raise ValueError(f"x must have shape {want} with n_cols={n_cols}, got {x.shape}")
    if not x.flags.c_contiguous or not x.flags.aligned:
        raise ValueError("x must be C-contiguous and aligned")
    return x


def output(out: np.ndarray | None, shape: tuple[int, ...], *inputs: np.ndarray) -> np.ndarray:
    """`out` (or a new array) as a writable float32 array of `shape` sharing no memory with
    `inputs`."""
    if out is None:
        return np.empty(shape, np.float32)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")  # noqa: TRY004
    if out.dtype != np.dtype("<f4") or out.shape != shape:
        raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.aligned or not out.flags.writeable:
        raise ValueError("out must be C-contiguous, aligned and writable")
    if any(np.may_share_memory(out, a) for a in inputs):
        raise ValueError("out must not overlap the weights or x")
    return out
