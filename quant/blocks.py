"""ggml's tensor types in numpy: dequantization (the reference the C kernels must match bit for bit)
and quantization byte-identical to ggml's reference quantizers (quantize_row_*_ref); IQ4_NL, which
ggml quantizes with a search of its own, gets ours (quant.codebooks).

One class per block type, its quantizer beside its dequantizer. Each works on (n_blocks, 32) float32
values and (n_blocks, type_size) uint8 blocks, with ggml's field names: `d` scale, `m` minimum,
`qh` fifth bits, `qs` quants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import numpy as np

from .codebooks import CODEBOOKS, pack, search_scales
from .float_types import to_bf16, to_f16
from .ggml_types import BLOCK_SIZES, IQ4_NL_VALUES, GGMLType, row_nbytes, tensor_nbytes

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
# Field encoders shared by the quantizers. With the float32 operation order of ggml's
# quantize_row_*_ref and its truncating casts they give the same bytes as ggml does on x86.
# They avoid numpy's slow paths on rows of 32: reductions and scaling run as flat loops, and
# quants are packed eight at a time as little-endian uint64 words (word k of a block = elements
# 8k..8k+7, one per byte).

_BYTE_ONES = np.uint64(0x0101_0101_0101_0101)
_LOW_NIBBLES = np.uint64(0x0F0F_0F0F_0F0F_0F0F)
# bit 8k of a word (k = 0..7) times this lands on bit 56 + k, and no two products collide
_GATHER_BITS = np.uint64(0x0102_0408_1020_4080)


def _block_reduce(ufunc: np.ufunc, x: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) -> (n_blocks,): np.maximum or np.minimum over each block; NaN propagates.

    Halving the flat array pairwise makes each step one long loop; `x.max(axis=1)` pays numpy's
    per-row overhead on rows this short and is several times slower.
    """
    a = x.reshape(-1)
    while a.size > x.shape[0]:
        a = ufunc(a[0::2], a[1::2])
    return a


def _require_finite(*reductions: np.ndarray) -> None:
    """Refuse NaN and inf: ggml would convert NaN or inf to an integer, which C leaves undefined."""
    for r in reductions:
        if not np.isfinite(r).all():
            raise ValueError("cannot quantize NaN or inf")


def _reciprocal(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `id = d ? 1/d : 0` per block, and the blocks whose quants C leaves undefined.

    Where 1/d overflows (|d| < 2.9e-39) or d is inf (Q4_1/Q5_1 when max - min passes float32),
    ggml converts inf or NaN to an integer. x86 makes those quants 0, so such blocks get id = 0
    here and zero quants afterwards, the same bytes without a platform-dependent cast.
    """
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)  # (n_blocks,)
    undefined = ~(np.isfinite(inv) & np.isfinite(d))  # (n_blocks,) bool
    inv[undefined] = 0
    return inv, undefined


def _scaled(x: np.ndarray, inv: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """(x - offset) * inv per block, in float32 and in that order, as (n_blocks, 32).

    Each per-block value is first spread over its 32 elements: a flat ufunc over two full operands
    runs about twice as fast as numpy broadcasting a (n_blocks, 1) column, one short loop per block.
    """
    spread = np.empty_like(x)  # (n_blocks, 32)
    if offset is None:
        spread[...] = inv[:, None]
        return np.multiply(x, spread, out=spread)
    spread[...] = offset[:, None]
    t = np.subtract(x, spread)
    spread[...] = inv[:, None]
    return np.multiply(t, spread, out=t)


def _signed_absmax(x: np.ndarray, mx: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """ggml's `max` for Q4_0/Q5_0: the first element of largest |x|, signed; +0.0 if all are zero."""
    m = np.where(-mn > mx, mn, mx)  # (n_blocks,)
    tie = (mx == -mn) & (mx != 0)  # +a and -a both present: C keeps whichever comes first
    if tie.any():
        rows = x[tie]  # (n_tie, 32)
        first = np.argmax(np.abs(rows) == mx[tie, None], axis=1)
        m[tie] = rows[np.arange(rows.shape[0]), first]
    m[m == 0] = 0  # C starts from max = +0.0 and never replaces it in an all-zero block
    return m


def _first_min(x: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """ggml's `min` for Q4_1/Q5_1: C keeps the first of equal minima, so a zero keeps its sign."""
    m = mn.copy()  # (n_blocks,)
    zero = mn == 0
    if zero.any():
        rows = x[zero]  # (n_zero, 32)
        m[zero] = rows[np.arange(rows.shape[0]), np.argmax(rows == 0, axis=1)]
    return m


def _quant_words(t: np.ndarray, undefined: np.ndarray, top_bits: int | None) -> np.ndarray:
    """C's `MIN(top, (int8_t)t)`, top = 2^top_bits - 1, as (4 n_blocks,) "<u8" words of 8 quants.

    t is (n_blocks, 32) float32 with 0 <= t < top + 2 (it peaks at top + 1.5), so a quant passes the
    top by one at most and is clamped by subtracting its bit above the top. No top_bits, no clamp
    (Q5_1). `undefined` blocks get quants of 0.
    """
    q = t.astype(np.uint8)  # (n_blocks, 32), truncating as the C cast does
    q[undefined] = 0
    words = q.reshape(-1).view("<u8")
    if top_bits is not None:
        words -= (words >> np.uint64(top_bits)) & _BYTE_ONES
    return words


def _nibble_bytes(words: np.ndarray) -> np.ndarray:
    """Quant words -> (n_blocks, 16) qs: byte j = low 4 bits of q[j] | low 4 bits of q[j + 16] << 4."""
    qs = np.empty((words.size // 4, 2), dtype="<u8")  # (n_blocks, 2)
    for k in (0, 1):  # elements 8k.. go with elements 16 + 8k.., words k and k + 2 of each block
        low, high = words[k::4] & _LOW_NIBBLES, words[k + 2 :: 4] & _LOW_NIBBLES
        qs[:, k] = low | (high << np.uint64(4))
    return qs.view(np.uint8)


def _fifth_bit_bytes(words: np.ndarray) -> np.ndarray:
    """Quant words -> (n_blocks, 4) qh: bytes of the little-endian u32 whose bit j is bit 4 of q[j]."""
    bits = (words >> np.uint64(4)) & _BYTE_ONES  # one 0/1 per byte
    return ((bits * _GATHER_BITS) >> np.uint64(56)).astype(np.uint8).reshape(-1, 4)


def _put_f16(out: np.ndarray, start: int, v: np.ndarray) -> None:
    """Store (n_blocks,) float32, rounded to fp16, at byte `start` of every block of out."""
    out[:, start : start + 2].view("<u2")[:, 0] = v.astype("<f2").view("<u2")


def _put_bytes(out: np.ndarray, start: int, field: np.ndarray) -> None:
    """Store (n_blocks, width) uint8 at bytes start.. of every block of out, one copy per block."""
    width = field.shape[1]
    out[:, start : start + width].view(f"V{width}")[...] = field.view(f"V{width}")


def _blocks_io(
    x: np.ndarray, out: np.ndarray | None, type_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (n_blocks, 32) float32 input and (n_blocks, type_size) uint8 output."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != QK:
        raise ValueError(f"blocks must have shape (n_blocks, {QK}), got {x.shape}")
    if out is None:
        return x, np.empty((x.shape[0], type_size), dtype=np.uint8)
    if out.shape != (x.shape[0], type_size) or out.dtype != np.uint8 or out.strides[1] != 1:
        raise ValueError(
            f"out must be ({x.shape[0]}, {type_size}) uint8 with contiguous rows, "
            f"got {out.shape} {out.dtype}"
        )
    return x, out


def _signed_max_quant(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0 (bits 4/5): d = max / -h and quant words of MIN(2h - 1, (int8)(x*id + h + 0.5)),
    h = 2^(bits-1)."""
    half = 1 << (bits - 1)
    mx, mn = _block_reduce(np.maximum, x), _block_reduce(np.minimum, x)  # (n_blocks,)
    _require_finite(mx, mn)
    d = _signed_absmax(x, mx, mn) / np.float32(-half)
    inv, undefined = _reciprocal(d)
    t = _scaled(x, inv)  # (n_blocks, 32) in [-half, half]
    t += np.float32(half + 0.5)
    return d, _quant_words(t, undefined, bits)


def _min_max_quant(x: np.ndarray, bits: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """Q4_1/Q5_1 (bits 4/5): d = (max - min) / (2^bits - 1), m = min, and quant words of
    (int8)((x - min)*id + 0.5), clamped to 2^bits - 1 when ggml clamps (Q4_1)."""
    mx, mn = _block_reduce(np.maximum, x), _block_reduce(np.minimum, x)  # (n_blocks,)
    _require_finite(mx, mn)
    # C subtracts one element from itself when max == min, giving +0.0; abs clears the -0.0 that
    # numpy's choice among equal zeros can give
    d = np.abs(mx - mn) / np.float32((1 << bits) - 1)
    inv, undefined = _reciprocal(d)
    t = _scaled(x, inv, offset=mn)  # (n_blocks, 32)
    t += np.float32(0.5)
    return d, _first_min(x, mn), _quant_words(t, undefined, bits if clamp else None)


# -------------------------------------------------------------------------------------------------
# Block types. Element j of a block is y[j], computed in float32 as ggml's dequantize_row_* does.
# q * d is exact in float32 (an integer of at most 8 bits times an 11-bit fp16 significand), so each
# value is rounded at most once (when m is added): C kernels get the same bits with or without FMA.
# Quantizers follow quantize_row_*_ref: d from the block's extremes, id = 1/d in float32 (from d
# before its fp16 rounding), each quant from x * id by C's truncating cast.


class BlockType(Protocol):
    """What every block type provides."""

    qtype: GGMLType

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray: ...

    @staticmethod
    def quantize_blocks(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...


class Q4_0:
    """18 bytes: d (f16) | qs[16] (4-bit). y[j] = (q[j] - 8) * d."""

    qtype = GGMLType.Q4_0

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 18) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        q = _nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)  # (n_blocks, 32)
        return q.astype(np.float32) * d

    @staticmethod
    def quantize_blocks(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n_blocks, 32) float32 -> (n_blocks, 18) uint8. d = max / -8, q = MIN(15, (int8)(x*id + 8.5))."""
        x, out = _blocks_io(x, out, 18)
        with np.errstate(all="ignore"):  # overflows and NaN are all handled as ggml on x86
            d, words = _signed_max_quant(x, 4)
            _put_f16(out, 0, d)
        _put_bytes(out, 2, _nibble_bytes(words))
        return out


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

    @staticmethod
    def quantize_blocks(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n_blocks, 32) float32 -> (n_blocks, 20) uint8. d = (max - min) / 15, m = min,
        q = MIN(15, (int8)((x - min)*id + 0.5))."""
        x, out = _blocks_io(x, out, 20)
        with np.errstate(all="ignore"):  # overflows and NaN are all handled as ggml on x86
            d, m, words = _min_max_quant(x, 4, clamp=True)
            _put_f16(out, 0, d)
            _put_f16(out, 2, m)
        _put_bytes(out, 4, _nibble_bytes(words))
        return out


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

    @staticmethod
    def quantize_blocks(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n_blocks, 32) float32 -> (n_blocks, 22) uint8. d = max / -16, q = MIN(31, (int8)(x*id + 16.5))."""
        x, out = _blocks_io(x, out, 22)
        with np.errstate(all="ignore"):  # overflows and NaN are all handled as ggml on x86
            d, words = _signed_max_quant(x, 5)
            _put_f16(out, 0, d)
        _put_bytes(out, 2, _fifth_bit_bytes(words))
        _put_bytes(out, 6, _nibble_bytes(words))
        return out


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

    @staticmethod
    def quantize_blocks(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n_blocks, 32) float32 -> (n_blocks, 24) uint8. d = (max - min) / 31, m = min,
        q = (uint8)((x - min)*id + 0.5): no clamp in ggml, and none is needed (q <= 31 in float32)."""
        x, out = _blocks_io(x, out, 24)
        with np.errstate(all="ignore"):  # overflows and NaN are all handled as ggml on x86
            d, m, words = _min_max_quant(x, 5, clamp=False)
            _put_f16(out, 0, d)
            _put_f16(out, 2, m)
        _put_bytes(out, 4, _fifth_bit_bytes(words))
        _put_bytes(out, 8, _nibble_bytes(words))
        return out


class Q8_0:
    """34 bytes: d (f16) | qs[32] (int8). y[j] = qs[j] * d."""

    qtype = GGMLType.Q8_0

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 34) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        qs = blocks[:, 2:34].view(np.int8)  # (n_blocks, 32)
        return qs.astype(np.float32) * d

    @staticmethod
    def quantize_blocks(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n_blocks, 32) float32 -> (n_blocks, 34) uint8. d = amax / 127, q = roundf(x*id)."""
        x, out = _blocks_io(x, out, 34)
        amax = _block_reduce(np.maximum, np.abs(x))  # (n_blocks,)
        _require_finite(amax)
        with np.errstate(all="ignore"):  # overflows are all handled as ggml on x86
            d = amax / np.float32(127)
            inv, _ = _reciprocal(d)
            t = _scaled(x, inv)  # (n_blocks, 32), |t| <= 127
            _put_f16(out, 0, d)
        # roundf (half away from zero) = trunc(2t) - trunc(t): 2t is exact, and |trunc(2t)| is
        # 2 |trunc(t)| + 1 exactly when |t - trunc(t)| >= 0.5. Undefined blocks have t = 0.
        q = np.trunc(t + t)
        q -= np.trunc(t)
        _put_bytes(out, 2, q.astype(np.int8).view(np.uint8))
        return out


class IQ4_NL:
    """18 bytes: d (f16) | qs[16] (4-bit codes, packed as Q4_0). y[j] = d * IQ4_NL_VALUES[q[j]]."""

    qtype = GGMLType.IQ4_NL

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 18) uint8 -> (n_blocks, 32) float32."""
        d = _f16_field(blocks, 0)  # (n_blocks, 1)
        q = np.array(IQ4_NL_VALUES, dtype=np.float32)[_nibbles(blocks[:, 2:18])]  # (n_blocks, 32)
        return q * d

    @staticmethod
    def quantize_blocks(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n_blocks, 32) float32 -> (n_blocks, 18) uint8: per block the fp16 scale, among a few dozen
        candidates, with the least squared error (llama.cpp's own IQ4_NL search gives other bytes)."""
        x, out = _blocks_io(x, out, 18)
        _require_finite(_block_reduce(np.maximum, np.abs(x)))
        d, codes = search_scales(x, np.broadcast_to(np.float64(1), x.shape), CODEBOOKS[GGMLType.IQ4_NL])
        out[...] = pack(GGMLType.IQ4_NL, d[None, :], codes.reshape(1, -1)).reshape(out.shape)
        return out


BLOCK_TYPES: Mapping[GGMLType, type[BlockType]] = MappingProxyType(
    {t.qtype: t for t in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL)}
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


CHUNK_BYTES = 16 << 20  # float32 bytes of input converted at a time by quantize_rows
# Elements handed to one encoder call: its few float32 temporaries then stay in a core's L2 cache,
# which made every type 1.5-2x faster than whole-chunk passes (4096 blocks measured best).
_CACHE_ELEMENTS = 4096 * QK

# float type -> (its numpy dtype, float32 -> that dtype)
_FLOAT_ENCODERS: Mapping[GGMLType, tuple[str, Callable[[np.ndarray], np.ndarray]]] = (
    MappingProxyType(
        {
            GGMLType.F32: ("<f4", np.asarray),
            GGMLType.F16: ("<f2", to_f16),
            GGMLType.BF16: ("<u2", to_bf16),
        }
    )
)


def quantize(qtype: GGMLType, x: np.ndarray) -> np.ndarray:
    """A float tensor of shape (..., n) stored as `qtype`, bit-identical to ggml's reference quantizer.

    F32, F16 and BF16 come back typed (float32, float16, uint16 bf16 bits) in x's shape; F32 is `x`
    itself when already float32. Block types come back as uint8 of shape (..., n / 32 * type_size).
    Raises ValueError naming the shape when n is not whole blocks, and the row holding NaN or inf
    for a block type (ggml's result for those is undefined); F16 and BF16 keep them, with NaNs
    made quiet as ggml makes them.
    """
    qtype = GGMLType(qtype)
    x = np.asarray(x)
    if qtype == GGMLType.F32:
        return x.astype(np.float32, copy=False)
    data = quantize_rows(qtype, x)  # (..., row_nbytes) uint8
    return data if qtype in BLOCK_TYPES else data.view(_FLOAT_ENCODERS[qtype][0]).reshape(x.shape)


def quantize_rows(
    qtype: GGMLType, x: np.ndarray, out: np.ndarray | None = None, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Write `x` (..., n) stored as `qtype` into `out`, about `chunk_bytes` of float32 at a time.

    `out` is writable C-contiguous uint8 holding exactly the tensor's bytes, in any shape (a slice
    of a np.memmap of the output file works); None allocates (..., row_nbytes). x may be any float
    dtype or a memmap: one chunk of rows at a time is read and converted to float32, so memory
    stays bounded. Returns `out`.
    """
    qtype = GGMLType(qtype)
    x = np.asarray(x)
    shape = tuple(x.shape)
    n = shape[-1] if shape else 1
    block = BLOCK_SIZES[qtype][0]
    if n % block:
        raise ValueError(
            f"cannot store a tensor of shape {shape} as {qtype.name}: "
            f"its last dimension must be a multiple of {block}"
        )
    if out is None:
        out = np.empty((*shape[:-1], row_nbytes(qtype, n)), dtype=np.uint8)
    if out.dtype != np.uint8 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be writable C-contiguous uint8, got {out.dtype} {out.shape}")
    if out.nbytes != tensor_nbytes(qtype, shape):
        raise ValueError(
            f"{qtype.name} tensor of shape {shape} needs {tensor_nbytes(qtype, shape)} bytes, "
            f"out has {out.nbytes}"
        )
    if out.nbytes == 0:
        return out
    rows = x.reshape(-1, n)  # (n_rows, n); a view when x is contiguous
    out_rows = out.reshape(rows.shape[0], -1)  # (n_rows, row_nbytes)
    step = max(1, chunk_bytes // (4 * n))
    for r in range(0, rows.shape[0], step):
        chunk = np.ascontiguousarray(rows[r : r + step], dtype=np.float32)  # (<= step, n)
        try:
            _encode(qtype, chunk.reshape(-1), out_rows[r : r + step].reshape(-1))
        except ValueError as e:
            finite = np.isfinite(chunk).all(axis=1)  # (<= step,)
            if finite.all():
                raise
            bad = r + int(np.argmin(finite))
            raise ValueError(f"{qtype.name} tensor of shape {shape}, row {bad}: {e}") from None
    return out


def _encode(qtype: GGMLType, x: np.ndarray, out: np.ndarray) -> None:
    """Flat float32 values -> their flat uint8 bytes in `out`, one cache-sized piece at a time."""
    if qtype in BLOCK_TYPES:
        encode = BLOCK_TYPES[qtype].quantize_blocks
        blocks = x.reshape(-1, QK)  # (n_blocks, 32)
        out_blocks = out.reshape(blocks.shape[0], -1)  # (n_blocks, type_size)
        step = _CACHE_ELEMENTS // QK
        for b in range(0, blocks.shape[0], step):
            encode(blocks[b : b + step], out_blocks[b : b + step])
        return
    dtype, convert = _FLOAT_ENCODERS[qtype]
    typed = out.view(dtype)  # (n,)
    for i in range(0, x.size, _CACHE_ELEMENTS):
        typed[i : i + _CACHE_ELEMENTS] = convert(x[i : i + _CACHE_ELEMENTS])


def _as_dtype(data: np.ndarray, dtype: str | type) -> np.ndarray:
    """`data` as `dtype`: itself when already typed so, else its raw uint8 bytes reinterpreted."""
    if data.dtype == np.dtype(dtype):
        return data
    if data.dtype != np.uint8:
        raise ValueError(
            f"tensor data must be {np.dtype(dtype)} or raw uint8 bytes, got {data.dtype}"
        )
    return np.ascontiguousarray(data).reshape(-1).view(dtype)
