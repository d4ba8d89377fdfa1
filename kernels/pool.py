"""The persistent C thread pool that splits a kernel's rows, and the default thread count.

A ThreadPool is made and closed explicitly by its owner (the model); kernels never create
threads. Without the C extension a ThreadPool is an inert placeholder, so callers need not care.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    from ._ext import ffi, lib
except ImportError:  # installed with RWKV_EDGE_NO_KERNELS=1: the numpy path only
    ffi = lib = None


def default_threads() -> int:
    """Physical cores this process may run on (hyper-threads share a core's vector units)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return len(cores)


class ThreadPool:
    """n_threads - 1 C worker threads plus the calling thread; close() (or `with`) joins them.

    One kernel call runs at a time per pool (C serialises them); close only when no call on
    this pool is running.
    """

    def __init__(self, n_threads: int | None = None) -> None:
        n = default_threads() if n_threads is None else n_threads
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
            raise ValueError(f"n_threads must be an integer in 1..1024, got {n_threads!r}")
        self.n_threads = n
        self._handle: Any = None
        if lib is not None:
            raw = lib.rke_pool_create(n)
            if raw == ffi.NULL:
                raise RuntimeError(f"could not start {n - 1} kernel worker threads")
            self._handle = ffi.gc(raw, lib.rke_pool_destroy)

    @property
    def closed(self) -> bool:
        return lib is not None and self._handle is None

    def handle(self) -> Any:
        """The C pool pointer for a kernel call."""
        if self._handle is None:
            raise ValueError("the thread pool is closed" if lib is not None else "no C kernels")
        return self._handle

    def close(self) -> None:
        """Stop and join the worker threads (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            ffi.release(handle)

    def __enter__(self) -> ThreadPool:  # noqa: PYI034 (not meant to be subclassed)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"ThreadPool(n_threads={self.n_threads}, {state})"
