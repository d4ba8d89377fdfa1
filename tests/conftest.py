"""Shared test setup: fixture paths (a missing fixture fails, it never skips) and tests/ on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
sys.path.insert(0, str(TESTS))

REFERENCE_MODELS = ["4v0", "5v1", "5v2", "6v0", "7v0"]
RWKVCPP_ARCHS = {"4v0": "660K", "5v1": "730K", "5v2": "730K", "6v0": "3m", "7v0": "834K"}


def fixture_path(*parts: str) -> Path:
    path = FIXTURES.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"missing test fixture {path}")
    return path


def rwkvcpp_path(arch: str, fmt: str) -> Path:
    return fixture_path("rwkv-cpp-tiny", f"tiny-rwkv-{arch}-{RWKVCPP_ARCHS[arch]}-{fmt}.bin")
