"""Read PyTorch zip checkpoints (official BlinkDL `.pth`, HF `pytorch_model.bin`) without torch.

The archive's `data.pkl` is replayed by a restricted unpickler that knows only the few globals
`torch.save` writes for a plain state dict; every tensor becomes a zero-copy `np.memmap` view of
its `<root>/data/<key>` member, which torch stores uncompressed.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelFileError
from .file_map import map_file
from .ggml_types import GGMLType, RawTensor

PathArg = str | os.PathLike[str]

# Keys the rwkv pip package adds when it saves a transformed model (`convert_and_save_and_exit`).
_CONVERTED_KEYS = ("_strategy", "_version", "_rescale_layer")
# A state dict saved inside a training checkpoint, e.g. {"state_dict": {...}, "epoch": 3}.
_WRAPPER_KEYS = ("state_dict", "model", "module")
# A state dict's pickle takes a few hundred bytes per tensor; anything near this is something else.
_MAX_PICKLE_BYTES = 64 << 20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 skipped bytes, name length, extra length
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"

# storage class name -> (ggml type, little-endian numpy dtype of one stored element)
_STORAGE_TYPES: dict[str, tuple[GGMLType, np.dtype]] = {
    "FloatStorage": (GGMLType.F32, np.dtype("<f4")),
    "HalfStorage": (GGMLType.F16, np.dtype("<f2")),
    "BFloat16Storage": (GGMLType.BF16, np.dtype("<u2")),
}

# A broken archive (bad headers, unknown compression, odd sizes) surfaces as one of these.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    UnicodeDecodeError,
    OverflowError,
    ValueError,
)
# A corrupt pickle can fail in any of these ways before or while replaying opcodes.
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    ImportError,
    OverflowError,
    RecursionError,
    MemoryError,
    UnicodeDecodeError,
    struct.error,
)


@dataclass(frozen=True)
class _StorageType:
    """What `find_class` hands out for `torch.FloatStorage` & co."""

    name: str


@dataclass(frozen=True)
class _Storage:
    """A lazy handle on one `<root>/data/<key>` member: nothing is read while unpickling."""

    key: str
    qtype: GGMLType
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """What `_rebuild_tensor_v2` returns: a strided window on a storage, in elements."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _RestrictedUnpickler(pickle.Unpickler):
    """Replays a state-dict pickle; any global outside the allow-list aborts before it can run."""

    def __init__(self, data: bytes, path: PathArg) -> None:
        super().__init__(io.BytesIO(data))
        self._path = path
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            # an inert marker; persistent_load says which storage types can actually be read
            return _StorageType(name)
        raise ModelFileError(
            self._path,
            f"refusing pickle global '{module}.{name}' (a plain state dict of tensors never "
            "needs it; the file may be malicious)",
        )

    def persistent_load(self, pid: Any) -> _Storage:
        # torch writes ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ModelFileError(self._path, f"unexpected persistent id {pid!r:.80} in data.pkl")
        _, storage_type, key, _location, numel = pid
        known = isinstance(storage_type, _StorageType)
        if not (known and storage_type.name in _STORAGE_TYPES):
            shown = storage_type.name if known else repr(storage_type)[:80]
            raise ModelFileError(
                self._path,
                f"unsupported tensor storage {shown}; only float32, float16 and bfloat16 are read",
            )
        if not isinstance(key, str) or not _is_count(numel):
            raise ModelFileError(self._path, f"malformed storage reference {pid!r:.80}")
        qtype, dtype = _STORAGE_TYPES[storage_type.name]
        storage = _Storage(key, qtype, dtype, numel)
        previous = self._storages.setdefault(key, storage)
        if previous != storage:
            raise ModelFileError(self._path, f"storage '{key}' is declared twice, differently")
        return storage

    def _rebuild_tensor(
        self, storage: Any, offset: Any, shape: Any, stride: Any, *_ignored: Any
    ) -> _TensorRef:
        valid = (
            isinstance(storage, _Storage)
            and _is_count(offset)
            and isinstance(shape, tuple)
            and isinstance(stride, tuple)
            and len(shape) == len(stride)
            and all(_is_count(n) for n in shape + stride)
        )
        if not valid:
            raise ModelFileError(self._path, "malformed tensor record in data.pkl")
        return _TensorRef(storage, offset, shape, stride)

    def _rebuild_parameter(self, data: Any, *_ignored: Any) -> Any:
        return data


def read_pth(path: PathArg) -> dict[str, RawTensor]:
    """All tensors of a PyTorch zip checkpoint by name, as memory-mapped F32/F16/BF16 RawTensors.

    Strided tensors (a saved transpose, an expand) are the one exception: they are copied row-major.
    """
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise ModelFileError(path, _not_a_zip_problem(path, err)) from err
    with archive:
        root = _archive_root(archive, path)
        _check_byteorder(archive, root, path)
        state = _unpickle(_read_member(archive, f"{root}/data.pkl", path), path)
        refs = _state_dict(state, path)
        offsets = _storage_offsets(archive, root, refs.values(), path)
    file_map = map_file(path)  # (file_size,)
    return {
        name: _materialise(file_map, offsets[ref.storage.key], ref, name, path)
        for name, ref in refs.items()
    }


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _not_a_zip_problem(path: PathArg, err: Exception) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as read_err:
        return f"cannot read file ({read_err.strerror or read_err})"
    if head[:1] == b"\x80":
        return "legacy (pre-1.6) torch format is not supported; re-save it with torch.save"
    return f"not a PyTorch zip checkpoint, or truncated ({err})"


def _archive_root(archive: zipfile.ZipFile, path: PathArg) -> str:
    names = archive.namelist()
    roots = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise ModelFileError(path, f"expected one '<root>/data.pkl' in the zip, found {len(roots)}")
    return roots[0]


def _read_member(archive: zipfile.ZipFile, name: str, path: PathArg) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > _MAX_PICKLE_BYTES:
        raise ModelFileError(path, f"'{name}' is {info.file_size} bytes, too big for a state dict")
    try:
        return archive.read(info)
    except _ZIP_ERRORS as err:
        raise ModelFileError(path, f"cannot read '{name}' from the zip archive ({err})") from err


def _check_byteorder(archive: zipfile.ZipFile, root: str, path: PathArg) -> None:
    # Files from before torch 1.10 have no byteorder record and are little-endian.
    if f"{root}/byteorder" not in archive.namelist():
        return
    order = _read_member(archive, f"{root}/byteorder", path).strip()
    if order != b"little":
        raise ModelFileError(
            path, f"tensors are stored with byte order {order[:16]!r}; only little-endian is read"
        )


def _unpickle(data: bytes, path: PathArg) -> Any:
    try:
        return _RestrictedUnpickler(data, path).load()
    except ModelFileError:
        raise
    except _PICKLE_ERRORS as err:
        problem = f"data.pkl is not a readable pickle ({type(err).__name__}: {err})"
        raise ModelFileError(path, problem) from err


def _state_dict(state: Any, path: PathArg) -> dict[str, _TensorRef]:
    if not isinstance(state, dict):
        raise ModelFileError(path, f"checkpoint holds a {type(state).__name__}, not a dict")
    if not any(isinstance(v, _TensorRef) for v in state.values()):
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)]
        if len(wrapped) == 1:
            state = state[wrapped[0]]
    converted = [k for k in _CONVERTED_KEYS if k in state]
    if converted:
        raise ModelFileError(
            path,
            f"has key '{converted[0]}': it was converted by the rwkv pip package; "
            "use the original checkpoint",
        )
    for name, value in state.items():
        if not isinstance(name, str):
            raise ModelFileError(path, f"state dict key {name!r:.80} is not a string")
        if not isinstance(value, _TensorRef):
            raise ModelFileError(path, f"entry '{name}' is a {type(value).__name__}, not a tensor")
    if not state:
        raise ModelFileError(path, "checkpoint holds no tensors")
    return state


def _storage_offsets(
    archive: zipfile.ZipFile, root: str, refs: Iterable[_TensorRef], path: PathArg
) -> dict[str, int]:
    """File offset of the first byte of each storage used by `refs`, after checking its member."""
    file_size = os.path.getsize(path)
    offsets: dict[str, int] = {}
    with open(path, "rb") as f:
        for ref in refs:
            storage = ref.storage
            if storage.key in offsets:
                continue
            member = f"{root}/data/{storage.key}"
            try:
                info = archive.getinfo(member)
            except KeyError:
                problem = f"storage member '{member}' is missing from the archive"
                raise ModelFileError(path, problem) from None
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                problem = f"'{member}' is compressed or encrypted; torch.save stores it plain"
                raise ModelFileError(path, problem)
            need = storage.numel * storage.dtype.itemsize
            if info.file_size < need:
                raise ModelFileError(
                    path, f"'{member}' holds {info.file_size} bytes but its storage needs {need}"
                )
            f.seek(info.header_offset)
            header = f.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size:
                raise ModelFileError(path, f"local header of '{member}' is past the end of file")
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
            if signature != _LOCAL_HEADER_SIGNATURE:
                raise ModelFileError(path, f"bad local header for '{member}'")
            start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            if start + need > file_size:
                raise ModelFileError(path, f"'{member}' runs past the end of the file (truncated?)")
            offsets[storage.key] = start
    return offsets


def _materialise(
    file_map: np.ndarray, start: int, ref: _TensorRef, name: str, path: PathArg
) -> RawTensor:
    storage = ref.storage
    # (numel,) elements of the storage, typed
    elements = file_map[start : start + storage.numel * storage.dtype.itemsize].view(storage.dtype)
    count = math.prod(ref.shape)  # exact: a corrupt shape must not wrap around to 0
    if count == 0:
        return RawTensor(storage.qtype, ref.shape, np.zeros(ref.shape, dtype=storage.dtype))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if last >= storage.numel:
        problem = f"tensor '{name}' reaches element {last} of a storage of {storage.numel}"
        raise ModelFileError(path, problem)
    if _is_contiguous(ref.shape, ref.stride):
        data = elements[ref.offset : ref.offset + count].reshape(ref.shape)
    else:
        # Rare (rwkv.cpp-derived files hold transposed LoRAs); a copy keeps RawTensors row-major. A view
        # that repeats elements (stride 0, torch's expand) could ask for far more memory than the file holds.
        if count > storage.numel and count * storage.dtype.itemsize > os.path.getsize(path):
            problem = f"tensor '{name}' repeats {storage.numel} stored values as {count}, more than the file holds"
            raise ModelFileError(path, problem)
        itemsize = storage.dtype.itemsize
        strided: np.ndarray = np.lib.stride_tricks.as_strided(
            elements[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.stride),
            writeable=False,
        )
        data = np.ascontiguousarray(strided)
    return RawTensor(storage.qtype, ref.shape, data)


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True
