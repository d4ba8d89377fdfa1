"""ggml tensor types: ids, block geometry, and the RawTensor every reader returns.

The ids are ggml's (and GGUF's); rwkv.cpp's own `.bin` type codes are mapped to them by its reader.
The table itself is kernels/ggml_types.py, the only place where block geometry lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.ggml_types import BLOCK_SIZES, IQ4_NL_VALUES, GGMLType


# The type ids and block table live with the kernels, the lowest layer (which imports nothing above it);
# the file formats use the same ggml ids.
__all__ = ["BLOCK_SIZES", "IQ4_NL_VALUES", "GGMLType", "RawTensor", "row_nbytes", "tensor_nbytes"]


def row_nbytes(qtype: GGMLType, n_cols: int) -> int:
    """Bytes of one row of `n_cols` elements; raises if the row is not whole blocks."""
    block, size = BLOCK_SIZES[qtype]
    if n_cols % block:
        raise ValueError(f"row of {n_cols} elements is not a multiple of the {qtype.name} block ({block})")
    return n_cols // block * size


def tensor_nbytes(qtype: GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes of a whole tensor of numpy `shape` (last axis contiguous, as ggml's ne0)."""
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return n_rows * row_nbytes(qtype, shape[-1] if shape else 1)


@dataclass(frozen=True)
class RawTensor:
    """A tensor as stored in a file: its type, numpy-order shape and undecoded data.

    `data` is a (usually memory-mapped) view: float32/float16 typed for F32/F16, uint16 for BF16,
    and uint8 of shape (rows, row_nbytes) for block-quantized types.
    """

    qtype: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray

    def to_f32(self) -> np.ndarray:
        """The values as a float32 array of `shape` (a view when already F32)."""
        from .blocks import dequantize

        return dequantize(self.qtype, self.data, self.shape)

    def typed_floats(self, *, keep_f16: bool = True) -> np.ndarray:
        """The values as a numpy array of `shape`: F32 and (with keep_f16) F16 as stored, a view of the
        data; every other type decoded to float32."""
        kept = (GGMLType.F32, GGMLType.F16) if keep_f16 else (GGMLType.F32,)
        if self.qtype in kept and self.data.dtype in (np.float32, np.float16):
            return self.data.reshape(self.shape)
        return self.to_f32()

    @staticmethod
    def from_array(array: np.ndarray) -> "RawTensor":
        """Wrap a float32 or float16 numpy array."""
        qtype = {np.dtype(np.float32): GGMLType.F32, np.dtype(np.float16): GGMLType.F16}[array.dtype]
        return RawTensor(qtype, tuple(array.shape), array)
