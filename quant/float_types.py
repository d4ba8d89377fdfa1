"""float32 -> F16 / BF16 storage, rounded exactly as ggml rounds (ggml_compute_fp32_to_{fp16,bf16})."""

from __future__ import annotations

import numpy as np

_SIGN_CLEARED = np.uint32(0x7FFF_FFFF)
_INF_BITS = np.uint32(0x7F80_0000)
_BF16_QUIET = np.uint16(0x0040)  # the top mantissa bit of a bf16: set, a NaN is quiet


def to_f16(x: np.ndarray) -> np.ndarray:
    """float32 (...) -> float16 (...): round to nearest even, overflow to inf, fp16 subnormals kept.

    numpy's cast is the IEEE conversion that F16C's `vcvtps2ph` and ggml's scalar fallback perform.
    """
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype("<f2")


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 (...) -> uint16 (...) bf16 bits: the upper half of the float32, rounded to nearest even.

    A NaN is truncated instead, with its quiet bit forced on, so rounding can neither carry it into
    infinity nor leave a signalling NaN.
    """
    bits = np.ascontiguousarray(x, dtype="<f4").view("<u4")  # (...) float32 bits
    odd = (bits >> np.uint32(16)) & np.uint32(1)
    # only a NaN's bits can wrap around uint32 here, and those lanes are replaced below
    rounded = ((bits + (np.uint32(0x7FFF) + odd)) >> np.uint32(16)).astype("<u2")
    nan = (bits & _SIGN_CLEARED) > _INF_BITS
    if nan.any():
        rounded[nan] = (bits[nan] >> np.uint32(16)).astype("<u2") | _BF16_QUIET
    return rounded
