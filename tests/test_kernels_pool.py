"""The C pool's chunking (kernels/csrc/pool.c), traced item by item: every item is run exactly once,
chunks start on whole grains, and guided chunks shrink from a share of what is left to one grain."""

from __future__ import annotations

import numpy as np
import pytest
from rwkv_edge.kernels._ext import ffi, lib
from rwkv_edge.kernels.pool import ThreadPool


def trace(pool: ThreadPool | None, n_items: int, grain: int, guided: bool) -> tuple[np.ndarray, np.ndarray]:
    """(visits, starts): how often each item was run, and how many chunks began at each item."""
    visits = np.zeros(n_items, np.int32)
    starts = np.zeros(n_items, np.int32)
    lib.rke_pool_trace(ffi.NULL if pool is None else pool.handle(), n_items, grain, int(guided),
                       ffi.from_buffer("int32_t[]", visits, require_writable=True),
                       ffi.from_buffer("int32_t[]", starts, require_writable=True))
    return visits, starts


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
@pytest.mark.parametrize("guided", [False, True], ids=["equal", "guided"])
@pytest.mark.parametrize(("n_items", "grain"), [(20011, 8), (20011, 912), (1031, 232), (100, 100), (7, 8), (1, 1)])
def test_every_item_once_and_chunks_on_grains(n_threads: int, guided: bool, n_items: int, grain: int) -> None:
    with ThreadPool(n_threads) as pool:
        for _ in range(3):  # repeated tasks reuse the spinning or sleeping workers
            visits, starts = trace(pool, n_items, grain, guided)
            assert (visits == 1).all()
            begins = np.flatnonzero(starts)
            assert (starts[begins] == 1).all() and begins[0] == 0
            assert (begins % grain == 0).all()
            if n_threads == 1 or n_items <= grain:  # run by the caller in one piece
                assert begins.tolist() == [0]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("n_threads", [2, 3])
def test_guided_chunks_shrink_to_one_grain(n_threads: int) -> None:
    """Each chunk takes 1 / (2 x threads) of the items left when it was taken, rounded up to whole
    grains (the last one what is left): the sizes follow from the order of the chunks alone."""
    n_items, grain = 20011, 8
    with ThreadPool(n_threads) as pool:
        _, starts = trace(pool, n_items, grain, guided=True)
    begins = np.flatnonzero(starts).tolist()
    sizes = np.diff(begins + [n_items]).tolist()
    parts = 2 * n_threads
    expected = [min(ceil_div(ceil_div(n_items - b, parts), grain) * grain, n_items - b) for b in begins]
    assert sizes == expected
    assert sizes[0] > 600 and sizes[-2] == grain and len(sizes) > 20


def test_equal_chunks_are_one_grain_each() -> None:
    with ThreadPool(2) as pool:
        _, starts = trace(pool, 1000, 96, guided=False)
    assert np.flatnonzero(starts).tolist() == list(range(0, 1000, 96))


def test_without_a_pool_the_caller_runs_everything_at_once() -> None:
    visits, starts = trace(None, 500, 8, guided=True)
    assert (visits == 1).all() and np.flatnonzero(starts).tolist() == [0]
