"""Backend choice: CPU features against /proc/cpuinfo, the RWKV_EDGE_KERNELS override (in fresh
interpreters), the C structs against ggml's block sizes, and the thread pool's life cycle."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from rwkv_edge import kernels
from rwkv_edge.kernels import ThreadPool, dispatch
from rwkv_edge.kernels._ext import ffi, lib
from rwkv_edge.quant.ggml_types import BLOCK_SIZES, GGMLType

X86 = platform.machine().lower() in ("x86_64", "amd64", "i686")


def cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


def import_backend(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != dispatch.ENV_VAR}
    if value is not None:
        env[dispatch.ENV_VAR] = value
    code = "from rwkv_edge import kernels; print(kernels.backend)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


def test_cpu_features_match_the_kernel_report() -> None:
    wanted = {"avx", "avx2", "fma", "f16c"}
    expected = wanted & cpuinfo_flags() if X86 else set()
    assert dispatch.cpu_features() - {"avxvnni"} == expected
    # /proc/cpuinfo spells it avx_vnni, and kernels before Linux 5.12 do not list it at all
    if "avx_vnni" in cpuinfo_flags():
        assert "avxvnni" in dispatch.cpu_features()


def test_available_backends() -> None:
    has_avx2 = X86 and {"avx", "avx2", "fma", "f16c"} <= cpuinfo_flags()
    has_vnni = (
        has_avx2
        and "avxvnni" in dispatch.cpu_features()
        and bool(lib.rke_impl_compiled(lib.RKE_IMPL_AVXVNNI))  # gcc >= 11, clang >= 12 build it
    )
    expected = (("avxvnni",) if has_vnni else ()) + (("avx2",) if has_avx2 else ()) + ("scalar", "numpy")
    assert dispatch.available() == expected


def test_default_choice_is_the_best_available() -> None:
    result = import_backend(None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == dispatch.available()[0]


@pytest.mark.parametrize("value", ["avxvnni", "avx2", "scalar", "numpy", "auto", " Scalar "])
def test_environment_override(value: str) -> None:
    result = import_backend(value)
    if value.strip().lower() in ("avx2", "avxvnni") and value not in dispatch.available():
        assert result.returncode != 0 and f"RWKV_EDGE_KERNELS={value}" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    expected = dispatch.available()[0] if value == "auto" else value.strip().lower()
    assert result.stdout.strip() == expected


def test_unknown_override_fails_clearly() -> None:
    result = import_backend("sse9")
    assert result.returncode != 0
    assert "RWKV_EDGE_KERNELS='sse9' is not one of auto, avxvnni, avx2, scalar, numpy" in result.stderr


def test_package_names_follow_the_choice() -> None:
    assert kernels.backend == dispatch.CHOSEN.name
    assert kernels.features == dispatch.CHOSEN.features
    assert kernels.matvec is dispatch.CHOSEN.matvec and kernels.matmul is dispatch.CHOSEN.matmul


def test_load_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown kernel backend"):
        dispatch.load("gpu")


def test_c_blocks_are_ggml_blocks() -> None:
    for name, qtype in [
        ("q4_0", GGMLType.Q4_0),
        ("q4_1", GGMLType.Q4_1),
        ("q5_0", GGMLType.Q5_0),
        ("q5_1", GGMLType.Q5_1),
        ("q8_0", GGMLType.Q8_0),
    ]:
        assert ffi.sizeof(f"rke_block_{name}") == BLOCK_SIZES[qtype][1]
        assert getattr(lib, f"RKE_{name.upper()}") == qtype
    for name in ("F32", "F16", "BF16"):
        assert getattr(lib, f"RKE_{name}") == GGMLType[name]


def test_default_threads() -> None:
    n = kernels.default_threads()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_thread_pool_life_cycle() -> None:
    pool = ThreadPool(3)
    assert pool.n_threads == 3 and not pool.closed
    assert lib.rke_pool_threads(pool.handle()) == 3
    pool.close()
    pool.close()
    assert pool.closed
    with pytest.raises(ValueError, match="closed"):
        pool.handle()
    with ThreadPool() as default:
        assert default.n_threads == kernels.default_threads()
    assert default.closed


@pytest.mark.parametrize("n", [0, -1, 2.0, True, 5000])
def test_thread_pool_rejects_bad_counts(n: object) -> None:
    with pytest.raises(ValueError, match="n_threads"):
        ThreadPool(n)  # type: ignore[arg-type]

