"""Dequantization of ggml tensor types in numpy: the reference the C kernels must match bit for bit.

One section per block type. Each works on a (n_blocks, type_size) uint8 view of the blocks and uses
ggml's field names: `d` scale, `m` minimum, `qh` fifth bits, `qs` quants. Quantizers belong next to
the dequantizer of their type.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

import numpy as np

from .ggml_types import BLOCK_SIZES, GGMLType, tensor_nbytes

QK = 32  # elements per block of every legacy quant type


# -------------------------------------------------------------------------------------------------
# Field decoders shared by the block types


def _f16_field(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 field at byte `start` of each block, as (n_blocks, 1) float32."""
    return blocks[:, start : start + 2].view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n_blocks, 16) packed bytes -> (n_blocks, 32) uint8 in 0..15.

    ggml packs element j in the low nibble of byte j and element j + 16 in its high nibble
    (two contiguous halves, not interleaved pairs), so one AND and one shift unpack a block.
    """
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n_blocks, 4) bytes of a little-endian u32 -> (n_blocks, 32) uint8: bit j of element j."""
    bits = qh.view("<u4") >> np.arange(QK, dtype=np.uint32)  # (n_blocks, 32)
    return (bits & np.uint32(1)).astype(np.uint8)


# -------------------------------------------------------------------------------------------------
# Block types. Element j of a block is y[j], computed in float32 as ggml's dequantize_row_* does.
# q * d is exact in float32 (an integer of at most 8 bits times an 11-bit fp16 significand), so each
# value is rounded at most once (when m is added): C kernels get the same bits with or without FMA.


class BlockType(Protocol):
    """What every block type provides; its quantizer will sit beside `dequantize_blocks`."""

    qtype: GGMLType

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray: ...


class Q4_0:
    """18 bytes: d (f16) | qs[16] (4-bit). y[j] = (q[j] - 8) * d."""

    qtype = GGMLType.Q4_0

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 18) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        q = _nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)  # (n_blocks, 32)
        return q.astype(np.float32) * d


class Q4_1:
    """20 bytes: d (f16) | m (f16) | qs[16] (4-bit). y[j] = q[j] * d + m."""

    qtype = GGMLType.Q4_1

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 20) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        m = _f16_field(blocks, 2)  # (n_blocks, 1)
        q = _nibbles(blocks[:, 4:20])  # (n_blocks, 32)
        return q.astype(np.float32) * d + m


class Q5_0:
    """22 bytes: d (f16) | qh (u32, bit j = bit 4 of q[j]) | qs[16] (bits 0..3). y = (q-16) * d."""

    qtype = GGMLType.Q5_0

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 22) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        qh = _fifth_bits(blocks[:, 2:6])  # (n_blocks, 32)
        q = _nibbles(blocks[:, 6:22]) | (qh << np.uint8(4))  # (n_blocks, 32) in 0..31
        return (q.astype(np.int8) - np.int8(16)).astype(np.float32) * d


class Q5_1:
    """24 bytes: d (f16) | m (f16) | qh (u32) | qs[16]. y[j] = q[j] * d + m, q as in Q5_0."""

    qtype = GGMLType.Q5_1

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 24) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        m = _f16_field(blocks, 2)  # (n_blocks, 1)
        qh = _fifth_bits(blocks[:, 4:8])  # (n_blocks, 32)
        q = _nibbles(blocks[:, 8:24]) | (qh << np.uint8(4))  # (n_blocks, 32) in 0..31
        return q.astype(np.float32) * d + m


class Q8_0:
    """34 bytes: d (f16) | qs[32] (int8). y[j] = qs[j] * d."""

    qtype = GGMLType.Q8_0

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 34) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        qs = blocks[:, 2:34].view(np.int8)  # (n_blocks, 32)
        return qs.astype(np.float32) * d


BLOCK_TYPES: Mapping[GGMLType, type[BlockType]] = MappingProxyType(
    {t.qtype: t for t in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)}
)


# -------------------------------------------------------------------------------------------------
# Whole tensors


def dequantize(qtype: GGMLType, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values of a tensor of numpy `shape` stored as `qtype`.

    `data` is the stored tensor: typed (float32, float16, uint16 for BF16) or raw little-endian
    bytes as uint8, either flat or (rows, row_nbytes). F32 comes back as a view of `data` whenever
    `data` is contiguous; every other type is decoded into a new array.
    """
    qtype = GGMLType(qtype)
    expected = tensor_nbytes(qtype, tuple(shape))
    if data.nbytes != expected:
        raise ValueError(
            f"{qtype.name} tensor of shape {tuple(shape)} needs {expected} bytes, got {data.nbytes}"
        )
    if qtype == GGMLType.F32:
        return _as_dtype(data, "<f4").reshape(shape)
    if qtype == GGMLType.F16:
        return _as_dtype(data, "<f2").astype(np.float32).reshape(shape)
    if qtype == GGMLType.BF16:
        # bf16 is the top half of an f32, so widening is exact
        upper = _as_dtype(data, "<u2").astype(np.uint32) << np.uint32(16)
        return upper.view(np.float32).reshape(shape)
    type_size = BLOCK_SIZES[qtype][1]
    blocks = _as_dtype(data, np.uint8).reshape(-1, type_size)  # (n_blocks, type_size)
    return BLOCK_TYPES[qtype].dequantize_blocks(blocks).reshape(shape)


def _as_dtype(data: np.ndarray, dtype: str | type) -> np.ndarray:
    """`data` as `dtype`: itself when already typed so, else its raw uint8 bytes reinterpreted."""
    if data.dtype == np.dtype(dtype):
        return data
    if data.dtype != np.uint8:
        raise ValueError(
            f"tensor data must be {np.dtype(dtype)} or raw uint8 bytes, got {data.dtype}"
        )
    return np.ascontiguousarray(data).reshape(-1).view(dtype)
