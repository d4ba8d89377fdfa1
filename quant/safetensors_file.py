"""Read Hugging Face `.safetensors` files (F32/F16/BF16) as memory-mapped RawTensors, by hand.

Layout: u64 little-endian header length N, then N bytes of JSON
`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`,
then the data; offsets count from the first byte after the header.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from .errors import ModelFileError
from .file_map import map_file
from .ggml_types import GGMLType, RawTensor

PathArg = str | os.PathLike[str]

# The safetensors library refuses headers above 100 MB; so do we.
_MAX_HEADER_BYTES = 100_000_000
_HEADER_LENGTH = struct.Struct("<Q")

# safetensors dtype -> (ggml type, little-endian numpy dtype of one stored element)
_DTYPES: dict[str, tuple[GGMLType, np.dtype]] = {
    "F32": (GGMLType.F32, np.dtype("<f4")),
    "F16": (GGMLType.F16, np.dtype("<f2")),
    "BF16": (GGMLType.BF16, np.dtype("<u2")),
}


def read_safetensors(path: PathArg) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """(tensors by name, the `__metadata__` strings) of one file; tensor data is not copied."""
    header_len, header = _read_header(path)
    data_start = _HEADER_LENGTH.size + header_len
    data_len = os.path.getsize(path) - data_start
    metadata = _metadata(header.pop("__metadata__", {}), path)
    entries = {name: _entry(name, value, data_len, path) for name, value in header.items()}
    if not entries:
        return {}, metadata
    file_map = map_file(path)  # (file_size,)
    tensors: dict[str, RawTensor] = {}
    for name, (qtype, dtype, shape, begin, end) in entries.items():
        data = file_map[data_start + begin : data_start + end].view(dtype).reshape(shape)
        tensors[name] = RawTensor(qtype, shape, data)
    return tensors, metadata


def _read_header(path: PathArg) -> tuple[int, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            prefix = f.read(_HEADER_LENGTH.size)
            if len(prefix) != _HEADER_LENGTH.size:
                problem = f"file is {len(prefix)} bytes, too short for a safetensors header"
                raise ModelFileError(path, problem)
            (header_len,) = _HEADER_LENGTH.unpack(prefix)
            available = os.fstat(f.fileno()).st_size - _HEADER_LENGTH.size
            if header_len > min(available, _MAX_HEADER_BYTES):
                problem = f"header length {header_len} exceeds the file or 100 MB (truncated?)"
                raise ModelFileError(path, problem)
            raw = f.read(header_len)
    except OSError as err:
        raise ModelFileError(path, f"cannot read file ({err.strerror or err})") from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ModelFileError(path, f"header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise ModelFileError(path, "header JSON is not an object")
    return header_len, header


def _metadata(value: Any, path: PathArg) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ModelFileError(path, "__metadata__ must map strings to strings")
    return value


def _entry(
    name: str, value: Any, data_len: int, path: PathArg
) -> tuple[GGMLType, np.dtype, tuple[int, ...], int, int]:
    if not isinstance(value, dict):
        raise ModelFileError(path, f"header entry '{name}' is not an object")
    dtype_name, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        problem = f"tensor '{name}' has dtype {dtype_name!r:.20}; only F32, F16 and BF16 are read"
        raise ModelFileError(path, problem)
    qtype, dtype = _DTYPES[dtype_name]
    if not (isinstance(shape, list) and all(_is_count(n) for n in shape)):
        raise ModelFileError(path, f"tensor '{name}' has a malformed shape {shape!r:.80}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
        raise ModelFileError(path, f"tensor '{name}' has malformed data_offsets {offsets!r:.80}")
    begin, end = offsets
    if not begin <= end <= data_len:
        problem = f"tensor '{name}' spans bytes {begin}..{end} of {data_len} (truncated?)"
        raise ModelFileError(path, problem)
    need = math.prod(shape) * dtype.itemsize
    if end - begin != need:
        problem = f"tensor '{name}' {dtype_name} {shape} needs {need} bytes, has {end - begin}"
        raise ModelFileError(path, problem)
    return qtype, dtype, tuple(shape), begin, end


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
