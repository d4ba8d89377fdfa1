"""Activations quantized to q8x blocks (the input of the integer dot products): every backend
gives the same bytes, ggml's rules hold (d = amax / 127, round half away from zero), and the
error per element stays within half a step."""

from __future__ import annotations

import numpy as np
import pytest
from rwkv_edge.kernels import dispatch, reference

BACKENDS = dispatch.available()


def quantize_everywhere(x: np.ndarray) -> np.ndarray:
    """The q8x blocks of x (T, n), asserting that all backends agree byte for byte."""
    expected = reference.quantize_q8x(x)
    for name in BACKENDS:
        got = dispatch.load(name).quantize_q8x(x)
        assert got.dtype == reference.Q8X and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes(), name
    return expected


def test_q8x_block_is_the_c_struct() -> None:
    from rwkv_edge.kernels._ext import ffi

    assert reference.Q8X.itemsize == ffi.sizeof("rke_block_q8x") == 40
    assert [reference.Q8X.fields[f][1] for f in ("d", "s", "qs")] == [0, 4, 8]


def test_hand_computed_block() -> None:
    # amax 127 -> d = 1 and id = 1: the quants are x rounded half away from zero
    x = np.zeros(32, np.float32)
    x[:10] = [127, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, 126.5, -127]
    blocks = quantize_everywhere(x[None, :])
    assert blocks["d"][0, 0] == 1.0
    assert list(blocks["qs"][0, 0, :10]) == [127, -64, 1, -1, 2, 3, -3, 0, 127, -127]
    assert blocks["s"][0, 0] == sum([127, -64, 1, -1, 2, 3, -3, 0, 127, -127])


def test_zero_block() -> None:
    blocks = quantize_everywhere(np.zeros((2, 64), np.float32))
    assert not blocks["d"].any() and not blocks["qs"].any() and not blocks["s"].any()


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e3, 1e30])
@pytest.mark.parametrize("n_tokens, n_cols", [(1, 32), (3, 96), (5, 4128)])
def test_rules_and_error(scale: float, n_tokens: int, n_cols: int) -> None:
    rng = np.random.default_rng([n_tokens, n_cols, int(np.log10(scale)) + 40])
    x = (rng.standard_normal((n_tokens, n_cols)) * scale).astype(np.float32)
    x[:, rng.integers(0, n_cols, 3)] *= 40  # outliers
    blocks = quantize_everywhere(x)
    xb = x.reshape(n_tokens, -1, 32).astype(np.float64)
    amax = np.abs(x.reshape(n_tokens, -1, 32)).max(axis=-1)
    assert np.array_equal(blocks["d"], amax / np.float32(127))  # float32 division, as ggml
    qs = blocks["qs"].astype(np.int64)
    assert np.abs(qs).max() <= 127
    assert np.array_equal(blocks["s"], qs.sum(axis=-1))
    d = blocks["d"].astype(np.float64)[..., None]
    # half a step, plus the rounding of x * (1 / d) in float32
    assert np.all(np.abs(xb - d * qs) <= d * (0.5 + 2.0**-16))
    # and the largest element of each block lands on +-127
    assert np.all(np.abs(qs).max(axis=-1) == 127)


def test_tiny_blocks() -> None:
    # amax below 2^-118: d is subnormal (or 0) and 1 / d may overflow float32 (id is clamped to
    # FLT_MAX, so zeros stay zeros). The documented bound is then |x - d q| <= amax, not d / 2.
    x = np.zeros((1, 96), np.float32)
    x[0, :32] = np.float32(1e-40) * np.arange(-16, 16)
    x[0, 40] = np.float32(-1e-44)  # amax / 127 rounds to 0
    x[0, 64:] = np.float32(2e-36) * np.linspace(-1, 1, 32)
    blocks = quantize_everywhere(x)
    d, qs = blocks["d"][0], blocks["qs"][0].astype(np.int64)
    assert d[0] == np.abs(x[0, :32]).max() / np.float32(127) and d[1] == 0 and d[2] > 0
    assert qs[0, 16] == 0 and not qs[1].any()
    xb = x[0].reshape(3, 32).astype(np.float64)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    assert np.all(np.abs(xb - d[:, None].astype(np.float64) * qs) <= amax)


def test_non_finite_activations_are_defined_and_identical() -> None:
    # NaN and inf give meaningless but memory-safe, backend-independent blocks
    x = np.ones((1, 96), np.float32)
    x[0, 3] = np.nan
    x[0, 40] = np.inf
    x[0, 70] = -np.inf
    x[0, 71] = np.nan
    blocks = quantize_everywhere(x)
    assert np.abs(blocks["qs"].astype(int)).max() <= 127
