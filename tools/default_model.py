"""The small model shipped inside the package, used when a command is given no model file."""

from __future__ import annotations

from importlib import resources

DEFAULT_MODEL_NAME = "tiny-rwkv7-834K.pth"


def default_model_path() -> str:
    """Path of the embedded default model: rwkv.cpp's tiny byte-level RWKV-7 (834K parameters, fp16)."""
    package = __name__.rsplit(".", 2)[0] + ".runtime.data"
    return str(resources.files(package) / DEFAULT_MODEL_NAME)
