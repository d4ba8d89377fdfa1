"""Malformed arguments raise ValueError on every backend before any pointer reaches C: wrong
byte counts, shapes, dtypes, alignment, contiguity, overlap, sizes and types."""

from __future__ import annotations

import numpy as np
import pytest
from rwkv_edge.kernels import ThreadPool, dispatch
from rwkv_edge.quant.ggml_types import GGMLType

BACKENDS = dispatch.available()
Q4_0, F32, F16 = GGMLType.Q4_0, GGMLType.F32, GGMLType.F16


def misaligned(n: int, dtype: str, offset: int = 1) -> np.ndarray:
    """A contiguous array whose data starts `offset` bytes past an aligned address."""
    size = np.dtype(dtype).itemsize
    raw = np.zeros(n * size + 16, np.uint8)
    start = (-raw.ctypes.data) % 16 + offset
    return raw[start : start + n * size].view(dtype)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dispatch.Backend:
    return dispatch.load(request.param)


def good_q4_0() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((4, 36), np.uint8), np.ones(64, np.float32)


def test_the_good_call_works(backend: dispatch.Backend) -> None:
    w, x = good_q4_0()
    assert backend.matvec(Q4_0, w, 4, 64, x).shape == (4,)
    assert backend.matvec(Q4_0, w.tobytes(), 4, 64, x).shape == (4,)  # any buffer


@pytest.mark.parametrize("delta", [-1, 1, -18, 18])
def test_wrong_weight_byte_count(backend: dispatch.Backend, delta: int) -> None:
    _, x = good_q4_0()
    w = np.zeros(4 * 36 + delta, np.uint8)
    with pytest.raises(ValueError, match="need 144 bytes"):
        backend.matvec(Q4_0, w, 4, 64, x)


def test_rows_and_columns_disagree_with_the_bytes(backend: dispatch.Backend) -> None:
    w, x = good_q4_0()
    with pytest.raises(ValueError, match="bytes"):
        backend.matvec(Q4_0, w, 5, 64, x)
    with pytest.raises(ValueError, match="bytes"):
        backend.matmul(Q4_0, w, 2, 96, np.ones((2, 96), np.float32))


@pytest.mark.parametrize("n_cols", [16, 33, 65])
def test_columns_not_whole_blocks(backend: dispatch.Backend, n_cols: int) -> None:
    with pytest.raises(ValueError, match="multiple of 32 columns"):
        backend.matvec(Q4_0, np.zeros(200, np.uint8), 1, n_cols, np.ones(n_cols, np.float32))


@pytest.mark.parametrize("n", [0, -3, 2.0, True, None, "4"])
def test_bad_sizes(backend: dispatch.Backend, n: object) -> None:
    w, x = good_q4_0()
    with pytest.raises(ValueError, match="n_rows"):
        backend.matvec(Q4_0, w, n, 64, x)


@pytest.mark.parametrize("qtype", [10, 12, 99, -1, "Q4_0", 2.0])
def test_unknown_weight_types(backend: dispatch.Backend, qtype: object) -> None:
    w, x = good_q4_0()
    with pytest.raises(ValueError, match="weight type"):
        backend.matvec(qtype, w, 4, 64, x)


def test_x_misaligned(backend: dispatch.Backend) -> None:
    w, _ = good_q4_0()
    x = misaligned(64, "<f4")
    assert not x.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        backend.matvec(Q4_0, w, 4, 64, x)


def test_x_not_contiguous(backend: dispatch.Backend) -> None:
    w, _ = good_q4_0()
    with pytest.raises(ValueError, match="contiguous"):
        backend.matvec(Q4_0, w, 4, 64, np.ones(128, np.float32)[::2])
    with pytest.raises(ValueError, match="contiguous"):
        backend.matmul(Q4_0, w, 4, 64, np.ones((64, 3), np.float32).T)


@pytest.mark.parametrize(
    "x",
    [
        np.ones(64, np.float64),
        np.ones(64, ">f4"),
        np.ones(63, np.float32),
        np.ones((1, 64), np.float32),
        [1.0] * 64,
    ],
)
def test_x_wrong_dtype_or_shape(backend: dispatch.Backend, x: object) -> None:
    w, _ = good_q4_0()
    with pytest.raises(ValueError, match="x must"):
        backend.matvec(Q4_0, w, 4, 64, x)


@pytest.mark.parametrize(
    "x", [np.ones(64, np.float32), np.ones((0, 64), np.float32), np.ones((2, 63), np.float32)]
)
def test_matmul_x_shape(backend: dispatch.Backend, x: np.ndarray) -> None:
    w, _ = good_q4_0()
    with pytest.raises(ValueError, match="x must"):
        backend.matmul(Q4_0, w, 4, 64, x)


def test_weights_misaligned_or_strided(backend: dispatch.Backend) -> None:
    x = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="aligned"):
        backend.matvec(Q4_0, misaligned(144, "u1"), 4, 64, x)
    with pytest.raises(ValueError, match="aligned"):
        backend.matvec(F32, misaligned(4 * 64 * 4, "u1", offset=2), 4, 64, x)
    with pytest.raises(ValueError, match="contiguous"):
        backend.matvec(Q4_0, np.zeros((4, 72), np.uint8)[:, ::2], 4, 64, x)


def test_weights_of_the_wrong_dtype(backend: dispatch.Backend) -> None:
    x = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="cannot be given as float32"):
        backend.matvec(F16, np.zeros((4, 32), np.float32), 4, 64, x)
    with pytest.raises(ValueError, match="cannot be given as"):
        backend.matvec(Q4_0, np.zeros(72, np.uint16), 4, 64, x)
    with pytest.raises(ValueError, match="buffer"):
        backend.matvec(Q4_0, 12345, 4, 64, x)


def test_bad_out(backend: dispatch.Backend) -> None:
    w, x = good_q4_0()
    for out in (np.zeros(5, np.float32), np.zeros(4, np.float64), np.zeros(8, np.float32)[::2]):
        with pytest.raises(ValueError, match="out must"):
            backend.matvec(Q4_0, w, 4, 64, x, out)
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        backend.matvec(Q4_0, w, 4, 64, x, read_only)


def test_out_overlapping_x(backend: dispatch.Backend) -> None:
    x = np.ones(64, np.float32)
    w = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        backend.matvec(F32, w, 64, 64, x, x)


def test_closed_pool(backend: dispatch.Backend) -> None:
    w, x = good_q4_0()
    pool = ThreadPool(2)
    pool.close()
    if backend.name == "numpy":  # the numpy path has no threads and ignores the pool
        backend.matvec(Q4_0, w, 4, 64, x, pool=pool)
        return
    with pytest.raises(ValueError, match="closed"):
        backend.matvec(Q4_0, w, 4, 64, x, pool=pool)
