"""State files: one State in a small binary file that names the model it belongs to (docs/format.md).

    state.save("chat.rwkvstate")
    state = rwkv_edge.State.load("chat.rwkvstate", model)

Layout (little-endian): a 60-byte header (magic, format version, architecture, shapes, the weights
fingerprint), the float32 state buffer, then a blake2b-128 checksum of everything before it. Written to a
temporary file that is renamed over the target, so a crash never leaves half a file under the name.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from ..quant.errors import ModelFileError
from .fingerprint import FINGERPRINT_BYTES
from .state import State

if TYPE_CHECKING:
    from .model import Model

MAGIC = b"RWKVSTAT"
FORMAT_VERSION = 1
# magic, format version, architecture ("4", "5.2", ...), n_layer, n_embd, n_head, head_size, n_vocab,
# floats per layer, weights fingerprint
HEADER = struct.Struct(f"<8sI8sIIIIII{FINGERPRINT_BYTES}s")
CHECKSUM_BYTES = 16


def save_state(state: State, path: str | os.PathLike[str], fingerprint: str) -> None:
    """Write `state` to `path` atomically; `fingerprint` is the weights fingerprint of its model (hex)."""
    spec = state.spec
    header = HEADER.pack(
        MAGIC, FORMAT_VERSION, spec.version.encode("ascii"), spec.n_layer, spec.n_embd, spec.n_head,
        spec.head_size, spec.n_vocab, spec.state_floats_per_layer, bytes.fromhex(fingerprint),
    )
    data = np.ascontiguousarray(state.buffer, dtype="<f4").tobytes()
    checksum = _checksum(header, data)
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the permissions, as for any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(data)
            f.write(checksum)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state(path: str | os.PathLike[str], model: Model, *, check_weights: bool = True) -> State:
    """Read a state file for `model`; ModelFileError if it is corrupt, truncated or for another model.

    check_weights=False accepts a state saved with other weights of the same shapes (say, another
    quantization of the same model); the shapes are always checked.
    """
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER.size + CHECKSUM_BYTES:
            raise ModelFileError(path, f"truncated: {size} bytes, a state file has at least "
                                       f"{HEADER.size + CHECKSUM_BYTES}")
        header = f.read(HEADER.size)
        if len(header) != HEADER.size:
            raise ModelFileError(path, "the file changed while it was read")
        magic, fmt, arch, n_layer, n_embd, n_head, head_size, n_vocab, per_layer, fingerprint = HEADER.unpack(header)
        if magic != MAGIC:
            raise ModelFileError(path, "not an rwkv-edge state file (bad magic)")
        if fmt != FORMAT_VERSION:
            newer = " (written by a newer rwkv-edge)" if fmt > FORMAT_VERSION else ""
            raise ModelFileError(path, f"unsupported state file format version {fmt}{newer}")
        expected = HEADER.size + 4 * n_layer * per_layer + CHECKSUM_BYTES
        if size < expected:
            raise ModelFileError(path, f"truncated: {size} of {expected} bytes")
        if size > expected:
            raise ModelFileError(path, f"corrupt: {size - expected} unexpected bytes after the state")
        rest = f.read(expected - HEADER.size)  # sizes checked first, so a wrong big file is never read whole
    if len(rest) != expected - HEADER.size:
        raise ModelFileError(path, "the file changed while it was read")
    data, checksum = rest[:-CHECKSUM_BYTES], rest[-CHECKSUM_BYTES:]
    if _checksum(header, data) != checksum:
        raise ModelFileError(path, "corrupt: checksum mismatch")
    spec = model.spec
    theirs = _describe(arch.rstrip(b"\0").decode("ascii", "replace"), n_layer, n_embd, n_head, head_size, n_vocab)
    ours = _describe(spec.version, spec.n_layer, spec.n_embd, spec.n_head, spec.head_size, spec.n_vocab)
    if theirs != ours or per_layer != spec.state_floats_per_layer:
        raise ModelFileError(path, f"the state is for {theirs}, not for this {ours}")
    if check_weights and fingerprint.hex() != model.fingerprint:
        raise ModelFileError(path, f"the state was saved with other weights (fingerprint {fingerprint.hex()}, "
                                   f"this model {model.fingerprint}); check_weights=False loads it anyway")
    buffer = np.frombuffer(data, dtype="<f4").astype(np.float32)  # (L * per_layer,) a writable copy
    return State(spec, buffer, fingerprint=model.fingerprint)


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    if os.path.exists(path) and not os.path.isfile(path):
        raise ModelFileError(path, "is not a regular file")  # a FIFO would block
    try:
        return open(path, "rb")
    except OSError as err:
        raise ModelFileError(path, err.strerror or str(err)) from None


def _checksum(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=CHECKSUM_BYTES, person=b"rwkv-edge-s1")
    for part in parts:
        h.update(part)
    return h.digest()


def _describe(arch: str, n_layer: int, n_embd: int, n_head: int, head_size: int, n_vocab: int) -> str:
    heads = "" if arch == "4" else f", {n_head} heads of {head_size}"
    return f"RWKV-{arch} model ({n_layer} layers, n_embd {n_embd}{heads}, vocab {n_vocab})"
