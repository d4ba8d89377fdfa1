"""Memory read bandwidth, measured on the spot: threads sum a buffer far larger than the caches.

Decode reads every weight once per token, so bytes per token / this bandwidth is the fastest a token can
be (`rwkv-edge bench` reports that bound). The C probe (csrc/bandwidth.c) returns the sum of what it
read, so `read_sum` doubles as the proof that every byte was loaded.

    with ThreadPool(2) as pool:
        print(read_bandwidth(pool).gb_per_s)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from . import dispatch
from .pool import ThreadPool

try:
    from ._ext import ffi, lib
except ImportError:  # installed with RWKV_EDGE_NO_KERNELS=1: numpy reads the buffer, one thread
    ffi = lib = None

# The caches hold a negligible share of 512 MiB: on the benchmark VM a 64 MiB buffer read 28-38 GB/s (partly
# cached), 128 MiB to 3 GiB 19-23 GB/s in the same minutes (docs/benchmarks.md, session 8).
DEFAULT_BYTES = 512 << 20
MIN_BYTES = 1 << 20
IMPLS = ("avx2", "scalar", "numpy")


@dataclass(frozen=True)
class Bandwidth:
    """Read bandwidth over `passes` timed passes of an `n_bytes` buffer (GB = 1e9 bytes)."""

    gb_per_s: float  # median pass
    best_gb_per_s: float
    worst_gb_per_s: float
    n_bytes: int
    passes: int
    threads: int
    impl: str  # "avx2" | "scalar" | "numpy"


def best_impl() -> str:
    """The widest loads this CPU and install allow (the probe measures memory, not the chosen kernels)."""
    usable = dispatch.available()
    return "avx2" if "avx2" in usable else "scalar" if "scalar" in usable else "numpy"


def read_sum(words: np.ndarray, pool: ThreadPool | None = None, *, impl: str | None = None) -> int:
    """The sum mod 2**64 of a C-contiguous uint64 array (n,), every word read once by the pool's threads."""
    if not isinstance(words, np.ndarray) or words.dtype != np.uint64 or words.ndim != 1:
        raise ValueError("words must be a 1-D uint64 numpy array")
    if not words.flags.c_contiguous:
        raise ValueError("words must be C-contiguous")
    impl = best_impl() if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"unknown probe implementation {impl!r}; expected one of {', '.join(IMPLS)}")
    if impl == "numpy":
        return int(words.sum(dtype=np.uint64))  # wraps mod 2**64 like the C adds
    if lib is None or impl not in dispatch.available():
        raise ValueError(f"probe implementation {impl!r} cannot run here")
    if pool is not None and not isinstance(pool, ThreadPool):
        raise ValueError(f"pool must be a ThreadPool, got {type(pool).__name__}")
    out = ffi.new("uint64_t *")
    code = lib.RKE_IMPL_AVX2 if impl == "avx2" else lib.RKE_IMPL_SCALAR
    handle = ffi.NULL if pool is None else pool.handle()
    rc = lib.rke_read_sum(handle, code, ffi.from_buffer("uint64_t[]", words), words.size, out)
    if rc != lib.RKE_OK:  # every argument was checked above, so this is a bug
        raise RuntimeError(f"rke_read_sum: C status {rc}")
    return int(out[0])


def read_bandwidth(
    pool: ThreadPool | None = None, n_bytes: int = DEFAULT_BYTES, passes: int = 7, *, impl: str | None = None
) -> Bandwidth:
    """Time `passes` full reads of a freshly written buffer (after one untimed pass) -> median GB/s."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < MIN_BYTES:
        raise ValueError(f"the probe buffer must be at least {MIN_BYTES} bytes, got {n_bytes!r}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be a positive integer, got {passes!r}")
    impl = best_impl() if impl is None else impl
    # Written before it is read: untouched pages would all map the kernel's one zero page, read from cache.
    words = np.arange(n_bytes // 8, dtype=np.uint64)  # (n_bytes / 8,)
    expected = read_sum(words, pool, impl=impl)  # the untimed pass faults in anything left
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        got = read_sum(words, pool, impl=impl)
        seconds = time.perf_counter() - start
        if got != expected:
            raise RuntimeError("the bandwidth probe read different data twice")
        rates.append(words.nbytes / seconds / 1e9)
    threads = 1 if impl == "numpy" or pool is None else pool.n_threads
    return Bandwidth(statistics.median(rates), max(rates), min(rates), words.nbytes, passes, threads, impl)
