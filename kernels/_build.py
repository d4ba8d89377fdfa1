"""cffi build script (out-of-line API mode): compiles kernels/csrc into rwkv_edge.kernels._ext.

setup.py runs it through `cffi_modules` at install time; `python kernels/_build.py` builds the
extension in place, next to this file, for development.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = sorted(CSRC.glob("*.c"))
HEADERS = ("rke_kernels.h", "rke_model.h")  # the public API cffi sees, in dependency order
# Baseline ISA everywhere (the *_avx2.c files enable AVX2 for themselves); no -ffast-math, and no
# contraction into FMA, since the scalar and AVX2 paths must round exactly like the reference.
# -O3, not -O2: gcc 12 then vectorizes the per-token elementwise loops (norms, token shift, gates)
# behind run-time alias checks, which -O2's cost model refuses; each lane still does the scalar
# operations in the scalar order, so the bits do not change (v7 0.1B prompt +9 %, 1.5B decode -3 %).
COMPILE_ARGS = ["-O3", "-std=c11", "-ffp-contract=off"]


def _cdef(header: Path) -> str:
    """The header without preprocessor lines, which cffi's cdef cannot parse."""
    lines = header.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def make_builder(base: Path | None) -> cffi.FFI:
    """The FFI builder, with source paths relative to `base` (what setuptools wants: it builds
    from the project root) or absolute when `base` is None (cffi's own compile() changes
    directory)."""

    def path(p: Path) -> str:
        return str(p) if base is None else os.path.relpath(p, base)

    builder = cffi.FFI()
    for header in HEADERS:
        builder.cdef(_cdef(CSRC / header))
    builder.set_source(
        "rwkv_edge.kernels._ext",
        "\n".join(f'#include "{header}"' for header in HEADERS),
        sources=[path(p) for p in SOURCES],
        include_dirs=[path(CSRC)],
        extra_compile_args=COMPILE_ARGS,
        libraries=["pthread"],
        depends=[path(p) for p in sorted(CSRC.glob("*.h"))],
    )
    return builder


ffibuilder = make_builder(Path.cwd())


def build_in_place() -> Path:
    """Compile into a temporary directory and copy the module next to this file."""
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(make_builder(None).compile(tmpdir=tmp, verbose=True))
        for stale in HERE.glob("_ext.*"):  # e.g. pip install -e's _ext.abi3.so, which
            stale.unlink()  # a freshly built _ext.cpython-*.so would otherwise shadow
        target = HERE / built.name
        shutil.copyfile(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place(), file=sys.stderr)
