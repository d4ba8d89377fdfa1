"""The one exception type for unreadable or unsupported model files."""

from __future__ import annotations

import os


class ModelFileError(ValueError):
    """A model file is truncated, corrupt, of an unknown kind or an unsupported variant.

    The message always names the file, so the CLI can print it as one line.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
