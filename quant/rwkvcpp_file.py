"""Reader for rwkv.cpp `.bin` model files, giving back the tensors of the official checkpoint.

rwkv.cpp's converter squeezes, transposes, concatenates and pre-exponentiates some tensors. This
module validates the file, memory-maps it and undoes each of those changes, so the runtime sees the
names, shapes and meanings of an official BlinkDL checkpoint.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .errors import ModelFileError
from .file_map import map_file
from .ggml_types import BLOCK_SIZES, GGMLType, RawTensor

MAGIC = 0x67676D66  # "ggmf"
FILE_VERSIONS = (100, 101)  # 100 predates the current quantized layouts: F32/F16 only
MAX_KEY_BYTES = 512  # real names are under 40 bytes; a longer one means a corrupt record

_HEADER = struct.Struct("<I5i")  # magic, version, n_vocab, n_embd, n_layer, data_type
_RECORD = struct.Struct("<3i")  # n_dims, key_len, data_type; then n_dims int32 dims, ne0 first

# rwkv.cpp's own type codes; 4..6 were formats it has since removed.
_TYPE_CODES: Mapping[int, GGMLType] = MappingProxyType(
    {0: GGMLType.F32, 1: GGMLType.F16, 2: GGMLType.Q4_0, 3: GGMLType.Q4_1,
     7: GGMLType.Q5_0, 8: GGMLType.Q5_1, 9: GGMLType.Q8_0}
)  # fmt: skip

# rwkv.cpp computes the v5 GroupNorm with eps 1e-5 (official: 64e-5); its v5 files need it.
_V5_GROUP_NORM_EPS = 1e-5

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class RwkvCppFile:
    """An rwkv.cpp model file with its tensors under official `.pth` names, shapes and meanings.

    `arch` uses the official numbering "4", "5.0", "5.2", "6", "7" (rwkv.cpp calls 5.0 "5.1").
    `group_norm_eps` is the GroupNorm eps the file was made to run with when it is not the official
    one (1e-5 for v5.x), else None. `data_type` is the header's main type; each tensor has its own.
    Tensors are zero-copy views into the file unless their values had to be recomputed (decays,
    transposed LoRA matrices: new float32 arrays).
    """

    n_vocab: int
    n_embd: int
    n_layer: int
    file_version: int
    data_type: GGMLType
    arch: str
    group_norm_eps: float | None
    tensors: dict[str, RawTensor]


def read_rwkvcpp(path: StrPath) -> RwkvCppFile:
    """Read and validate an rwkv.cpp `.bin` file.

    Any defect in the file raises a one-line ModelFileError; a missing file raises OSError.
    """
    size = os.stat(path).st_size
    if size < _HEADER.size:
        raise ModelFileError(path, f"not an rwkv.cpp model file ({size} bytes, less than a header)")
    file = map_file(path)  # (size,)
    magic, version, n_vocab, n_embd, n_layer, type_code = _HEADER.unpack_from(file, 0)
    if magic != MAGIC:
        raise ModelFileError(path, f"not an rwkv.cpp model file (magic 0x{magic:08x})")
    if version not in FILE_VERSIONS:
        raise ModelFileError(path, f"unsupported rwkv.cpp file version {version}")
    data_type = _ggml_type(path, type_code, version)
    if min(n_vocab, n_embd, n_layer) <= 0:
        counts = f"n_vocab {n_vocab}, n_embd {n_embd}, n_layer {n_layer}"
        raise ModelFileError(path, f"bad header: {counts}")

    stored = _read_tensors(path, file, version)
    _check_header(path, stored, n_vocab, n_embd, n_layer)
    arch = _detect_arch(stored)
    _check_complete(path, stored, arch, n_layer)
    inverses = _INVERSES[arch]
    tensors: dict[str, RawTensor] = {}
    for name, raw in stored.items():
        prefix, suffix = _split_block_name(name)
        inverse = inverses.get(suffix, _unchanged) if prefix else _unchanged
        for official_suffix, tensor in inverse(_Stored(path, name, suffix, raw)).items():
            tensors[prefix + official_suffix] = tensor
    return RwkvCppFile(
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        file_version=version,
        data_type=data_type,
        arch=arch,
        group_norm_eps=_V5_GROUP_NORM_EPS if arch.startswith("5") else None,
        tensors=tensors,
    )


# -------------------------------------------------------------------------------------------------
# Tensor records, in file order and file layout


def _ggml_type(path: StrPath, code: int, version: int) -> GGMLType:
    if code not in _TYPE_CODES:
        raise ModelFileError(path, f"unsupported rwkv.cpp data type {code}")
    qtype = _TYPE_CODES[code]
    if version == 100 and qtype not in (GGMLType.F32, GGMLType.F16):
        raise ModelFileError(path, f"file version 100 cannot hold {qtype.name} data")
    return qtype


def _read_tensors(path: StrPath, file: np.ndarray, version: int) -> dict[str, RawTensor]:
    """Every record as a RawTensor viewing `file` (size,) uint8, numpy shape = dims reversed."""
    size = file.shape[0]
    tensors: dict[str, RawTensor] = {}
    offset = _HEADER.size
    while offset < size:
        where = f"tensor record at byte {offset}"
        if offset + _RECORD.size > size:
            raise ModelFileError(path, f"truncated {where}: the file ends inside its header")
        n_dims, key_len, code = _RECORD.unpack_from(file, offset)
        offset += _RECORD.size
        if not 1 <= n_dims <= 3:
            raise ModelFileError(path, f"bad {where}: {n_dims} dimensions (expected 1 to 3)")
        if not 1 <= key_len <= MAX_KEY_BYTES:
            raise ModelFileError(path, f"bad {where}: name length {key_len}")
        qtype = _ggml_type(path, code, version)
        if offset + 4 * n_dims + key_len > size:
            raise ModelFileError(path, f"truncated {where}: the file ends inside its dims or name")
        dims = struct.unpack_from(f"<{n_dims}i", file, offset)
        offset += 4 * n_dims
        try:
            name = bytes(file[offset : offset + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(path, f"bad {where}: the tensor name is not UTF-8") from None
        offset += key_len

        shape = tuple(reversed(dims))
        if min(shape) <= 0:
            raise ModelFileError(path, f"bad tensor {name!r}: dims {list(dims)} must be positive")
        block, type_size = BLOCK_SIZES[qtype]
        if shape[-1] % block:
            raise ModelFileError(path, f"bad tensor {name!r}: {qtype.name} rows cut a block")
        nbytes = _n_rows(shape) * (shape[-1] // block) * type_size  # Python ints: cannot overflow
        if offset + nbytes > size:
            raise ModelFileError(
                path, f"truncated tensor {name!r}: {nbytes} bytes at {offset}, file ends at {size}"
            )
        if name in tensors:
            raise ModelFileError(path, f"tensor {name!r} appears twice")
        tensors[name] = RawTensor(qtype, shape, _view(file, qtype, shape, offset, nbytes))
        offset += nbytes
    return tensors


def _view(
    file: np.ndarray, qtype: GGMLType, shape: tuple[int, ...], offset: int, nbytes: int
) -> np.ndarray:
    """Zero-copy view of one tensor's data, laid out as RawTensor says (possibly unaligned)."""
    if qtype == GGMLType.F32:
        return np.frombuffer(file, dtype="<f4", count=nbytes // 4, offset=offset).reshape(shape)
    if qtype == GGMLType.F16:
        return np.frombuffer(file, dtype="<f2", count=nbytes // 2, offset=offset).reshape(shape)
    raw = np.frombuffer(file, dtype=np.uint8, count=nbytes, offset=offset)
    return raw.reshape(_n_rows(shape), -1)  # (rows, row_nbytes)


def _n_rows(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1])


# -------------------------------------------------------------------------------------------------
# Whole-file checks and architecture


_BLOCK_NAME = re.compile(r"(blocks\.\d+\.)(.+)")
_GLOBAL = ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias",
           "ln_out.weight", "ln_out.bias", "head.weight")  # fmt: skip
_COMMON = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
           "att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
           "ffn.key.weight", "ffn.value.weight")  # fmt: skip
_V4_V5 = ("att.time_decay", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r",
          "ffn.time_mix_k", "ffn.time_mix_r", "ffn.receptance.weight")  # fmt: skip
_LN_X = ("att.ln_x.weight", "att.ln_x.bias")

# Per-layer tensors rwkv.cpp needs, by architecture (+ v0, v1, v2 in v7 layers >= 1).
_LAYER: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "4": _COMMON + _V4_V5 + ("att.time_first",),
    "5.0": _COMMON + _V4_V5 + _LN_X + ("att.time_first",),
    "5.2": _COMMON + _V4_V5 + _LN_X + ("att.time_faaaa", "att.time_mix_g", "att.gate.weight"),
    "6": _COMMON + _LN_X + (
        "att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r",
        "att.time_maa_g", "att.time_maa_w1", "att.time_maa_w2", "att.time_decay", "att.time_faaaa",
        "att.time_decay_w1", "att.time_decay_w2", "att.gate.weight",
        "ffn.time_maa_k", "ffn.time_maa_r", "ffn.receptance.weight"),
    "7": _COMMON + _LN_X + (
        "att.x_rwkvag", "att.w0", "att.w1", "att.w2", "att.a0", "att.a1", "att.a2",
        "att.g1", "att.g2", "att.k_k", "att.k_a", "att.r_k", "ffn.x_k"),
})  # fmt: skip
_V7_VALUE_RESIDUAL = ("att.v0", "att.v1", "att.v2")  # unused in layer 0, which rwkv.cpp omits


def _split_block_name(name: str) -> tuple[str, str]:
    """'blocks.3.att.key.weight' -> ('blocks.3.', 'att.key.weight'); other names -> ('', name)."""
    match = _BLOCK_NAME.fullmatch(name)
    return (match.group(1), match.group(2)) if match else ("", name)


def _check_header(
    path: StrPath, tensors: dict[str, RawTensor], n_vocab: int, n_embd: int, n_layer: int
) -> None:
    for name in ("emb.weight", "head.weight"):
        if name not in tensors:
            raise ModelFileError(path, f"missing tensor {name!r}")
        if tensors[name].shape != (n_vocab, n_embd):
            shape = list(tensors[name].shape)
            raise ModelFileError(path, f"{name} is {shape}, the header says [{n_vocab}, {n_embd}]")
    # Checked before anything loops over n_layer, so a corrupt count cannot run away.
    indices = [int(name.split(".")[1]) for name in tensors if _BLOCK_NAME.fullmatch(name)]
    n_blocks = 1 + max(indices, default=-1)
    if n_blocks != n_layer:
        raise ModelFileError(path, f"the header says {n_layer} layers, the tensors have {n_blocks}")


def _detect_arch(tensors: dict[str, RawTensor]) -> str:
    """The architecture, from tensor names, as rwkv.cpp decides it."""
    if "blocks.0.att.x_rwkvag" in tensors or "blocks.0.att.r_k" in tensors:
        return "7"
    if "blocks.0.att.time_maa_x" in tensors:
        return "6"
    if "blocks.0.att.ln_x.weight" in tensors:
        return "5.2" if "blocks.0.att.gate.weight" in tensors else "5.0"
    return "4"


def _check_complete(path: StrPath, tensors: dict[str, RawTensor], arch: str, n_layer: int) -> None:
    needed = list(_GLOBAL)
    for i in range(n_layer):
        extra = _V7_VALUE_RESIDUAL if arch == "7" and i > 0 else ()
        needed += [f"blocks.{i}.{suffix}" for suffix in _LAYER[arch] + extra]
    missing = [name for name in needed if name not in tensors]
    if missing:
        problem = f"RWKV {arch} model lacks {missing[0]!r} ({len(missing)} missing)"
        raise ModelFileError(path, problem)


# -------------------------------------------------------------------------------------------------
# Inverse transforms: file layout -> official `.pth` layout (rwkv-math.md section 2.2)


@dataclass(frozen=True)
class _Stored:
    """A tensor as stored, with what an error message needs."""

    path: StrPath
    name: str
    suffix: str  # the name after "blocks.N."
    raw: RawTensor

    def require(self, ok: bool, expected: str) -> None:
        if not ok:
            shape = list(self.raw.shape)
            raise ModelFileError(self.path, f"tensor {self.name!r} is {shape}, expected {expected}")

    def values(self, allowed: Callable[[np.ndarray], np.ndarray], what: str) -> np.ndarray:
        """The stored values in float64, checked to lie in the range of rwkv.cpp's transform."""
        x = self.raw.to_f32().astype(np.float64)
        if not np.all(allowed(x)):
            raise ModelFileError(self.path, f"tensor {self.name!r} holds values outside {what}")
        return x


_Inverse = Callable[[_Stored], dict[str, RawTensor]]


def _f32(values: np.ndarray) -> RawTensor:
    return RawTensor.from_array(np.ascontiguousarray(values, dtype=np.float32))


def _reshaped(raw: RawTensor, shape: tuple[int, ...]) -> RawTensor:
    """Same values in a new shape: zero-copy unless that cuts quantized blocks (new last axis)."""
    if BLOCK_SIZES[raw.qtype][0] == 1:
        return RawTensor(raw.qtype, shape, raw.data.reshape(shape))
    if shape[-1] != raw.shape[-1]:
        return _f32(raw.to_f32().reshape(shape))
    return RawTensor(raw.qtype, shape, raw.data.reshape(_n_rows(shape), -1))


def _transposed(raw: RawTensor, axes: tuple[int, ...]) -> RawTensor:
    """Axes permuted, contiguous; quantized blocks cannot be transposed, so those become F32."""
    if raw.qtype in (GGMLType.F32, GGMLType.F16):
        return RawTensor.from_array(np.ascontiguousarray(raw.data.transpose(axes)))
    return _f32(raw.to_f32().transpose(axes))


def _unchanged(t: _Stored) -> dict[str, RawTensor]:
    return {t.suffix: t.raw}


def _vector(t: _Stored) -> dict[str, RawTensor]:
    """A squeezed per-channel vector [C] -> [1, 1, C]."""
    return {t.suffix: _reshaped(t.raw, (1, 1, math.prod(t.raw.shape)))}


def _lora(t: _Stored) -> dict[str, RawTensor]:
    """A LoRA matrix stored [out, in] -> the official [in, out]."""
    t.require(len(t.raw.shape) == 2, "a matrix")
    return {t.suffix: _transposed(t.raw, (1, 0))}


def _per_head(t: _Stored) -> dict[str, RawTensor]:
    """time_faaaa [H, N, 1] -> [H, N]."""
    t.require(len(t.raw.shape) == 3 and t.raw.shape[2] == 1, "[H, N, 1]")
    return {t.suffix: _reshaped(t.raw, t.raw.shape[:2])}


def _v4_time_decay(t: _Stored) -> dict[str, RawTensor]:
    """Stored w = -exp(td) [C] -> td = log(-w)."""
    t.require(len(t.raw.shape) == 1, "[C]")
    w = t.values(lambda w: w <= 0, "-exp(x)'s range")
    with np.errstate(divide="ignore"):  # w = 0 underflowed from a very negative td; -inf is exact
        return {t.suffix: _f32(np.log(-w))}


def _v5_time_decay(t: _Stored, shape: tuple[int, ...]) -> dict[str, RawTensor]:
    """Stored w = exp(-exp(td)) -> td = log(-log(w)), in float64 (ill-conditioned near w = 1)."""
    w = t.values(lambda w: (w >= 0) & (w <= 1), "exp(-exp(x))'s range [0, 1]")
    # w of exactly 0 or 1 came from a saturated exp; +-inf gives it back exactly
    with np.errstate(divide="ignore"):
        return {t.suffix: _f32(np.log(-np.log(w)).reshape(shape))}


def _v50_time_decay(t: _Stored) -> dict[str, RawTensor]:
    """[H, 1, 1] -> [H]."""
    t.require(len(t.raw.shape) == 3 and t.raw.shape[1:] == (1, 1), "[H, 1, 1]")
    return _v5_time_decay(t, t.raw.shape[:1])


def _v52_time_decay(t: _Stored) -> dict[str, RawTensor]:
    """[H, N, 1] -> [H, N]."""
    t.require(len(t.raw.shape) == 3 and t.raw.shape[2] == 1, "[H, N, 1]")
    return _v5_time_decay(t, t.raw.shape[:2])


def _v50_time_first(t: _Stored) -> dict[str, RawTensor]:
    """Stored u = exp(tf) [H, 1, 1] -> tf = log(u) [H]."""
    t.require(len(t.raw.shape) == 3 and t.raw.shape[1:] == (1, 1), "[H, 1, 1]")
    u = t.values(lambda u: u >= 0, "exp(x)'s range")
    with np.errstate(divide="ignore"):
        return {t.suffix: _f32(np.log(u).reshape(t.raw.shape[:1]))}


def _v6_time_decay(t: _Stored) -> dict[str, RawTensor]:
    """Stored as is in [H, N, 1] -> [1, 1, C]."""
    t.require(len(t.raw.shape) == 3 and t.raw.shape[2] == 1, "[H, N, 1]")
    return _vector(t)


def _v6_time_maa_w2(t: _Stored) -> dict[str, RawTensor]:
    """[5, C, D] -> [5, D, C]."""
    t.require(len(t.raw.shape) == 3, "[5, C, D]")
    return {t.suffix: _transposed(t.raw, (0, 2, 1))}


def _v7_x_rwkvag(t: _Stored) -> dict[str, RawTensor]:
    """The six token-shift mixes [6, 1, C] -> att.x_r, x_w, x_k, x_v, x_a, x_g ([1, 1, C])."""
    shape = t.raw.shape
    t.require(len(shape) == 3 and shape[:2] == (6, 1), "[6, 1, C]")
    # Slicing the first axis is zero-copy for every type: quantized data has one block row per mix.
    return {f"att.x_{letter}": RawTensor(t.raw.qtype, (1, 1, shape[2]), t.raw.data[i : i + 1])
            for i, letter in enumerate("rwkvag")}  # fmt: skip


def _v7_r_k(t: _Stored) -> dict[str, RawTensor]:
    t.require(len(t.raw.shape) == 2, "[H, N]")
    return _unchanged(t)


_V4_V5_MIXES: Mapping[str, _Inverse] = MappingProxyType(dict.fromkeys(
    ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_mix_g",
     "ffn.time_mix_k", "ffn.time_mix_r"), _vector))  # fmt: skip

# Per architecture: block tensor suffix -> inverse of rwkv.cpp's converter. Others are unchanged.
_INVERSES: Mapping[str, Mapping[str, _Inverse]] = MappingProxyType({
    "4": MappingProxyType({**_V4_V5_MIXES, "att.time_decay": _v4_time_decay}),
    "5.0": MappingProxyType({**_V4_V5_MIXES,
                             "att.time_decay": _v50_time_decay, "att.time_first": _v50_time_first}),
    "5.2": MappingProxyType({**_V4_V5_MIXES,
                             "att.time_decay": _v52_time_decay, "att.time_faaaa": _per_head}),
    "6": MappingProxyType({
        **dict.fromkeys(("att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v",
                         "att.time_maa_r", "att.time_maa_g", "ffn.time_maa_k", "ffn.time_maa_r"),
                        _vector),
        **dict.fromkeys(("att.time_maa_w1", "att.time_decay_w1", "att.time_decay_w2"), _lora),
        "att.time_maa_w2": _v6_time_maa_w2,
        "att.time_decay": _v6_time_decay,
        "att.time_faaaa": _per_head,
    }),
    "7": MappingProxyType({
        **dict.fromkeys(("att.w0", "att.a0", "att.v0", "att.k_k", "att.k_a", "ffn.x_k"), _vector),
        **dict.fromkeys((f"att.{x}{i}" for x in "wavg" for i in (1, 2)), _lora),
        "att.x_rwkvag": _v7_x_rwkvag,
        "att.r_k": _v7_r_k,
    }),
})  # fmt: skip
