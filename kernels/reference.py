"""Numpy versions of every kernel, with exactly the C kernels' arithmetic: the specification.

The C scalar path equals these bit for bit, and so does the AVX2 path (kernels/csrc/
rke_internal.h explains the shared arithmetic). They also serve as the "numpy" backend, which is
slow but needs no compiler. Inputs here are already validated (kernels/checks.py).

Activations for the quantized weight types are first quantized per block of 32 ("q8x", ggml's
quantize_row_q8_0 rules with a float32 scale):
    amax = max |x_j| (NaNs ignored);  d = amax / 127;  id = min(1 / d, FLT_MAX), or 0 if d == 0
    qs_j = round_half_away(clamp(x_j * id, -127, 127));  s = sum_j qs_j
Then, for output y[t, r] (all float32, each operation rounded on its own, no FMA):
    float weights:  lane i of 8 takes columns c = i (mod 8) in order: acc_i += w[c] * x[c];
                    y = ((acc_0 + acc_4) + (acc_2 + acc_6)) + ((acc_1 + acc_5) + (acc_3 + acc_7))
    quantized:      per block b in order, isum_b = sum_j wq_j * qs_j (an exact integer) and
                    acc += float(isum_b) * (dw_b * dx_b); q4_1 / q5_1 also
                    accm += mw_b * (dx_b * float(s_b));  y = acc [+ accm]
A whole block's integer sum before any rounding is what lets the C kernels put 8 tokens (prompts)
or 4 rows (decode) in the lanes of one register: one float multiply-add per block and output.
wq is the signed weight quant: q - 8 (q4_0), q - 16 (q5_0), qs (q8_0), IQ4_NL_VALUES[q] (iq4_nl);
q itself for q4_1 / q5_1.

Tolerances. Between backends: none; avx2, scalar and numpy return the same bits for finite
inputs (non-finite activations give defined, memory-safe, but meaningless results). Against the
exact y = sum_c W[r, c] x[c] (u = 2^-24, nb = n / 32 blocks, d_b = amax_b / 127):
    float weights: |y - exact| <= (ceil(n / 8) + 8) * 2u * sum_c |W_c x_c|
    quantized:     |y - exact| <= sum_c |W_c| e_b
                                  + (nb + 2) * 2u * sum_c (|W_c| + 2|m_b|) (|x_c| + d_b)
                                  + (nb + 2) * n * 2^-149
where e_b = 0.50002 d_b bounds |x_c - d_b qs_c| (half a step, plus the rounding of x * id), or
e_b = amax_b for blocks with amax_b < 2^-118, whose d is subnormal (such activations are noise).
tests/test_kernels_matvec.py checks these against gguf-py's float64 dequantization.
"""

from __future__ import annotations

import numpy as np

from .ggml_types import BLOCK_SIZES, IQ4_NL_VALUES, GGMLType

QK = 32  # elements per block of the quantized types and of q8x activations
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
QUANT_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.IQ4_NL)

# The C rke_block_q8x: float d, int32 s, int8 qs[32] (40 bytes, no padding).
Q8X = np.dtype([("d", "<f4"), ("s", "<i4"), ("qs", "i1", (QK,))])

_FLT_MAX = np.finfo(np.float32).max
# Elements of the largest temporary: rows are taken in chunks to stay under it.
_CHUNK_ELEMENTS = 1 << 22


# -------------------------------------------------------------------------------------------------
# Activations


def quantize_q8x(x: np.ndarray) -> np.ndarray:
    """(..., n) float32, n % 32 == 0 -> (..., n / 32) Q8X blocks."""
    xb = x.reshape(*x.shape[:-1], -1, QK)  # (..., nb, 32)
    amax = np.fmax.reduce(np.abs(xb), axis=-1, initial=np.float32(0))  # (..., nb)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore", over="ignore"):
        id_ = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0))
    id_ = np.minimum(id_, _FLT_MAX).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = xb * id_[..., None]  # (..., nb, 32)
        v = np.where(v > -127, v, np.float32(-127))  # NaN -> -127, as the C `v > -127 ? v : -127`
        v = np.where(v < 127, v, np.float32(127))
    q = np.trunc(v)
    frac = v - q  # exact
    q = q + (frac >= 0.5) - (frac <= -0.5)  # round half away from zero
    qs = q.astype(np.int8)
    out = np.empty(xb.shape[:-1], Q8X)
    out["d"] = d
    out["s"] = qs.sum(axis=-1, dtype=np.int32)
    out["qs"] = qs
    return out


# -------------------------------------------------------------------------------------------------
# Weights


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) packed bytes -> (..., 32) in 0..15: low nibbles are elements 0..15."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(..., 4) bytes of a little-endian u32 -> (..., 32) of 0 or 16 (bit j is element j's)."""
    bits = np.unpackbits(qh, axis=-1, bitorder="little")  # (..., 32), bit j of the u32 at j
    return bits << np.uint8(4)


def _fp16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 field at byte `start` of each block -> (...,) float32 (exact)."""
    return blocks[..., start : start + 2].copy().view("<f2")[..., 0].astype(np.float32)


def weight_quants(
    qtype: GGMLType, blocks: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(rows, nb, type_size) uint8 blocks -> d (rows, nb) f32, m (rows, nb) f32 or None, and wq
    (rows, nb, 32) int8: the integers the dot product multiplies."""
    d = _fp16(blocks, 0)
    if qtype == GGMLType.Q4_0:
        return d, None, (_nibbles(blocks[..., 2:18]).astype(np.int8) - np.int8(8))
    if qtype == GGMLType.Q4_1:
        return d, _fp16(blocks, 2), _nibbles(blocks[..., 4:20]).astype(np.int8)
    if qtype == GGMLType.Q5_0:
        q = _nibbles(blocks[..., 6:22]) | _fifth_bits(blocks[..., 2:6])
        return d, None, q.astype(np.int8) - np.int8(16)
    if qtype == GGMLType.Q5_1:
        q = _nibbles(blocks[..., 8:24]) | _fifth_bits(blocks[..., 4:8])
        return d, _fp16(blocks, 2), q.astype(np.int8)
    if qtype == GGMLType.Q8_0:
        return d, None, blocks[..., 2:34].view(np.int8)
    if qtype == GGMLType.IQ4_NL:
        return d, None, np.array(IQ4_NL_VALUES, np.int8)[_nibbles(blocks[..., 2:18])]
    raise ValueError(f"{qtype!r} is not a block-quantized type")


def float_weights(qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """F32 / F16 / BF16 weights (any dtype, the right bytes) -> (n_rows, n_cols) float32, exact."""
    raw = w.reshape(-1).view(np.uint8)
    if qtype == GGMLType.F32:
        return raw.view("<f4").reshape(n_rows, n_cols)
    if qtype == GGMLType.F16:
        return raw.view("<f2").astype(np.float32).reshape(n_rows, n_cols)
    upper = raw.view("<u2").astype(np.uint32) << np.uint32(16)  # bf16 is the top half of an f32
    return upper.view(np.float32).reshape(n_rows, n_cols)


# -------------------------------------------------------------------------------------------------
# The fixed float32 accumulation


def _block_sum(terms: np.ndarray) -> np.ndarray:
    """(..., nb) float32 -> (...): ((0 + t_0) + t_1) + ... in block order.

    add.accumulate starts at t_0 rather than 0 + t_0; that differs only in the sign of a zero,
    which the final + 0 removes (the C sums never hold -0)."""
    return np.add.accumulate(terms, axis=-1)[..., -1] + np.float32(0)


def _hsum8(acc: np.ndarray) -> np.ndarray:
    """(..., 8) -> (...): the reduction tree of rke_hsum8."""
    t = acc[..., :4] + acc[..., 4:]
    u = t[..., :2] + t[..., 2:]
    return u[..., 0] + u[..., 1]


def _matmul_float(wf: np.ndarray, x: np.ndarray) -> np.ndarray:
    """wf (rows, n) f32, x (T, n) f32 -> (T, rows): 8 columns at a time into the 8 lanes, in order."""
    n = wf.shape[1]
    acc = np.zeros((x.shape[0], wf.shape[0], 8), np.float32)  # (T, rows, 8), +0 as the C sums start
    for c in range(0, n - n % 8, 8):
        acc += x[:, None, c : c + 8] * wf[None, :, c : c + 8]
    if n % 8:  # the C kernels' zero-padded last step: 0 * 0 terms leave a lane's bits unchanged
        acc[..., : n % 8] += x[:, None, n - n % 8 :] * wf[None, :, n - n % 8 :]
    return _hsum8(acc)


def _matmul_quant(
    d: np.ndarray, m: np.ndarray | None, wq: np.ndarray, xq: np.ndarray
) -> np.ndarray:
    """d, m (rows, nb), wq (rows, nb, 32) int8, xq (T, nb) Q8X -> (T, rows)."""
    isum = np.einsum("rbj,tbj->trb", wq.astype(np.int32), xq["qs"].astype(np.int32))  # exact
    dx = xq["d"]  # (T, nb)
    scale = d[None, :, :] * dx[:, None, :]  # (T, rows, nb)
    y = _block_sum(isum.astype(np.float32) * scale)  # (T, rows)
    if m is None:
        return y
    sdx = dx * xq["s"].astype(np.float32)  # (T, nb)
    return y + _block_sum(m[None, :, :] * sdx[:, None, :])


def matmul(qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int, x: np.ndarray) -> np.ndarray:
    """Y (T, n_rows) = X (T, n_cols) @ W^T, W being n_rows rows of `qtype` in `w`'s bytes."""
    qtype = GGMLType(qtype)
    n_tokens = x.shape[0]
    y = np.empty((n_tokens, n_rows), np.float32)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_tokens * n_cols))
    if qtype in FLOAT_TYPES:
        wf = float_weights(qtype, w, n_rows, n_cols)
        for r in range(0, n_rows, chunk):
            y[:, r : r + chunk] = _matmul_float(wf[r : r + chunk], x)
        return y
    _, type_size = BLOCK_SIZES[qtype]
    nb = n_cols // QK
    blocks = w.reshape(-1).view(np.uint8).reshape(n_rows, nb, type_size)
    xq = quantize_q8x(x)  # (T, nb)
    for r in range(0, n_rows, chunk):
        d, m, wq = weight_quants(qtype, blocks[r : r + chunk])
        y[:, r : r + chunk] = _matmul_quant(d, m, wq, xq)
    return y


def matvec(qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int, x: np.ndarray) -> np.ndarray:
    """y (n_rows) = W (n_rows, n_cols) @ x (n_cols): row 0 of `matmul` of x as one token."""
    return matmul(qtype, w, n_rows, n_cols, x[None, :])[0]
