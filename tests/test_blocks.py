"""quant.blocks: numpy dequantization and quantization against gguf-py and hand-built blocks."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rwkv_edge.quant.blocks import BLOCK_TYPES, dequantize, quantize, quantize_rows
from rwkv_edge.quant.float_types import to_bf16
from rwkv_edge.quant.ggml_types import BLOCK_SIZES, GGMLType, row_nbytes, tensor_nbytes

SHAPES = [(32,), (1, 32), (1, 4096), (7, 96), (257, 64), (2, 3, 64), (5, 1, 32)]
# The types whose quantizer is ggml's reference, byte for byte (IQ4_NL has a search of its own, which
# tests/test_iq4_nl.py checks).
GGML_EXACT = {t: c for t, c in BLOCK_TYPES.items() if t != GGMLType.IQ4_NL}


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


@pytest.mark.parametrize("qtype", list(GGML_EXACT), ids=lambda t: t.name)
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


# -------------------------------------------------------------------------------------------------
# Quantization: byte-for-byte against gguf-py (a numpy port tested bit-exact against libggml), and
# hand-built blocks for the rules where gguf-py and ggml's C part ways (the sign of a zero).

# d = max / -span (Q8_0: amax / 127); d = (max - min) / levels
SYMMETRIC_SPAN = {GGMLType.Q4_0: 8, GGMLType.Q5_0: 16, GGMLType.Q8_0: 127}
ASYMMETRIC_LEVELS = {GGMLType.Q4_1: 15, GGMLType.Q5_1: 31}
ENCODED = [*GGML_EXACT, GGMLType.F16, GGMLType.BF16]


def _gguf_bytes(qtype: GGMLType, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        data = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qtype)))
    return np.ascontiguousarray(data).view(np.uint8).reshape(-1)


def _our_bytes(qtype: GGMLType, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(quantize(qtype, x)).view(np.uint8).reshape(-1)


def _tie_blocks(qtype: GGMLType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Blocks whose d is a power of two, so x * id lands exactly on the .5 steps where the rounding rule
    decides; the extreme that sets d sits at a random place, and symmetric blocks often hold both
    +max and -max (the first one sets the sign of d)."""
    scale = np.exp2(rng.integers(-12, 12, (n_blocks, 1)))  # (n_blocks, 1)
    pos = rng.integers(0, QK_TEST, n_blocks)
    rows = np.arange(n_blocks)
    if qtype in SYMMETRIC_SPAN:
        span = SYMMETRIC_SPAN[qtype]
        x = rng.integers(-2 * span, 2 * span + 1, (n_blocks, QK_TEST)) / 2 * scale
        x[rows, pos] = rng.choice([-span, span], n_blocks) * scale[:, 0]
        return x.astype(np.float32)
    levels = ASYMMETRIC_LEVELS[qtype]
    low = rng.integers(-levels, levels, (n_blocks, 1)) * scale
    x = low + rng.integers(0, 2 * levels + 1, (n_blocks, QK_TEST)) / 2 * scale
    x[rows, pos] = low[:, 0] + levels * scale[:, 0]
    x[rows, (pos + 1) % QK_TEST] = low[:, 0]
    return x.astype(np.float32)


QK_TEST = 32


def _dataset(kind: str, qtype: GGMLType, rng: np.random.Generator) -> np.ndarray:
    """(33, 256) float32 of one kind. No -0.0: gguf-py and ggml's C treat its sign differently."""
    normal = rng.standard_normal((33, 256))
    if kind in ("ties", "near_ties"):
        blocks = _tie_blocks(qtype if qtype in BLOCK_TYPES else GGMLType.Q8_0, 33 * 8, rng)
        if kind == "near_ties":  # scales off powers of two: x * id lands within ulps of the steps,
            blocks *= rng.uniform(1, 2, (33 * 8, 1)).astype(np.float32)  # so op order shows
        x = blocks.reshape(33, 256)
    elif kind == "outliers":  # weights of std 0.02 with 1% of them 50x larger
        x = 0.02 * normal * np.where(rng.random(normal.shape) < 0.01, 50.0, 1.0)
    elif kind == "zero_rows_and_blocks":
        x = normal.copy()
        x[::3] = 0.0
        x[1, 64:96] = 0.0
        x[2, :31] = 0.0  # one non-zero element
    elif kind == "float32_range_overflow":  # max - min overflows float32 (Q4_1/Q5_1)
        x = np.clip(normal, -2.2, 2.2) * 1.5e38
    else:
        x = normal * SCALES[kind]
    return (x + 0.0).astype(np.float32)  # + 0.0 turns any -0.0 into +0.0


SCALES = {
    "normal": 1.0,
    "fp16_subnormal_scales": 1e-3,  # d ~ 3e-5 .. 4e-4: fp16 subnormals
    "fp16_underflowing_scales": 1e-7,  # d below fp16's smallest subnormal: stored as 0
    "float32_subnormal_blocks": 1e-40,  # 1/d overflows float32 (ggml's undefined case)
    "near_fp16_max": 2e4,  # F16 and BF16 values around 65504 and past it
    "fp16_overflowing_scales": 1e7,  # d past 65504: stored as inf
}
KINDS = ["normal", "ties", "near_ties", "outliers", "zero_rows_and_blocks", "fp16_subnormal_scales",
         "fp16_underflowing_scales", "float32_subnormal_blocks", "near_fp16_max",
         "fp16_overflowing_scales", "float32_range_overflow"]  # fmt: skip


@pytest.mark.parametrize("qtype", ENCODED, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_matches_gguf(qtype: GGMLType, kind: str) -> None:
    x = _dataset(kind, qtype, np.random.default_rng([int(qtype), KINDS.index(kind)]))
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(_our_bytes(qtype, x), _gguf_bytes(qtype, x))


@pytest.mark.parametrize("qtype", ENCODED, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(32,), (1, 32), (257, 64), (2, 3, 64), (3, 45056)], ids=str)
def test_quantize_shapes_match_gguf(qtype: GGMLType, shape: tuple[int, ...]) -> None:
    # (3, 45056) is larger than one encoder call, so the cache-sized pieces meet mid-row
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    ours = quantize(qtype, x)
    expected_shape = (*shape[:-1], row_nbytes(qtype, shape[-1]))
    assert ours.view(np.uint8).shape == expected_shape
    np.testing.assert_array_equal(_our_bytes(qtype, x), _gguf_bytes(qtype, x))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    qtype=st.sampled_from(list(GGML_EXACT)),
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.sampled_from([32, 64, 96])),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
)
def test_any_finite_values_match_gguf(qtype: GGMLType, x: np.ndarray) -> None:
    x = x + np.float32(0)  # -0.0 -> +0.0, see test_zero_signs_follow_ggml_c
    np.testing.assert_array_equal(_our_bytes(qtype, x), _gguf_bytes(qtype, x))


@pytest.mark.parametrize("qtype", list(GGML_EXACT), ids=lambda t: t.name)
def test_blocks_of_one_call_match_gguf(qtype: GGMLType) -> None:
    x = _tie_blocks(qtype, 300, np.random.default_rng(int(qtype)))  # (300, 32)
    blocks = BLOCK_TYPES[qtype].quantize_blocks(x)
    assert blocks.shape == (300, BLOCK_SIZES[qtype][1]) and blocks.dtype == np.uint8
    np.testing.assert_array_equal(blocks.reshape(-1), _gguf_bytes(qtype, x))
    out = np.zeros((300, BLOCK_SIZES[qtype][1] + 3), np.uint8)[:, 1:-2]  # rows with gaps between
    assert BLOCK_TYPES[qtype].quantize_blocks(x, out) is out
    np.testing.assert_array_equal(out, blocks)


# Hand-built blocks: x chosen so that d is exact and every quant can be worked out on paper.


def test_q8_0_quantize_hand_built() -> None:
    # amax 127 -> d = 1.0 (fp16 0x3C00), id = 1: q = roundf(x), halves away from zero
    x = np.zeros(32, np.float32)
    x[:8] = [-127.0, 2.5, -2.5, 0.5, np.nextafter(np.float32(0.5), 0), 126.5, 3.49, -0.25]
    expected = [-127, 3, -3, 1, 0, 127, 3, 0] + [0] * 24
    assert quantize(GGMLType.Q8_0, x).tobytes() == _f16(1.0) + np.array(expected, np.int8).tobytes()


def test_q4_0_quantize_hand_built() -> None:
    # elements j = -8 + j and j + 16 = 8 - j: |x| = 8 twice; the first (-8) wins, so d = -8 / -8 = 1
    # and q = MIN(15, (int8)(x + 8.5)): q[j] = j, q[16 + j] = 16 - j (clamped to 15 for j = 0)
    x = np.concatenate([np.arange(16) - 8.0, 8.0 - np.arange(16)]).astype(np.float32)
    qs = bytes(j | min(15, 16 - j) << 4 for j in range(16))  # f0 f1 e2 d3 ... 1f
    assert quantize(GGMLType.Q4_0, x).tobytes() == b"\x00\x3c" + qs
    # the same values negated: now +8 comes first, d = -1 (0xBC00) and the quants are the same
    assert quantize(GGMLType.Q4_0, -x).tobytes() == b"\x00\xbc" + qs


def test_q4_1_quantize_hand_built() -> None:
    # the inverse of test_q4_1_hand_built: min -1, max 2.75 -> d = 3.75 / 15 = 0.25 (0x3400), m = -1
    x = RAMP * 0.25 - 1.0
    assert quantize(GGMLType.Q4_1, x).tobytes() == b"\x00\x34" + b"\x00\xbc" + QS_RAMP


def test_q5_0_quantize_hand_built() -> None:
    # x = j - 16: max |x| is x[0] = -16, d = 1, q = j; bit 4 set for j >= 16 -> qh = 0xFFFF0000
    x = np.arange(32, dtype=np.float32) - 16
    qs = bytes(j | j << 4 for j in range(16))  # elements j and j + 16 share their low 4 bits
    assert quantize(GGMLType.Q5_0, x).tobytes() == b"\x00\x3c" + _u32(0xFFFF0000) + qs


def test_q5_1_quantize_hand_built() -> None:
    # x = 1 + j/2: min 1, max 16.5 -> d = 15.5 / 31 = 0.5 (0x3800), m = 1, q = j
    x = 1 + np.arange(32, dtype=np.float32) / 2
    qs = bytes(j | j << 4 for j in range(16))
    expected = b"\x00\x38" + b"\x00\x3c" + _u32(0xFFFF0000) + qs
    assert quantize(GGMLType.Q5_1, x).tobytes() == expected


def test_zero_signs_follow_ggml_c() -> None:
    """ggml's C starts Q4_0/Q5_0's `max` at +0.0 and keeps the first of equal extremes; gguf-py takes
    the sign of a zero from x[0] or from numpy's min/max, so these bytes are checked by hand."""
    zeros = np.zeros(32, np.float32)
    neg_first = zeros.copy()
    neg_first[0] = -0.0
    # all-zero block: max = +0.0, d = +0.0 / -8 = -0.0 (0x8000), every q = (int8)(0 + 8.5) = 8
    for x in (zeros, neg_first, -zeros):
        assert quantize(GGMLType.Q4_0, x).tobytes() == b"\x00\x80" + b"\x88" * 16
        assert quantize(GGMLType.Q5_0, x).tobytes() == b"\x00\x80" + _u32(0xFFFFFFFF) + bytes(16)
        assert quantize(GGMLType.Q8_0, x).tobytes() == bytes(34)  # amax starts at +0.0 too
    # Q4_1/Q5_1: min is the first zero, with its sign; max - min of one element is +0.0
    assert quantize(GGMLType.Q4_1, neg_first).tobytes() == b"\x00\x00\x00\x80" + bytes(16)
    assert quantize(GGMLType.Q5_1, -zeros).tobytes() == b"\x00\x00\x00\x80" + bytes(20)
    mixed = np.array([1.0, 0.0, -0.0] + [1.0] * 29, np.float32)  # min +0.0 (first), d = 1 / 15
    assert quantize(GGMLType.Q4_1, mixed).tobytes()[2:4] == b"\x00\x00"
    swapped = mixed[[0, 2, 1, *range(3, 32)]]  # -0.0 first: min -0.0
    assert quantize(GGMLType.Q4_1, swapped).tobytes()[2:4] == b"\x00\x80"


def test_float32_subnormal_blocks_quantize_to_zero() -> None:
    """|d| < 2.9e-39 makes C's 1/d inf and its quants undefined; x86 (and gguf-py) store 0 for all."""
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = [1e-39, -2e-39, 5e-40]  # d > 0 rounds to an fp16 +0.0, m = -2e-39 to -0.0
    for qtype in GGML_EXACT:
        data = quantize(qtype, x).tobytes()
        if qtype in ASYMMETRIC_LEVELS:
            assert data[:4] == b"\x00\x00\x00\x80" and not any(data[4:]), qtype.name
        else:
            assert not any(data), qtype.name


@pytest.mark.parametrize("qtype", list(GGML_EXACT), ids=lambda t: t.name)
def test_round_trip_error_within_format_bound(qtype: GGMLType) -> None:
    x = 0.02 * np.random.default_rng(3).standard_normal((64, 512)).astype(np.float32)
    err = np.abs(dequantize(qtype, quantize(qtype, x), x.shape) - x).reshape(-1, 32)
    blocks = x.reshape(-1, 32).astype(np.float64)  # (n_blocks, 32)
    hi, lo = blocks.max(axis=1), blocks.min(axis=1)
    fp16 = 2.0**-11  # relative rounding of d and m (normal fp16 range here)
    if qtype in SYMMETRIC_SPAN:
        span = SYMMETRIC_SPAN[qtype]
        step = np.maximum(hi, -lo) / span
        # Q8_0 rounds to nearest; Q4_0/Q5_0 too, except that +span clamps to span - 1: one step
        bound = step * ((0.5 if qtype == GGMLType.Q8_0 else 1.0) + span * fp16)
    else:
        levels = ASYMMETRIC_LEVELS[qtype]
        step = (hi - lo) / levels
        bound = step * (0.5 + levels * fp16) + np.abs(lo) * fp16
    assert np.all(err <= bound[:, None] * (1 + 1e-5) + 1e-9)
    assert np.any(err > bound[:, None] * 0.4)  # and the bound is not vacuous


def test_bf16_rounding_and_nan_as_ggml() -> None:
    bits = np.array(
        [0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x7F800000, 0xFF800000,
         0x7F800001, 0xFFFFFFFF, 0x7FC00000, 0x00000001, 0x00008000, 0x00018000, 0x80000000],
        dtype=np.uint32,
    )  # fmt: skip
    expected = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x7F80, 0x7F80, 0xFF80,
                0x7FC0, 0xFFFF, 0x7FC0, 0x0000, 0x0000, 0x0002, 0x8000]  # fmt: skip
    values = bits.view(np.float32)
    ours = quantize(GGMLType.BF16, values)
    assert ours.dtype == np.uint16 and ours.tolist() == expected
    np.testing.assert_array_equal(ours.view(np.uint8), _gguf_bytes(GGMLType.BF16, values))
    assert to_bf16(values.reshape(2, 7)).tolist() == np.reshape(expected, (2, 7)).tolist()


def test_f16_rounding_as_ggml() -> None:
    x = np.array([65519.0, 65520.0, -1e6, 2**-25, 1.5 * 2**-25, 1 / 3, np.inf], np.float32)
    ours = quantize(GGMLType.F16, x)
    assert ours.dtype == np.float16
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(ours.view(np.uint16), x.astype(np.float16).view(np.uint16))
    assert ours[:5].tolist() == [65504.0, np.inf, -np.inf, 0.0, 2**-24]
    # NaNs become ggml's canonical quiet NaN; numpy would give 0x7C01 (signalling), 0xFE09, 0x7E00
    nans = np.array([0x7F800001, 0xFFC12345, 0x7FC00000], np.uint32).view(np.float32)
    assert quantize(GGMLType.F16, nans).view(np.uint16).tolist() == [0x7E00, 0xFE00, 0x7E00]


def test_f32_is_passed_through() -> None:
    x = np.arange(64, dtype=np.float32).reshape(2, 32)
    assert quantize(GGMLType.F32, x) is x
    x64 = x.astype(np.float64) / 3
    np.testing.assert_array_equal(quantize(GGMLType.F32, x64), (x64).astype(np.float32))


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES), ids=lambda t: t.name)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_their_row(qtype: GGMLType, bad: float) -> None:
    x = np.ones((4, 64), np.float32)
    x[2, 40] = bad
    with pytest.raises(ValueError, match=r"\(4, 64\), row 2: cannot quantize NaN or inf"):
        quantize(qtype, x)
    with pytest.raises(ValueError, match="NaN or inf"):
        BLOCK_TYPES[qtype].quantize_blocks(x.reshape(-1, 32))


def test_float_types_keep_non_finite_values() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    assert np.isnan(quantize(GGMLType.F16, x)[0])
    assert quantize(GGMLType.BF16, x).tolist() == [0x7FC0, 0x7F80, 0xFF80, 0x3F80]


@pytest.mark.parametrize("qtype", ENCODED, ids=lambda t: t.name)
def test_rows_not_whole_blocks_name_the_shape(qtype: GGMLType) -> None:
    x = np.zeros((3, 48), np.float32)
    if qtype in BLOCK_TYPES:
        with pytest.raises(ValueError, match=r"shape \(3, 48\) as .*multiple of 32"):
            quantize(qtype, x)
        with pytest.raises(ValueError, match=r"\(3, 48\)"):
            quantize_rows(qtype, x)
    else:
        assert quantize(qtype, x).shape == (3, 48)  # one element per block


def test_quantize_rows_into_a_memmap_in_chunks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(4).standard_normal((7, 5, 96)).astype(np.float32)  # 35 rows
    for qtype in ENCODED:
        nbytes = tensor_nbytes(qtype, x.shape)
        path = tmp_path / f"{qtype.name}.bin"
        out = np.memmap(path, dtype=np.uint8, mode="w+", shape=(nbytes,))
        # 4 rows of float32 per chunk: 9 chunks, the last one short
        assert quantize_rows(qtype, x, out, chunk_bytes=4 * 96 * 4) is out
        out.flush()
        del out
        written = path.read_bytes()
        assert written == _our_bytes(qtype, x).tobytes() == _gguf_bytes(qtype, x).tobytes()


@pytest.mark.parametrize("qtype", ENCODED, ids=lambda t: t.name)
def test_quantize_rows_converts_any_float_input(qtype: GGMLType) -> None:
    base = np.random.default_rng(6).standard_normal((6, 128))  # float64
    single = base.astype(np.float32)
    expected = _our_bytes(qtype, single)
    backwards = np.ascontiguousarray(single[:, ::-1])[:, ::-1]  # negative strides, same values
    for x in (base, backwards, np.asfortranarray(single)):
        got = quantize_rows(qtype, x, chunk_bytes=1000)  # 1 row per chunk
        np.testing.assert_array_equal(got.reshape(-1), expected)
    half = base.astype(np.float16)
    np.testing.assert_array_equal(
        quantize_rows(qtype, half).reshape(-1), _our_bytes(qtype, half.astype(np.float32))
    )


def test_quantize_rows_checks_its_output() -> None:
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="needs 136 bytes, out has 134"):
        quantize_rows(GGMLType.Q8_0, x, np.zeros(134, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        quantize_rows(GGMLType.Q8_0, x, np.zeros(34, np.uint32))
    with pytest.raises(ValueError, match="C-contiguous"):
        quantize_rows(GGMLType.Q8_0, x, np.zeros((2, 136), np.uint8)[:, ::2])
    assert quantize_rows(GGMLType.Q4_0, np.zeros((0, 64), np.float32)).shape == (0, 36)
