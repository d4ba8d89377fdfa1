"""Open any supported model file by its content and return its tensors in official BlinkDL names.

Kinds are told apart by their first bytes, never by the file name: PyTorch zip (`.pth`), rwkv.cpp `ggmf`,
safetensors (a little-endian header length, then JSON) and GGUF.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from .errors import ModelFileError
from .ggml_types import GGMLType, RawTensor
from .spec import ModelSpec, detect_spec

RWKVCPP_MAGIC = 0x67676D66
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Checkpoint:
    """Tensors in official names and semantics, the spec detected from them, and where they came from."""

    path: str
    kind: str  # 'pth', 'rwkv.cpp', 'safetensors', 'gguf'
    tensors: dict[str, RawTensor]
    spec: ModelSpec
    metadata: dict[str, object] = field(default_factory=dict)
    # The official package folds ln0 into emb in the checkpoint's dtype for v4-v6 (§1, docs/rwkv-math.md):
    # the precision the embedding is rounded to after ln0, so that we match it; None for exact fp32.
    emb_fold_dtype: GGMLType | None = None


def sniff_kind(path: str) -> str:
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        raise ModelFileError(path, "is not a regular file")  # a FIFO or device would block or never end
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise ModelFileError(path, "is a directory, not a model file") from None
    except OSError as err:
        raise ModelFileError(path, err.strerror or str(err)) from None
    if len(head) < 8:
        raise ModelFileError(path, f"file is too short ({len(head)} bytes) to be a model")
    if head[:4] == b"PK\x03\x04":
        return "pth"
    if struct.unpack("<I", head[:4])[0] == RWKVCPP_MAGIC:
        return "rwkv.cpp"
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    header_len = struct.unpack("<Q", head[:8])[0]
    if head[8:9] == b"{" and 2 <= header_len <= 100_000_000:
        return "safetensors"
    raise ModelFileError(path, "unknown file kind (not a .pth, rwkv.cpp .bin, safetensors or GGUF file)")


def open_checkpoint(path: str | os.PathLike[str], *, group_norm_eps: float | None = None) -> Checkpoint:
    """Read a model file (memory-mapped where possible) and detect its version and shapes.

    `group_norm_eps` overrides the file's own setting (official 64e-5; rwkv.cpp's v5 files 1e-5).
    """
    path = os.fspath(path)
    kind = sniff_kind(path)
    eps_hint: float | None = None
    metadata: dict[str, object] = {}
    if kind == "pth":
        from .hf_names import hf_to_official
        from .pth_file import read_pth

        # An HF `pytorch_model.bin` is a torch zip too; official files pass through unchanged.
        tensors = hf_to_official(read_pth(path), path)
    elif kind == "rwkv.cpp":
        from .rwkvcpp_file import read_rwkvcpp

        binfile = read_rwkvcpp(path)
        tensors, eps_hint = binfile.tensors, binfile.group_norm_eps
        metadata["rwkv.cpp.data_type"] = binfile.data_type
    elif kind == "safetensors":
        from .hf_names import hf_to_official
        from .safetensors_file import read_safetensors

        raw, st_meta = read_safetensors(path)
        tensors = hf_to_official(raw, path)
        metadata.update(st_meta)
    else:
        from .gguf_model import read_gguf_model

        return read_gguf_model(path, group_norm_eps=group_norm_eps)
    spec = detect_spec(tensors, path, group_norm_eps=group_norm_eps if group_norm_eps is not None else eps_hint)
    fold = None
    if kind == "pth" and spec.version != "7" and tensors["emb.weight"].qtype in (GGMLType.F16, GGMLType.BF16):
        fold = tensors["emb.weight"].qtype
    return Checkpoint(path, kind, tensors, spec, metadata, fold)
