"""The model code's exp (kernels/csrc/rke_exp.h, rke_exp_avx2.h): its AVX2, SSE2 and scalar versions
return the same bits, and stay within 1 ulp of the exact exp where they promise to, with the
documented edges."""

from __future__ import annotations

import numpy as np
import pytest
from rwkv_edge.kernels import dispatch
from rwkv_edge.kernels._ext import ffi, lib

HI, LO = np.float32(88.37), np.float32(-87.33)


# the vector widths this CPU runs: SSE2 is x86-64's baseline, AVX2 where dispatch finds it
LANES = [4, 8] if "avx2" in dispatch.available() else [4]


def c_exp(x: np.ndarray, lanes: int) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty_like(x)
    lib.rke_exp_f32(ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y, require_writable=True),
                    x.size, lanes)
    return y


def sample() -> np.ndarray:
    """The edges and their neighbours first (so every vector width takes them in its lanes), every
    97th float32 bit pattern (all signs, exponents, NaNs and infinities), a dense sweep of the
    working range, and 3 more points so that the 4- and 8-lane loops both leave a scalar tail."""
    edges = np.array([HI, LO, 0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    near = np.concatenate([np.nextafter(edges[:2], np.float32(np.inf)), np.nextafter(edges[:2], np.float32(-np.inf))])
    patterns = np.arange(0, 1 << 32, 97, dtype=np.uint64).astype(np.uint32).view(np.float32)
    sweep = np.linspace(-90, 90, 1_000_003, dtype=np.float32)
    tail = np.array([HI, LO, 1.0], np.float32)
    x = np.concatenate([edges, near, patterns, sweep, tail])
    assert len(x) % 8 == 7 and len(x) % 4 == 3
    return x


@pytest.mark.parametrize("lanes", LANES)
def test_vector_and_scalar_give_the_same_bits(lanes: int) -> None:
    x = sample()
    a, b = c_exp(x, lanes), c_exp(x, 1)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))  # NaNs too: both return x itself
    assert np.array_equal(np.isnan(a), np.isnan(x))


@pytest.mark.parametrize("lanes", LANES)
def test_within_one_ulp_and_the_edges(lanes: int) -> None:
    x = sample()
    y = c_exp(x, lanes)
    inside = (x >= LO) & (x <= HI)
    exact = np.exp(x[inside].astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert (np.abs(y[inside] - exact) <= ulp).all()
    assert (y[x > HI] == np.inf).all() and (y[x < LO] == 0).all()
    assert y[x == 0].tolist() == [1.0] * int((x == 0).sum())
