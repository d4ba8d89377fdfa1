"""Build hook: compiles the C kernels (kernels/_build.py, through cffi) unless
RWKV_EDGE_NO_KERNELS=1. Everything else about the package is in pyproject.toml."""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

HELP = (
    "rwkv-edge could not compile its C kernels: {err}\n"
    "  Install a C compiler and the Python headers (Debian/Ubuntu: apt install gcc python3-dev)\n"
    "  and retry, or install the slow numpy-only runtime: RWKV_EDGE_NO_KERNELS=1 pip install ..."
)


class BuildExt(build_ext):
    """build_ext that turns a compiler failure into one clear message (cffi wraps this class)."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as err:
            raise SystemExit(HELP.format(err=err)) from err


NO_KERNELS = os.environ.get("RWKV_EDGE_NO_KERNELS", "") == "1"

setup(
    cffi_modules=[] if NO_KERNELS else ["kernels/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt},
)
