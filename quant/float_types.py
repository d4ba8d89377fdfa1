"""float32 -> F16 / BF16 storage, bit for bit as ggml-base converts (ggml_fp32_to_fp16_row,
ggml_fp32_to_bf16_row_ref)."""

from __future__ import annotations

import numpy as np

_SIGN_CLEARED = np.uint32(0x7FFF_FFFF)
_INF_BITS = np.uint32(0x7F80_0000)
_BF16_QUIET = np.uint16(0x0040)  # the top mantissa bit of a bf16: set, a NaN is quiet
_F16_NAN, _F16_NEG_NAN = np.uint16(0x7E00), np.uint16(0xFE00)


def to_f16(x: np.ndarray) -> np.ndarray:
    """float32 (...) -> float16 (...): round to nearest even, overflow to inf, fp16 subnormals kept.

    numpy's cast rounds as ggml does. A NaN becomes ggml's quiet NaN 0x7E00 (with its sign), where
    numpy, and so gguf-py, would keep the top payload bits (and leave 0x7F800001 signalling).
    """
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        half = x.astype("<f2")
    nan = np.isnan(x)
    if nan.any():
        half.view("<u2")[nan] = np.where(np.signbit(x[nan]), _F16_NEG_NAN, _F16_NAN)
    return half


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 (...) -> uint16 (...) bf16 bits: the upper half of the float32, rounded to nearest even.

    A NaN is truncated instead, with its quiet bit forced on, so rounding can neither carry it into
    infinity nor leave a signalling NaN.
    """
    bits = np.asarray(x, dtype="<f4").view("<u4")  # (...) float32 bits
    odd = (bits >> np.uint32(16)) & np.uint32(1)
    # only a NaN's bits can wrap around uint32 here, and those lanes are replaced below
    rounded = ((bits + (np.uint32(0x7FFF) + odd)) >> np.uint32(16)).astype("<u2")
    nan = (bits & _SIGN_CLEARED) > _INF_BITS
    if nan.any():
        rounded[nan] = (bits[nan] >> np.uint32(16)).astype("<u2") | _BF16_QUIET
    return rounded
