"""Read a GGUF file: metadata and memory-mapped tensor views, every size and offset validated first.

GGUF (ggml's file format, spec in ggml's docs/gguf.md): magic "GGUF", version 2 or 3, tensor and key-value
counts, typed key-values, tensor infos (name, ggml dims innermost first, type, offset), then the tensor
data, aligned to `general.alignment` (default 32). Nothing here trusts a count, a length or an offset until
it has been checked against the file's size, so a corrupt file gives one clear error, never a huge
allocation or a read past the end. Tensors come back zero-copy (np.memmap views).
"""

from __future__ import annotations

import operator
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from .errors import ModelFileError
from .file_map import map_file
from .ggml_types import BLOCK_SIZES, GGMLType, RawTensor

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# No real tensor dimension comes near this; a larger one is corruption, not a model.
MAX_DIM = 1 << 40

# GGUF value type id -> (struct format, size) for scalars; 8 = string, 9 = array.
_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file. `tensors` holds GGUF names; values are views into the file's memory map."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, RawTensor]
    alignment: int
    data_offset: int


# String arrays longer than this (vocabularies: 65,536 tokens would be ~5 MiB of Python strings, most of
# a model's memory beyond its weights) stay in the file and are decoded item by item when read.
LAZY_STRINGS = 1024


class GGUFStrings(Sequence[str]):
    """A GGUF string array read in place: item i is decoded (and checked as UTF-8) when accessed.

    `region` is the array's bytes in the file map (each string's u64 length, then its bytes); ends[i] is
    the offset in region just past string i. Compares equal to any sequence of the same strings."""

    def __init__(self, region: memoryview, ends: np.ndarray, path: str, what: str) -> None:
        self._region = region
        self._ends = ends  # (count,) int64
        self._path = path
        self._what = what

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{self._what}: index {index} out of range")
        end = int(self._ends[i])
        start = (int(self._ends[i - 1]) if i else 0) + 8
        try:
            return bytes(self._region[start:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(self._path, f"{self._what} item {i} is not valid UTF-8") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # like a list

    def __repr__(self) -> str:
        return f"GGUFStrings({len(self)} strings of {self._what})"


class _Cursor:
    """Bounds-checked little-endian reads from the mapped file."""

    def __init__(self, buf: np.ndarray, path: str) -> None:
        self.buf = buf
        self.mv = memoryview(buf)  # type: ignore[arg-type]
        self.pos = 0
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ModelFileError(self.path, f"file ends inside {what} (offset {self.pos}, {len(self.buf)} bytes)")

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        self.need(size, what)
        value = struct.unpack_from(fmt, self.mv, self.pos)[0]
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", 8, what))

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = bytes(self.mv[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(self.path, f"{what} is not valid UTF-8") from None

    def string_array(self, count: int, what: str) -> list[str] | GGUFStrings:
        """A string array: a list, or for a long one (a vocabulary) a GGUFStrings that decodes on access."""
        start = self.pos
        ends = self.string_ends(count, what)
        strings = GGUFStrings(self.mv[start : self.pos], ends - start, self.path, what)
        return strings if count > LAZY_STRINGS else list(strings)

    def string_ends(self, count: int, what: str) -> np.ndarray:
        """Skip `count` strings; the file offset just past each of them, (count,) int64."""
        ends = np.empty(count, np.int64)
        i = 0
        while i < count:
            # lengths read from 4 MiB copies, so a bogus count cannot make us copy the whole file at once
            window_end = min(len(self.buf), self.pos + (4 << 20))
            blob = bytes(self.mv[self.pos : window_end])
            pos, end, last_window = 0, len(blob), window_end == len(self.buf)
            length = _U64.unpack_from
            while i < count and pos + 8 <= end:
                n = length(blob, pos)[0]
                if n > end - pos - 8:
                    break
                pos += 8 + n
                ends[i] = self.pos + pos
                i += 1
            self.pos += pos
            if i < count and (last_window or pos == 0):
                if pos == 0 and not last_window:  # one string longer than a window: the general path
                    self.string(what)
                    ends[i] = self.pos
                    i += 1
                    continue
                raise ModelFileError(self.path, f"file ends inside {what} (offset {self.pos}, {len(self.buf)} bytes)")
        return ends

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            item_type = self.u32(what)
            count = self.u64(what)
            if item_type == _ARRAY:
                raise ModelFileError(self.path, f"{what}: nested arrays are not supported")
            if item_type in _SCALARS:
                fmt, size = _SCALARS[item_type]
                self.need(count * size, what)
                values = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=self.pos)
                self.pos += count * size
                return values.tolist()
            if item_type == _STRING:
                # Each string takes at least its 8-byte length, so a bogus count fails here, not in a loop.
                self.need(count * 8, what)
                return self.string_array(count, what)
            raise ModelFileError(self.path, f"{what}: unknown array item type {item_type}")
        raise ModelFileError(self.path, f"{what}: unknown value type {vtype}")


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size < 24:
            raise ModelFileError(path, f"file is too short ({size} bytes) to be GGUF")
        buf = map_file(path)
    except OSError as err:
        raise ModelFileError(path, err.strerror or str(err)) from None
    cur = _Cursor(buf, path)
    cur.need(4, "the header")
    if bytes(cur.mv[0:4]) != GGUF_MAGIC:
        raise ModelFileError(path, "not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.u32("the header")
    if version not in (2, 3):
        raise ModelFileError(path, f"unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors = cur.u64("the header")
    n_kv = cur.u64("the header")
    # Every key-value and tensor info takes more than 8 bytes: counts beyond that are corruption.
    if n_tensors > size // 8 or n_kv > size // 8:
        raise ModelFileError(path, f"header claims {n_tensors} tensors and {n_kv} metadata keys; file is corrupt")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.u32(f"metadata '{key}'")
        metadata[key] = cur.value(vtype, f"metadata '{key}'")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFileError(path, f"general.alignment {alignment!r} is not a power of two")

    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor info #{i}")
        n_dims = cur.u32(f"tensor '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFileError(path, f"tensor '{name}' has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        ne = [cur.u64(f"tensor '{name}'") for _ in range(n_dims)]  # ggml order, innermost first
        if any(d == 0 or d > MAX_DIM for d in ne):
            raise ModelFileError(path, f"tensor '{name}' has an absurd dimension {ne}")
        type_id = cur.u32(f"tensor '{name}'")
        offset = cur.u64(f"tensor '{name}'")
        infos.append((name, ne, type_id, offset))

    data_offset = -(-cur.pos // alignment) * alignment
    tensors: dict[str, RawTensor] = {}
    for name, ne, type_id, offset in infos:
        if name in tensors:
            raise ModelFileError(path, f"tensor '{name}' appears twice")
        tensors[name] = _tensor(buf, path, name, ne, type_id, data_offset + offset, offset, alignment)
    return GGUFFile(path, version, metadata, tensors, alignment, data_offset)


def _tensor(
    buf: np.ndarray, path: str, name: str, ne: list[int], type_id: int, start: int, offset: int, alignment: int
) -> RawTensor:
    try:
        qtype = GGMLType(type_id)
    except ValueError:
        return _foreign_tensor(buf, path, name, ne, type_id, start, offset, alignment)
    block, type_size = BLOCK_SIZES[qtype]
    if ne[0] % block:
        raise ModelFileError(path, f"tensor '{name}': row of {ne[0]} is not whole {qtype.name} blocks of {block}")
    if offset % alignment:
        raise ModelFileError(path, f"tensor '{name}' data offset {offset} is not {alignment}-byte aligned")
    shape = tuple(reversed(ne))  # numpy order
    n_rows = 1
    for d in ne[1:]:
        n_rows *= d
    row_bytes = ne[0] // block * type_size
    nbytes = n_rows * row_bytes
    if start + nbytes > len(buf):
        raise ModelFileError(path, f"tensor '{name}' data runs past the end of the file")
    raw = buf[start : start + nbytes]
    if qtype == GGMLType.F32:
        data = raw.view("<f4").reshape(shape)
    elif qtype == GGMLType.F16:
        data = raw.view("<f2").reshape(shape)
    elif qtype == GGMLType.BF16:
        data = raw.view("<u2").reshape(shape)
    else:
        data = raw.reshape(n_rows, row_bytes)
    return RawTensor(qtype, shape, data)


def _foreign_tensor(
    buf: np.ndarray, path: str, name: str, ne: list[int], type_id: int, start: int, offset: int, alignment: int
) -> RawTensor:
    """A ggml type we do not compute in (K-quants, IQ types from llama.cpp's quantizer): decoded to F32 once,
    at load, by gguf-py's numpy dequantizers. Costs memory, so our converter never writes these types."""
    import gguf

    try:
        gtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[gtype]
    except (ValueError, KeyError):
        raise ModelFileError(path, f"tensor '{name}' has unknown ggml type {type_id}") from None
    if ne[0] % block or offset % alignment:
        raise ModelFileError(path, f"tensor '{name}' ({gtype.name}) has a bad row size or offset")
    n_rows = int(np.prod(ne[1:], dtype=np.int64)) if len(ne) > 1 else 1
    nbytes = n_rows * (ne[0] // block * type_size)
    if start + nbytes > len(buf):
        raise ModelFileError(path, f"tensor '{name}' data runs past the end of the file")
    shape = tuple(reversed(ne))
    try:
        values = gguf.quants.dequantize(buf[start : start + nbytes].reshape(n_rows, -1), gtype)
    except NotImplementedError:
        raise ModelFileError(path, f"tensor '{name}' has ggml type {gtype.name}, which cannot be decoded") from None
    return RawTensor(GGMLType.F32, shape, np.ascontiguousarray(values, dtype=np.float32).reshape(shape))
