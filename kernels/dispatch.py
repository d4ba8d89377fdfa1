"""Which kernel implementation runs: chosen once at import from the CPU and RWKV_EDGE_KERNELS.

RWKV_EDGE_KERNELS=auto (default: the best this CPU and install have) | avxvnni | avx2 | scalar | numpy.
avxvnni is avx2 with the quantized block products done by AVX-VNNI's vpdpbusd (the same bits).
This is the only module that reads it. Asking for something unavailable raises RuntimeError.
Tests call load(name) to run a given backend directly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import numpy_path

try:
    from . import native
    from ._ext import lib
except ImportError:  # installed with RWKV_EDGE_NO_KERNELS=1
    native = lib = None

ENV_VAR = "RWKV_EDGE_KERNELS"
# the C implementation behind each C backend
IMPLS = (
    {} if lib is None
    else {"avxvnni": lib.RKE_IMPL_AVXVNNI, "avx2": lib.RKE_IMPL_AVX2, "scalar": lib.RKE_IMPL_SCALAR}
)
NAMES = ("avxvnni", "avx2", "scalar", "numpy")  # best first
_AVX2_NEEDS = frozenset({"avx", "avx2", "fma", "f16c"})
_NEEDS = {"avx2": _AVX2_NEEDS, "avxvnni": _AVX2_NEEDS | {"avxvnni"}}


@dataclass(frozen=True)
class Backend:
    """One implementation of every kernel, with the same signatures and the same results."""

    name: str  # "avxvnni" | "avx2" | "scalar" | "numpy"
    features: frozenset[str]  # what the CPU offers (avx, fma, f16c, avx2, avxvnni)
    matvec: Callable[..., np.ndarray]  # (qtype, w, n_rows, n_cols, x, out=None, *, pool=None)
    matmul: Callable[..., np.ndarray]  # (qtype, w, n_rows, n_cols, x, out=None, *, pool=None)
    quantize_q8x: Callable[[np.ndarray], np.ndarray]  # (T, n) float32 -> (T, n/32) Q8X


def cpu_features() -> frozenset[str]:
    """The vector extensions this process may use (CPUID + XGETBV), empty without the C module."""
    if lib is None:
        return frozenset()
    bits = lib.rke_cpu_features()
    names = {
        lib.RKE_CPU_AVX: "avx",
        lib.RKE_CPU_FMA: "fma",
        lib.RKE_CPU_F16C: "f16c",
        lib.RKE_CPU_AVX2: "avx2",
        lib.RKE_CPU_AVXVNNI: "avxvnni",
    }
    return frozenset(name for bit, name in names.items() if bits & bit)


def _unavailable(name: str) -> str | None:
    """Why backend `name` cannot run here, or None if it can."""
    if name == "numpy":
        return None
    if lib is None:
        return "the C kernels were not built (installed with RWKV_EDGE_NO_KERNELS=1?)"
    if name == "scalar":
        return None
    if not lib.rke_impl_compiled(lib.RKE_IMPL_AVX2):
        return "the AVX2 kernels are x86-only"
    if not lib.rke_impl_compiled(IMPLS[name]):
        return "the compiler that built the kernels lacked AVX-VNNI"
    missing = _NEEDS[name] - cpu_features()
    if missing:
        return f"this CPU (or OS) lacks {', '.join(sorted(missing))}"
    return None


def available() -> tuple[str, ...]:
    """The backends that can run here, best first."""
    return tuple(name for name in NAMES if _unavailable(name) is None)


def load(name: str) -> Backend:
    """Backend `name`; RuntimeError if it cannot run here."""
    if name not in NAMES:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {', '.join(NAMES)}")
    reason = _unavailable(name)
    if reason is not None:
        raise RuntimeError(f"kernel backend {name!r} is unavailable: {reason}")
    if name == "numpy":
        return Backend(
            name, cpu_features(), numpy_path.matvec, numpy_path.matmul, numpy_path.quantize_q8x
        )
    impl = IMPLS[name]
    return Backend(
        name,
        cpu_features(),
        functools.partial(native.matvec, impl),
        functools.partial(native.matmul, impl),
        functools.partial(native.quantize_q8x, impl),
    )


def choose(requested: str) -> Backend:
    """The backend for a RWKV_EDGE_KERNELS value."""
    value = requested.strip().lower()
    if value == "auto":
        return load(available()[0])
    if value not in NAMES:
        raise RuntimeError(f"{ENV_VAR}={requested!r} is not one of auto, {', '.join(NAMES)}")
    try:
        return load(value)
    except RuntimeError as err:
        raise RuntimeError(f"{ENV_VAR}={requested}: {err}") from None


CHOSEN: Backend = choose(os.environ.get(ENV_VAR) or "auto")  # unset or empty: auto
