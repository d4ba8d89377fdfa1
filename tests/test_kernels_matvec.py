"""matvec and matmul for every weight type on every backend: the C scalar path and the AVX2 path
equal the numpy reference bit for bit; all are within the documented error of float64
dequantize(W) @ x (dequantized by gguf-py and torch, not by us); matmul equals stacked matvec;
any thread count gives the same bits."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np
import pytest
import torch
from rwkv_edge.kernels import ThreadPool, dispatch, reference
from rwkv_edge.quant.blocks import quantize
from rwkv_edge.quant.ggml_types import BLOCK_SIZES, GGMLType

FLOAT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16]
QUANT_TYPES = [GGMLType.Q8_0, GGMLType.Q5_1, GGMLType.Q5_0, GGMLType.Q4_1, GGMLType.Q4_0, GGMLType.IQ4_NL]
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES
ROWS = [1, 3, 17, 33, 255]
COLS = [32, 64, 96, 224, 4128]
ODD_FLOAT_COLS = [1, 7, 37, 4133]  # float types need no blocks
BACKENDS = dispatch.available()
FP16_MAX = 0x7BFF  # 65504
U = 2.0**-24  # float32 unit roundoff


# -------------------------------------------------------------------------------------------------
# Weights, built byte by byte


def _fp16_bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float32).astype(np.float16).view(np.uint16)


def quant_blocks(
    qtype: GGMLType, n_rows: int, n_cols: int, rng: np.random.Generator, kind: str = "random"
) -> np.ndarray:
    """(n_rows, row_bytes) uint8 blocks. kind: random | zero | max_scale | min_q | denormal."""
    _, size = BLOCK_SIZES[qtype]
    nb = n_cols // 32
    blocks = rng.integers(0, 256, (n_rows, nb, size), dtype=np.uint8)  # qh and qs at random
    has_min = qtype in (GGMLType.Q4_1, GGMLType.Q5_1)
    shape = (n_rows, nb)
    if kind == "random":
        d = _fp16_bits(rng.standard_normal(shape) * 0.02)  # negative scales occur in real files
        m = _fp16_bits(rng.standard_normal(shape) * 0.1)
    elif kind == "zero":
        blocks[:] = 0
        d = m = np.zeros(shape, np.uint16)
    elif kind == "max_scale":
        sign = rng.integers(0, 2, shape).astype(np.uint16) << 15
        d = np.full(shape, FP16_MAX, np.uint16) | sign
        m = np.full(shape, FP16_MAX, np.uint16) ^ sign
        blocks[..., 2:] = 0xFF if qtype != GGMLType.Q8_0 else 0x7F  # all the largest quants
    elif kind == "min_q":
        d = np.full(shape, FP16_MAX, np.uint16)
        m = np.full(shape, 0x8000 | FP16_MAX, np.uint16)
        blocks[..., 2:] = 0x00 if qtype != GGMLType.Q8_0 else 0x80  # 0, or -128 for q8_0
    elif kind == "denormal":
        d = rng.integers(1, 0x400, shape).astype(np.uint16)  # fp16 subnormals
        m = rng.integers(1, 0x400, shape).astype(np.uint16) | 0x8000
    else:
        raise AssertionError(kind)
    blocks[..., 0:2] = d[..., None].view(np.uint8).reshape(*shape, 2)
    if has_min:
        blocks[..., 2:4] = m[..., None].view(np.uint8).reshape(*shape, 2)
    return blocks.reshape(n_rows, nb * size)


def float_weights(
    qtype: GGMLType, n_rows: int, n_cols: int, rng: np.random.Generator, kind: str = "random"
) -> np.ndarray:
    """F32 float32 / F16 float16 / BF16 uint16 weights. kind: random | zero | extreme."""
    if kind == "zero":
        values = np.zeros((n_rows, n_cols), np.float32)
    elif kind == "extreme":
        big = {GGMLType.F32: 1e30, GGMLType.F16: 65504.0, GGMLType.BF16: 1e30}[qtype]
        tiny = {GGMLType.F32: 1e-42, GGMLType.F16: 6e-8, GGMLType.BF16: 1e-40}[qtype]
        values = rng.choice(np.array([big, -big, tiny, -tiny, 0.0], np.float32), (n_rows, n_cols))
    else:
        values = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if qtype == GGMLType.F32:
        return values
    if qtype == GGMLType.F16:
        return values.astype(np.float16)
    return (values.view(np.uint32) >> 16).astype(np.uint16)  # bf16 by truncation


def realistic_blocks(
    qtype: GGMLType, n_rows: int, n_cols: int, rng: np.random.Generator
) -> np.ndarray:
    """gguf-py's quantization of Gaussian rows with varied scales (what converters write); ours for
    IQ4_NL, which gguf-py only decodes."""
    values = rng.standard_normal((n_rows, n_cols)) * rng.uniform(0.01, 3, (n_rows, 1))
    if qtype == GGMLType.IQ4_NL:
        return quantize(qtype, values.astype(np.float32))
    return gguf.quants.quantize(values.astype(np.float32), gguf.GGMLQuantizationType(int(qtype)))


def dequantize64(qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """float64 W from an independent decoder: gguf-py for blocks, numpy / torch for floats."""
    if qtype == GGMLType.F32:
        return w.astype(np.float64)
    if qtype == GGMLType.F16:
        return w.astype(np.float64)
    if qtype == GGMLType.BF16:
        t = torch.from_numpy(w.view(np.int16).copy()).view(torch.bfloat16)
        return t.to(torch.float64).numpy()
    deq = gguf.quants.dequantize(w, gguf.GGMLQuantizationType(int(qtype)))
    return deq.astype(np.float64).reshape(n_rows, n_cols)


def block_minimums(qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """|m| per block (0 for types without one), (n_rows, nb) float64."""
    nb = n_cols // 32
    if qtype not in (GGMLType.Q4_1, GGMLType.Q5_1):
        return np.zeros((n_rows, nb))
    blocks = w.reshape(n_rows, nb, -1)
    return np.abs(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64))


def error_bound(
    qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int, x: np.ndarray
) -> np.ndarray:
    """The documented bound on |y - W x| per row (README of kernels/reference.py):

    float weights: (ceil(n/8) + 8) * 2u * sum_c |W_c x_c|
    quantized:     sum_c |W_c| * e_b                      (activation quantization: e_b is
                   0.50002 * amax_b / 127, or amax_b itself in tiny blocks, amax_b < 2^-118)
                 + (nb + 2) * 2u * sum_c (|W_c| + 2|m_b|) * (|x_c| + d_b)   (float32 rounding)
                 + (nb + 2) * n * 2^-149                    (subnormal results round absolutely)
    """
    wd = np.abs(dequantize64(qtype, w, n_rows, n_cols))
    xa = np.abs(x.astype(np.float64))
    if qtype in FLOAT_TYPES:
        return (-(-n_cols // 8) + 8) * 2 * U * (wd @ xa)
    nb = n_cols // 32
    amax = xa.reshape(nb, 32).max(axis=1)
    d = np.repeat(amax / 127, 32)  # (n_cols,)
    e = np.repeat(np.where(amax < 2.0**-118, amax, 0.50002 * amax / 127), 32)  # (n_cols,)
    m = np.repeat(block_minimums(qtype, w, n_rows, n_cols), 32, axis=1)  # (n_rows, n_cols)
    quantization = wd @ e
    rounding = (nb + 2) * 2 * U * ((wd + 2 * m) * (xa + d)).sum(axis=1)
    subnormal = (nb + 2) * n_cols * 2.0**-149  # rounding that is absolute, not relative
    return quantization + rounding + subnormal


def assert_same_bits(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, what
    diff = np.flatnonzero(a.view(np.uint32) != b.view(np.uint32))
    if diff.size:
        i = diff[0]
        raise AssertionError(
            f"{what}: {diff.size} differ, first at {i}: {a.flat[i]!r} vs {b.flat[i]!r}"
        )


def check_all_backends(
    qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int, x: np.ndarray
) -> None:
    """Every backend equals the reference bit for bit, and the reference is within the bound."""
    expected = reference.matvec(qtype, w, n_rows, n_cols, x)
    for name in BACKENDS:
        got = dispatch.load(name).matvec(qtype, w, n_rows, n_cols, x)
        assert_same_bits(got, expected, f"{name} vs reference")
    truth = dequantize64(qtype, w, n_rows, n_cols) @ x.astype(np.float64)
    error = np.abs(expected.astype(np.float64) - truth)
    bound = error_bound(qtype, w, n_rows, n_cols, x)
    assert np.all(error <= bound), f"max excess {np.max(error - bound)}"


def activations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Activations with the outliers RWKV has: a few channels far larger than the rest."""
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, max(1, n // 50))] *= 30
    return x


# -------------------------------------------------------------------------------------------------
# Tests


def test_the_backends_under_test_include_the_c_ones() -> None:
    # Every CI machine builds the extension; a run that silently tested numpy alone must fail.
    assert "scalar" in BACKENDS and "numpy" in BACKENDS


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_rows", ROWS)
@pytest.mark.parametrize("n_cols", COLS)
def test_matvec_random(qtype: GGMLType, n_rows: int, n_cols: int) -> None:
    rng = np.random.default_rng([int(qtype), n_rows, n_cols])
    if qtype in FLOAT_TYPES:
        w = float_weights(qtype, n_rows, n_cols, rng)
    else:
        w = quant_blocks(qtype, n_rows, n_cols, rng)
    check_all_backends(qtype, w, n_rows, n_cols, activations(n_cols, rng))


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_rows, n_cols", [(1, 32), (17, 224), (64, 4128)])
def test_matvec_realistic_quantized(qtype: GGMLType, n_rows: int, n_cols: int) -> None:
    rng = np.random.default_rng([7, int(qtype), n_rows])
    w = realistic_blocks(qtype, n_rows, n_cols, rng)
    check_all_backends(qtype, w, n_rows, n_cols, activations(n_cols, rng))


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_rows", [8, 17, 40])
def test_matvec_long_rows(qtype: GGMLType, n_rows: int) -> None:
    # 8224 columns: every quantized type's 8-row tile is over 24 KiB, so the decode tiles prefetch
    # within their rows and into the next tile's (rke_matmul_quant_x86.h); one tile alone, tiles
    # with a tail of single rows, and five tiles
    n_cols = 8224
    rng = np.random.default_rng([11, int(qtype), n_rows])
    w = quant_blocks(qtype, n_rows, n_cols, rng)
    x = activations(n_cols, rng)
    check_all_backends(qtype, w, n_rows, n_cols, x)
    # through a pool: chunks that start past row 0 and end before the last row
    expected = reference.matvec(qtype, w, n_rows, n_cols, x)
    for n_threads in (2, 3):
        with ThreadPool(n_threads) as pool:
            for name in BACKENDS:
                y = dispatch.load(name).matvec(qtype, w, n_rows, n_cols, x, pool=pool)
                assert_same_bits(y, expected, f"{name}, {n_threads} threads")


@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_cols", ODD_FLOAT_COLS)
@pytest.mark.parametrize("n_rows", [1, 5])
def test_matvec_float_columns_not_multiple_of_8(qtype: GGMLType, n_rows: int, n_cols: int) -> None:
    rng = np.random.default_rng([int(qtype), n_rows, n_cols, 1])
    check_all_backends(
        qtype, float_weights(qtype, n_rows, n_cols, rng), n_rows, n_cols, activations(n_cols, rng)
    )


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["zero", "max_scale", "min_q", "denormal"])
def test_matvec_extreme_blocks(qtype: GGMLType, kind: str) -> None:
    rng = np.random.default_rng([int(qtype), len(kind)])
    n_rows, n_cols = 9, 160
    w = quant_blocks(qtype, n_rows, n_cols, rng, kind)
    # all-positive and alternating activations make every lane reach its largest magnitude
    # and tiny ones make dw * dx subnormal in float32
    xs = (
        np.full(n_cols, 3.0, np.float32),
        np.tile(np.float32([-3, 3]), n_cols // 2),
        activations(n_cols, rng),
        activations(n_cols, rng) * np.float32(1e-36),
    )
    for x in xs:
        check_all_backends(qtype, w, n_rows, n_cols, x)
    # the same in the prompt kernels' token groups (8 tokens in a register) and past them; the
    # largest unsigned quants against x = 127 take the AVX2 int16 pair sums to their limit
    check_matmul(qtype, w, n_rows, n_cols, np.stack([xs[i % 4] for i in (0, 1, 0, 2, 0, 3, 1, 0, 1, 2, 3)]))
    if kind == "zero":
        assert not reference.matvec(qtype, w, n_rows, n_cols, x).any()


@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["zero", "extreme"])
def test_matvec_extreme_floats(qtype: GGMLType, kind: str) -> None:
    rng = np.random.default_rng([int(qtype), len(kind)])
    w = float_weights(qtype, 6, 45, rng, kind)
    check_all_backends(qtype, w, 6, 45, rng.standard_normal(45).astype(np.float32))


def test_q8_0_extremes_by_hand() -> None:
    # one block of -128 (d = 1) against x = 127 * e_0 + 127 * e_1 ... : every product is -128*127
    w = np.zeros(34, np.uint8)
    w[0:2] = np.array([1.0], np.float16).view(np.uint8)
    w[2:] = 0x80
    x = np.full(32, 127.0, np.float32)  # d_x = 1, qs = 127
    for name in BACKENDS:
        y = dispatch.load(name).matvec(GGMLType.Q8_0, w, 1, 32, x)
        assert y[0] == -128 * 127 * 32
        y = dispatch.load(name).matmul(GGMLType.Q8_0, w, 1, 32, np.stack([x] * 8 + [-x]))
        assert (y[:8, 0] == -128 * 127 * 32).all() and y[8, 0] == 128 * 127 * 32


def test_iq4_nl_extremes_by_hand() -> None:
    # codes 0 (-127) in the first half and 15 (113) in the second, d = 1, against x = 127 (d_x = 1)
    w = np.zeros(18, np.uint8)
    w[0:2] = np.array([1.0], np.float16).view(np.uint8)
    w[2:] = 0xF0  # low nibbles (elements 0..15) code 0, high nibbles (16..31) code 15
    x = np.full(32, 127.0, np.float32)
    for name in BACKENDS:
        y = dispatch.load(name).matvec(GGMLType.IQ4_NL, w, 1, 32, x)
        assert y[0] == 16 * (-127 * 127) + 16 * (113 * 127)
        y = dispatch.load(name).matvec(GGMLType.IQ4_NL, w, 1, 32, -x)  # the sign trick's other side
        assert y[0] == -(16 * (-127 * 127) + 16 * (113 * 127))
        y = dispatch.load(name).matmul(GGMLType.IQ4_NL, w, 1, 32, np.stack([x, -x] * 5))
        assert (y[:, 0] == np.tile([1, -1], 5) * (16 * (-127 * 127) + 16 * (113 * 127))).all()


def test_q4_1_by_hand() -> None:
    # d = 0.5, m = -2, q_j = j % 16 -> W_j = 0.5 * (j % 16) - 2; x = 1: y = sum(W) = -4 exactly
    w = np.zeros(20, np.uint8)
    w[0:4] = np.array([0.5, -2.0], np.float16).view(np.uint8)
    q = np.arange(32) % 16
    w[4:] = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    x = np.ones(32, np.float32)
    for name in BACKENDS:
        y = dispatch.load(name).matvec(GGMLType.Q4_1, w, 1, 32, x)
        assert y[0] == np.float32(0.5 * 2 * q[:16].sum() - 64)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 3, 4, 9, 70])
def test_matmul_equals_stacked_matvec(qtype: GGMLType, n_tokens: int) -> None:
    rng = np.random.default_rng([int(qtype), n_tokens, 2])
    n_rows, n_cols = 19, 96
    if qtype in FLOAT_TYPES:
        w = float_weights(qtype, n_rows, n_cols, rng)
    else:
        w = quant_blocks(qtype, n_rows, n_cols, rng)
    x = np.stack([activations(n_cols, rng) for _ in range(n_tokens)])
    expected = reference.matmul(qtype, w, n_rows, n_cols, x)
    for t in range(n_tokens):
        assert_same_bits(expected[t], reference.matvec(qtype, w, n_rows, n_cols, x[t]), "reference")
    for name in BACKENDS:
        backend = dispatch.load(name)
        assert_same_bits(backend.matmul(qtype, w, n_rows, n_cols, x), expected, name)
        stacked = np.stack(
            [backend.matvec(qtype, w, n_rows, n_cols, x[t]) for t in range(n_tokens)]
        )
        assert_same_bits(stacked, expected, f"{name} stacked matvec")


def check_matmul(qtype: GGMLType, w: np.ndarray, n_rows: int, n_cols: int, x: np.ndarray) -> None:
    """matmul on every backend equals the reference's, and row t equals the reference matvec."""
    expected = reference.matmul(qtype, w, n_rows, n_cols, x)
    for t in range(len(x)):
        assert_same_bits(expected[t], reference.matvec(qtype, w, n_rows, n_cols, x[t]), "reference")
    for name in BACKENDS:
        assert_same_bits(dispatch.load(name).matmul(qtype, w, n_rows, n_cols, x), expected, name)


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_1], ids=lambda t: t.name)
def test_every_finite_fp16_scale(qtype: GGMLType) -> None:
    """The AVX2 kernels look block scales (and q4_1's minimums) up in a 65536-entry table: every
    finite fp16 value, subnormals and both zeros included, as d and as m, through matvec and the
    prompt kernels (9 tokens: a group of 8 and one left)."""
    rng = np.random.default_rng(7)
    finite = np.array([h for h in range(65536) if (h >> 10) & 0x1F != 0x1F], np.uint16)  # 63488
    n_cols = 1024
    n_rows = len(finite) // (n_cols // 32)
    w = quant_blocks(qtype, n_rows, n_cols, rng)
    nb, size = n_cols // 32, BLOCK_SIZES[qtype][1]
    blocks = w.reshape(n_rows, nb, size)
    blocks[..., 0:2] = finite.reshape(n_rows, nb).view(np.uint8).reshape(n_rows, nb, 2)
    if qtype == GGMLType.Q4_1:
        blocks[..., 2:4] = rng.permutation(finite).reshape(n_rows, nb).view(np.uint8).reshape(n_rows, nb, 2)
    x = np.stack([activations(n_cols, rng) for _ in range(9)])
    for t in range(2):
        check_all_backends(qtype, w, n_rows, n_cols, x[t])
    check_matmul(qtype, w, n_rows, n_cols, x)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q5_1], ids=lambda t: t.name)
def test_matmul_long_rows_in_token_groups(qtype: GGMLType) -> None:
    """513 blocks a row (16416 columns), 7 rows (3 pairs of rows and 1 left) and 16 tokens (two
    groups of 8): every block of a long row through the prompt kernel's group tiles."""
    rng = np.random.default_rng([int(qtype), 513])
    n_rows, n_cols = 7, 513 * 32
    w = quant_blocks(qtype, n_rows, n_cols, rng)
    check_matmul(qtype, w, n_rows, n_cols, np.stack([activations(n_cols, rng) for _ in range(16)]))


@pytest.mark.parametrize(
    "qtype", [GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.IQ4_NL, GGMLType.F16], ids=lambda t: t.name
)
@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
def test_thread_pools_give_the_same_bits(qtype: GGMLType, n_threads: int) -> None:
    rng = np.random.default_rng([int(qtype), n_threads])
    n_rows, n_cols = 1031, 256  # enough rows to be split, not a multiple of the chunks
    if qtype in FLOAT_TYPES:
        w = float_weights(qtype, n_rows, n_cols, rng)
    else:
        w = quant_blocks(qtype, n_rows, n_cols, rng)
    x = np.stack([activations(n_cols, rng) for _ in range(6)])
    expected = reference.matmul(qtype, w, n_rows, n_cols, x)
    with ThreadPool(n_threads) as pool:
        for name in BACKENDS:
            backend = dispatch.load(name)
            assert_same_bits(backend.matmul(qtype, w, n_rows, n_cols, x, pool=pool), expected, name)
            for _ in range(3):  # repeated calls reuse the sleeping or spinning workers
                y = backend.matvec(qtype, w, n_rows, n_cols, x[2], pool=pool)
                assert_same_bits(y, expected[2], name)


@pytest.mark.parametrize("n_threads", [2, 3])
def test_guided_chunks_cover_every_row_once(n_threads: int) -> None:
    """Products of one matrix hand out chunks that shrink from a quarter (two threads) of the rows
    to one grain of 32 KiB of work: ~20k short rows make 9-23 of them, the last one partial
    (tests/test_kernels_pool.py traces the scheduling itself, item by item)."""
    rng = np.random.default_rng([7, n_threads])
    n_rows, n_cols = 20011, 64
    w = quant_blocks(GGMLType.Q4_0, n_rows, n_cols, rng)
    x = np.stack([activations(n_cols, rng) for _ in range(9)])
    expected = reference.matmul(GGMLType.Q4_0, w, n_rows, n_cols, x)
    with ThreadPool(n_threads) as pool:
        for name in BACKENDS:
            backend = dispatch.load(name)
            assert_same_bits(backend.matmul(GGMLType.Q4_0, w, n_rows, n_cols, x, pool=pool), expected, name)
            assert_same_bits(backend.matvec(GGMLType.Q4_0, w, n_rows, n_cols, x[4], pool=pool), expected[4], name)


def test_one_pool_shared_by_python_threads() -> None:
    rng = np.random.default_rng(5)
    w = quant_blocks(GGMLType.Q8_0, 500, 512, rng)
    xs = [activations(512, rng) for _ in range(8)]
    expected = [reference.matvec(GGMLType.Q8_0, w, 500, 512, x) for x in xs]
    backend = dispatch.load(BACKENDS[0])
    with ThreadPool(2) as pool, ThreadPoolExecutor(4) as executor:
        results = list(
            executor.map(lambda x: backend.matvec(GGMLType.Q8_0, w, 500, 512, x, pool=pool), xs * 5)
        )
    for got, want in zip(results, expected * 5):
        assert_same_bits(got, want, "concurrent")


def test_out_is_filled_in_place() -> None:
    rng = np.random.default_rng(6)
    w = quant_blocks(GGMLType.Q4_0, 7, 64, rng)
    x = activations(64, rng)
    for name in BACKENDS:
        out = np.full(7, np.nan, np.float32)
        assert dispatch.load(name).matvec(GGMLType.Q4_0, w, 7, 64, x, out) is out
        assert_same_bits(out, reference.matvec(GGMLType.Q4_0, w, 7, 64, x), name)


def test_weights_from_a_read_only_memory_map(tmp_path) -> None:
    rng = np.random.default_rng(8)
    w = quant_blocks(GGMLType.Q5_0, 12, 128, rng)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 32 + w.tobytes())
    mapped = np.memmap(path, np.uint8, "r", offset=32, shape=w.shape)
    x = activations(128, rng)
    for name in BACKENDS:
        y = dispatch.load(name).matvec(GGMLType.Q5_0, mapped, 12, 128, x)
        assert_same_bits(y, reference.matvec(GGMLType.Q5_0, w, 12, 128, x), name)
