"""quant.blocks: numpy dequantization against gguf-py and against hand-built blocks."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

from rwkv_edge.quant.blocks import BLOCK_TYPES, dequantize
from rwkv_edge.quant.ggml_types import BLOCK_SIZES, GGMLType, tensor_nbytes

SHAPES = [(32,), (1, 32), (1, 4096), (7, 96), (257, 64), (2, 3, 64), (5, 1, 32)]


def _rows(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1])


@pytest.mark.parametrize("qtype", list(GGMLType), ids=lambda t: t.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_bytes_match_gguf(qtype: GGMLType, shape: tuple[int, ...]) -> None:
    # Random bytes include inf/NaN scales; both sides must produce the same bits anyway.
    rng = np.random.default_rng([int(qtype), *shape])
    raw = rng.integers(0, 256, tensor_nbytes(qtype, shape), dtype=np.uint8).reshape(
        _rows(shape), -1
    )
    with np.errstate(invalid="ignore", over="ignore"):
        ours = dequantize(qtype, raw, shape)
        theirs = gguf_dequantize(raw, gguf.GGMLQuantizationType(int(qtype)))
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_array_equal(ours, theirs.reshape(shape), strict=True)


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES), ids=lambda t: t.name)
def test_real_values_match_gguf(qtype: GGMLType) -> None:
    """Blocks quantized by gguf-py from ordinary weights (no inf/NaN): bit-identical values."""
    x = np.random.default_rng(1).standard_normal((33, 256)).astype(np.float32)  # (rows, cols)
    packed = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qtype)))  # (33, row_nbytes)
    ours = dequantize(qtype, packed, x.shape)
    np.testing.assert_array_equal(
        ours, gguf_dequantize(packed, gguf.GGMLQuantizationType(int(qtype)))
    )
    # and it is a dequantization of x: the error bound per block as a fraction of its max |x| (half
    # a step; Q4_0/Q5_0 map -max to a clamped code, a whole step), plus fp16 rounding of d and m
    fraction = {GGMLType.Q4_0: 1 / 8, GGMLType.Q4_1: 1 / 15, GGMLType.Q5_0: 1 / 16,
                GGMLType.Q5_1: 1 / 31, GGMLType.Q8_0: 1 / 254}[qtype]  # fmt: skip
    blocks = x.reshape(-1, 32)  # (n_blocks, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    assert np.all(np.abs(ours.reshape(-1, 32) - blocks) <= amax * (fraction * 1.02 + 2**-10))


@pytest.mark.parametrize("qtype", list(GGMLType), ids=lambda t: t.name)
def test_flat_and_row_layouts_agree(qtype: GGMLType) -> None:
    shape = (4, 64)
    raw = np.random.default_rng(2).integers(0, 256, tensor_nbytes(qtype, shape), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_array_equal(
            dequantize(qtype, raw, shape), dequantize(qtype, raw.reshape(4, -1), shape)
        )


def _block(*fields: bytes) -> np.ndarray:
    """One block from its fields, as the (1, type_size) uint8 a row of one block is."""
    return np.frombuffer(b"".join(fields), dtype=np.uint8).reshape(1, -1)


def _f16(x: float) -> bytes:
    return np.float16(x).tobytes()


def _u32(x: int) -> bytes:
    return x.to_bytes(4, "little")


# Byte j of qs: low nibble j, high nibble 15 - j; so element j is j and element j + 16 is 15 - j.
QS_RAMP = bytes(j | (15 - j) << 4 for j in range(16))
RAMP = np.array(
    list(range(16)) + list(range(15, -1, -1)), dtype=np.float32
)  # the 4-bit q of each element


def test_q8_0_hand_built() -> None:
    data = _block(_f16(2.0), np.arange(-16, 16, dtype=np.int8).tobytes())
    np.testing.assert_array_equal(
        dequantize(GGMLType.Q8_0, data, (32,)), np.arange(-32, 32, 2, dtype=np.float32)
    )


def test_q4_0_hand_built() -> None:
    data = _block(_f16(0.5), QS_RAMP)
    expected = (
        RAMP - 8
    ) * 0.5  # element 0: -4.0, element 15: 3.5, element 16: 3.5, element 31: -4.0
    np.testing.assert_array_equal(dequantize(GGMLType.Q4_0, data, (1, 32)), expected.reshape(1, 32))
    assert dequantize(GGMLType.Q4_0, data, (32,))[[0, 15, 16, 31]].tolist() == [
        -4.0,
        3.5,
        3.5,
        -4.0,
    ]


def test_q4_1_hand_built() -> None:
    data = _block(_f16(0.25), _f16(-1.0), QS_RAMP)
    values = dequantize(GGMLType.Q4_1, data, (32,))
    np.testing.assert_array_equal(values, RAMP * 0.25 - 1.0)
    assert values[[0, 15, 16, 31]].tolist() == [-1.0, 2.75, 2.75, -1.0]


# qs bytes 0x3C: every low nibble is 12, every high nibble is 3.
@pytest.mark.parametrize(
    ("qh", "expected"),
    [
        # bits 0..15 set: elements 0..15 are q = 12 + 16 = 28; elements 16..31 are q = 3
        (0x0000FFFF, [28 - 16] * 16 + [3 - 16] * 16),
        # bits 16..31 set: elements 0..15 are q = 12; elements 16..31 are q = 3 + 16 = 19
        (0xFFFF0000, [12 - 16] * 16 + [19 - 16] * 16),
        # only bit 1 and bit 17: element 1 is 28, element 17 is 19
        (0x00020002, [-4, 12] + [-4] * 14 + [-13, 3] + [-13] * 14),
    ],
)
def test_q5_0_hand_built(qh: int, expected: list[int]) -> None:
    data = _block(_f16(0.5), _u32(qh), bytes([0x3C] * 16))
    np.testing.assert_array_equal(
        dequantize(GGMLType.Q5_0, data, (32,)), np.array(expected, np.float32) * 0.5
    )


def test_q5_1_hand_built() -> None:
    data = _block(_f16(0.5), _f16(1.0), _u32(0x0000FFFF), bytes([0x3C] * 16))
    expected = [28 * 0.5 + 1.0] * 16 + [3 * 0.5 + 1.0] * 16  # 15.0 then 2.5
    np.testing.assert_array_equal(
        dequantize(GGMLType.Q5_1, data, (32,)), np.array(expected, np.float32)
    )


def test_bf16_f16_f32_hand_built() -> None:
    bf16 = np.array([0x3F80, 0xC000, 0x4049, 0x0000, 0x8000, 0x7F80], dtype=np.uint16)
    expected = [1.0, -2.0, 3.140625, 0.0, -0.0, np.inf]
    np.testing.assert_array_equal(dequantize(GGMLType.BF16, bf16, (6,)), expected)
    np.testing.assert_array_equal(
        dequantize(GGMLType.BF16, bf16.view(np.uint8), (2, 3)), np.reshape(expected, (2, 3))
    )
    f16 = np.array([0.5, -1.25, 65504.0, 2**-24], dtype=np.float16)
    np.testing.assert_array_equal(
        dequantize(GGMLType.F16, f16, (2, 2)), [[0.5, -1.25], [65504.0, 2**-24]]
    )
    assert dequantize(GGMLType.F16, f16.view(np.uint8), (4,)).tolist() == [
        0.5,
        -1.25,
        65504.0,
        2**-24,
    ]


def test_f32_is_a_view_not_a_copy() -> None:
    data = np.arange(12, dtype=np.float32)
    values = dequantize(GGMLType.F32, data, (3, 4))
    assert values.shape == (3, 4) and np.shares_memory(values, data)
    raw = data.view(np.uint8)
    assert np.shares_memory(dequantize(GGMLType.F32, raw, (2, 2, 3)), data)


def test_little_endian_fields() -> None:
    # d = 0x3C00 = 1.0 stored little-endian (00 3C); a big-endian reading would give 1.5e-5 or so
    data = _block(b"\x00\x3c", bytes(range(32)))
    assert dequantize(GGMLType.Q8_0, data, (32,)).tolist() == list(range(32))


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES), ids=lambda t: t.name)
def test_block_types_declare_their_geometry(qtype: GGMLType) -> None:
    n_blocks = 3
    blocks = np.zeros((n_blocks, BLOCK_SIZES[qtype][1]), dtype=np.uint8)
    assert BLOCK_TYPES[qtype].qtype == qtype
    assert BLOCK_TYPES[qtype].dequantize_blocks(blocks).shape == (n_blocks, BLOCK_SIZES[qtype][0])


def test_wrong_size_or_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs 68 bytes, got 34"):
        dequantize(GGMLType.Q8_0, np.zeros(34, np.uint8), (64,))
    with pytest.raises(ValueError, match="not a multiple"):
        dequantize(GGMLType.Q4_0, np.zeros(18, np.uint8), (2, 16))
    with pytest.raises(ValueError, match="raw uint8"):
        dequantize(GGMLType.F32, np.zeros(4, np.float16), (2,))
