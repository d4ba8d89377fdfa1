"""ggml block types whose values are one scale times a code from a fixed grid: IQ4_NL, Q4_0, Q5_0, Q8_0.

Every block holds 32 consecutive weights of a row: y[j] = d * grid[code[j]], d an fp16 scale. Only the
grids differ (IQ4_NL: ggml's 16 non-uniform values; Q4_0: -8..7; Q5_0: -16..15; Q8_0: -127..127), so one
scale search and one rounding algorithm (quant.gptq) serve all four. This module finds codes and scales
and packs them into ggml's exact bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .ggml_types import BLOCK_SIZES, IQ4_NL_VALUES, GGMLType

QK = 32  # weights per block


@dataclass(frozen=True)
class Codebook:
    """A block type's grid, and a table that finds the nearest grid value in O(1)."""

    qtype: GGMLType
    grid: np.ndarray  # (n_codes,) float64 integers, ascending: the values d multiplies
    lut_lo: int  # smallest ceil(2 z) the table distinguishes
    lut: np.ndarray  # (n,) int64: code of z, indexed by clip(ceil(2 z)) - lut_lo

    @property
    def bits_per_weight(self) -> float:
        return BLOCK_SIZES[self.qtype][1] * 8 / QK

    def nearest(self, z: np.ndarray) -> np.ndarray:
        """Index of the grid value nearest each z (any shape, finite); ties go to the lower value.

        The grid values are integers, so every midpoint between neighbours is a multiple of 1/2 and
        k = ceil(2 z) alone decides the code: z in ((k - 1) / 2, k / 2] lies above exactly the midpoints
        m / 2 with m <= k - 1. Equal to searchsorted(midpoints, z) and many times faster.
        """
        k = np.clip(np.ceil(2.0 * np.asarray(z, dtype=np.float64)), self.lut_lo, self.lut_lo + len(self.lut) - 1)
        return self.lut[k.astype(np.int64) - self.lut_lo]


def _codebook(qtype: GGMLType, values: np.ndarray) -> Codebook:
    grid = np.asarray(values, dtype=np.float64)
    twice_mid = grid[1:] + grid[:-1]  # (n_codes - 1,) integers 2 * midpoint
    lo, hi = int(2 * grid[0]) - 1, int(2 * grid[-1]) + 1
    k = np.arange(lo, hi + 1)
    lut = np.searchsorted(twice_mid, k - 1, side="right")  # number of m with m <= k - 1
    return Codebook(qtype, grid, lo, lut.astype(np.int64))


CODEBOOKS = MappingProxyType({
    GGMLType.IQ4_NL: _codebook(GGMLType.IQ4_NL, np.array(IQ4_NL_VALUES)),
    GGMLType.Q4_0: _codebook(GGMLType.Q4_0, np.arange(-8, 8)),
    GGMLType.Q5_0: _codebook(GGMLType.Q5_0, np.arange(-16, 16)),
    GGMLType.Q8_0: _codebook(GGMLType.Q8_0, np.arange(-127, 128)),
})

# Candidate scales of a block: its largest-magnitude weight mapped onto either end of the grid, stretched
# by these factors (1.0 among them: ggml's own choice for Q4_0/Q5_0/Q8_0), each refit once by least
# squares: 20 candidates. 50 (9 factors, 2 refits) lowered the squared error of IQ4_NL on the tiny models'
# matrices by 0.4 % at 2.5 times the cost.
STRETCH = np.linspace(0.85, 1.15, 5)
REFITS = 1
_SEARCH_BLOCKS = 2048  # blocks searched at once


def codebook(qtype: GGMLType) -> Codebook:
    """The codebook of a scale-times-grid type; ValueError for any other type."""
    try:
        return CODEBOOKS[GGMLType(qtype)]
    except (KeyError, ValueError):
        names = ", ".join(t.name for t in CODEBOOKS)
        raise ValueError(f"{GGMLType(qtype).name} is not a scale-times-codebook type; use one of {names}") from None


def to_fp16(d: np.ndarray) -> np.ndarray:
    """Scales rounded to what an fp16 field stores, back as float64."""
    return np.asarray(d, dtype=np.float64).astype(np.float16).astype(np.float64)


def search_scales(
    x: np.ndarray, w: np.ndarray, book: Codebook, *, stretch: np.ndarray = STRETCH, refits: int = REFITS
) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the fp16 scale and codes minimising sum_j w[j] (x[j] - d grid[code[j]])^2 among candidates.

    x, w: (n_blocks, 32) weights and their error weights (w >= 0; broadcastable views are fine). Returns d
    (n_blocks,) float64, exactly representable in fp16, and codes (n_blocks, 32) int64. Every candidate
    is scored as stored: fp16 scale, codes nearest for that exact scale. All-zero blocks get d = 0.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) > _SEARCH_BLOCKS:  # a piece at a time: the candidates' temporaries then stay in cache
        parts = [search_scales(x[b : b + _SEARCH_BLOCKS], w[b : b + _SEARCH_BLOCKS], book, stretch=stretch,
                               refits=refits) for b in range(0, len(x), _SEARCH_BLOCKS)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    n_blocks = len(x)
    grid = book.grid
    amax_at = np.abs(x).argmax(axis=1)
    peak = x[np.arange(n_blocks), amax_at]  # (n_blocks,) signed largest-magnitude weight
    zero = peak == 0
    peak = np.where(zero, 1.0, peak)
    best_err = np.full(n_blocks, np.inf)
    best_d = np.zeros(n_blocks)
    best_codes = np.zeros((n_blocks, QK), dtype=np.int64)
    for end in (grid[0], grid[-1]):
        for s in stretch:
            d = peak / (end * s)
            for refit in range(refits + 1):
                d = to_fp16(d)
                d = np.where(d == 0, to_fp16(peak / end), d)  # a refit that underflowed fp16
                codes = book.nearest(x / np.where(d == 0, 1.0, d)[:, None])
                q = grid[codes]  # (n_blocks, 32)
                err = np.einsum("bj,bj->b", w, (x - d[:, None] * q) ** 2)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best_d = np.where(better, d, best_d)
                best_codes[better] = codes[better]
                if refit < refits:
                    wq = w * q
                    qq = np.einsum("bj,bj->b", wq, q)
                    d = np.where(qq > 0, np.einsum("bj,bj->b", wq, x) / np.where(qq > 0, qq, 1.0), d)
    best_d[zero] = 0.0
    best_codes[zero] = book.nearest(np.zeros(1))[0]
    return best_d, best_codes


def values(qtype: GGMLType, d: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(rows, n_blocks) scales and (rows, cols) codes -> (rows, cols) float32 weights they stand for."""
    grid = codebook(qtype).grid
    return (np.repeat(d, QK, axis=-1) * grid[codes]).astype(np.float32)


def pack(qtype: GGMLType, d: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(rows, n_blocks) scales and (rows, cols) codes -> (rows, n_blocks * type_size) uint8 in ggml layout.

    IQ4_NL and Q4_0: d (f16) | 16 bytes, byte j = code[j] | code[j + 16] << 4 (Q4_0's code is its stored
    q, value q - 8). Q5_0: d | qh (u32, bit j = bit 4 of code j) | 16 bytes of low nibbles. Q8_0: d | 32
    int8 (code - 127).
    """
    book = codebook(qtype)
    rows, cols = codes.shape
    n_blocks = cols // QK
    c = codes.reshape(rows * n_blocks, QK).astype(np.uint8)  # (blocks, 32) codes index the grid
    d16 = np.asarray(d, dtype=np.float64).reshape(-1).astype("<f2").view(np.uint8).reshape(-1, 2)
    if book.qtype == GGMLType.Q8_0:
        body = (c.astype(np.int16) - 127).astype(np.int8).view(np.uint8)
    elif book.qtype == GGMLType.Q5_0:
        qh = np.packbits(c >> np.uint8(4), axis=1, bitorder="little")  # (blocks, 4): bit j = element j
        body = np.concatenate([qh, _nibble_pairs(c & np.uint8(0x0F))], axis=1)
    else:
        body = _nibble_pairs(c)
    blocks = np.concatenate([d16, body], axis=1)  # (blocks, type_size)
    return blocks.reshape(rows, n_blocks * BLOCK_SIZES[book.qtype][1])


def _nibble_pairs(c: np.ndarray) -> np.ndarray:
    """(blocks, 32) values 0..15 -> (blocks, 16) bytes: element j low nibble, element j + 16 high."""
    return c[:, :16] | (c[:, 16:] << np.uint8(4))

