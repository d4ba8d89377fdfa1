"""quant.rwkvcpp_file: rwkv.cpp `.bin` files mapped back to the official `.pth` tensors.

Truth comes from the official-format fixtures (`tests/fixtures/reference/tiny-*.pth`, read with
torch), from rwkv.cpp's converter rules re-applied here, and from gguf-py's quantizer.
"""

from __future__ import annotations

import math
import mmap
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rwkv_edge.quant.errors import ModelFileError
from rwkv_edge.quant.ggml_types import GGMLType, RawTensor
from rwkv_edge.quant.rwkvcpp_file import RwkvCppFile, read_rwkvcpp

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "rwkv-cpp-tiny"
REFERENCE = FIXTURES / "reference"

# version -> (file stem, arch, n_embd, n_layer); every model has a byte-level vocabulary of 256
MODELS = {
    "4v0": ("tiny-rwkv-4v0-660K", "4", 128, 4),
    "5v1": ("tiny-rwkv-5v1-730K", "5.0", 64, 12),
    "5v2": ("tiny-rwkv-5v2-730K", "5.2", 64, 12),
    "6v0": ("tiny-rwkv-6v0-3m", "6", 128, 12),
    "7v0": ("tiny-rwkv-7v0-834K", "7", 64, 12),
}
KINDS = {"FP32": GGMLType.F32, "FP16": GGMLType.F16, "Q5_0": GGMLType.Q5_0, "Q5_1": GGMLType.Q5_1}
FILES = [(v, kind) for v in MODELS for kind in KINDS if v != "6v0" or kind.startswith("Q")]
CODES = {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q4_0: 2, GGMLType.Q4_1: 3,
         GGMLType.Q5_0: 7, GGMLType.Q5_1: 8, GGMLType.Q8_0: 9}  # fmt: skip
MAGIC = 0x67676D66

# Tensors rwkv.cpp stores transposed and may quantize: their blocks run along the official axis 0.
TRANSPOSED_V6 = ("att.time_maa_w1", "att.time_decay_w1", "att.time_decay_w2")


def bin_path(version: str, kind: str) -> Path:
    return TINY / f"{MODELS[version][0]}-{kind}.bin"


@cache
def pth(version: str) -> dict[str, torch.Tensor]:
    return torch.load(REFERENCE / f"tiny-{version}.pth", weights_only=True, map_location="cpu")


@cache
def model(version: str, kind: str) -> RwkvCppFile:
    return read_rwkvcpp(bin_path(version, kind))


def f32(t: RawTensor) -> torch.Tensor:
    return torch.from_numpy(np.array(t.to_f32()))


def is_file_view(a: np.ndarray) -> bool:
    """True when `a` is a read-only view whose buffer chain ends in a memory map."""
    base: object = a
    while isinstance(base, np.ndarray):
        if base.flags.owndata:
            return False
        base = base.base
    return isinstance(base, mmap.mmap) and not a.flags.writeable


# -------------------------------------------------------------------------------------------------
# An independent scanner and writer for the format (test scaffolding, not the code under test)


@dataclass(frozen=True)
class Record:
    name: str
    start: int  # offset of n_dims
    dims_at: int
    key_at: int
    data_at: int
    end: int
    dims: tuple[int, ...]  # ggml order


def scan(data: bytes) -> list[Record]:
    sizes = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 7: (32, 22), 8: (32, 24), 9: (32, 34)}
    records, at = [], 24
    while at < len(data):
        n_dims, key_len, code = struct.unpack_from("<3i", data, at)
        dims = struct.unpack_from(f"<{n_dims}i", data, at + 12)
        key_at = at + 12 + 4 * n_dims
        block, size = sizes[code]
        end = key_at + key_len + math.prod(dims) // block * size
        name = data[key_at : key_at + key_len].decode()
        records.append(Record(name, at, at + 12, key_at, key_at + key_len, end, dims))
        at = end
    assert at == len(data)
    return records


def write_bin(path: Path, header: tuple[int, ...], records: list) -> Path:
    """header: version, n_vocab, n_embd, n_layer, data_type. records: name, code, shape, data."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I5i", MAGIC, *header))
        for name, code, shape, data in records:
            key = name.encode()
            f.write(struct.pack(f"<3i{len(shape)}i", len(shape), len(key), code, *reversed(shape)))
            f.write(key + data)
    return path


def convert(sd: dict[str, torch.Tensor], pick: Callable[[str, np.ndarray], GGMLType]) -> list:
    """rwkv.cpp's converter (convert_pytorch_to_ggml.py) for v4 and v7, with a type per tensor."""
    is_v7 = "blocks.0.att.k_k" in sd
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in sd.items():
        x = tensor.float().numpy()
        if is_v7 and ".att.x_" in name:  # concatenated in key order: r, w, k, v, a, g
            joined = name.rsplit(".", 1)[0] + ".x_rwkvag"
            arrays[joined] = np.concatenate([arrays[joined], x]) if joined in arrays else x
            continue
        if ".time_" in name:
            x = x.squeeze()
        if not is_v7 and name.endswith(".time_decay"):
            x = -np.exp(x.astype(np.float64)).astype(np.float32)
        if is_v7 and name.split(".")[-1] in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
            x = np.ascontiguousarray(x.T)
        arrays[name] = x
    records = []
    for name, x in arrays.items():
        qtype = pick(name, x)
        if qtype == GGMLType.F32:
            data = x.astype("<f4").tobytes()
        else:
            data = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qtype))).tobytes()
        records.append((name, CODES[qtype], x.shape, data))
    return records


# -------------------------------------------------------------------------------------------------
# Every fixture loads, under the official names and shapes


@pytest.mark.parametrize(("version", "kind"), FILES)
def test_fixture_loads_with_official_names_and_shapes(version: str, kind: str) -> None:
    _, arch, n_embd, n_layer = MODELS[version]
    m = model(version, kind)
    assert (m.n_vocab, m.n_embd, m.n_layer, m.arch) == (256, n_embd, n_layer, arch)
    assert m.file_version == (100 if version == "4v0" and kind in ("FP32", "FP16") else 101)
    assert m.data_type == KINDS[kind]
    assert m.group_norm_eps == (1e-5 if arch.startswith("5") else None)
    reference = pth(version)
    # rwkv.cpp's converter keeps the .pth key order (x_rwkvag expands in place to x_r ... x_g)
    assert list(m.tensors) == list(reference)
    for name, t in m.tensors.items():
        assert t.shape == tuple(reference[name].shape), name
        assert t.qtype in (GGMLType.F32, GGMLType.F16, KINDS[kind]), name
        if t.qtype in (GGMLType.F32, GGMLType.F16):
            dtype = {GGMLType.F32: np.float32, GGMLType.F16: np.float16}[t.qtype]
            assert t.data.shape == t.shape and t.data.dtype == dtype, name
        else:  # stays quantized: zero-copy block rows of the official [out, in] matrix
            row_nbytes = t.shape[-1] // 32 * {GGMLType.Q5_0: 22, GGMLType.Q5_1: 24}[t.qtype]
            assert t.data.dtype == np.uint8, name
            assert t.data.shape == (math.prod(t.shape[:-1]), row_nbytes), name
            assert is_file_view(t.data), name


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "7v0"])
def test_fp32_file_equals_pth(version: str) -> None:
    """Mapped back and rounded to the .pth dtype, every tensor is bit-identical to the .pth.

    This includes the log/exp inverses (computed in float64): for the fp32 5v1 .pth they come back
    bit-identical in float32 too.
    """
    m, reference = model(version, "FP32"), pth(version)
    for name, expected in reference.items():
        assert torch.equal(f32(m.tensors[name]).to(expected.dtype), expected), name
    # Untransformed tensors are zero-copy views of the file.
    assert is_file_view(m.tensors["emb.weight"].data)
    assert is_file_view(m.tensors["blocks.0.ln1.weight"].data)


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2"])
def test_decay_inverses_round_trip_to_the_stored_bits(version: str) -> None:
    """rwkv.cpp's transform of our decays (float64, rounded to f32) gives the stored bits back."""
    raw = bin_path(version, "FP32").read_bytes()
    m = model(version, "FP32")
    checked = 0
    for r in scan(raw):
        stored = np.frombuffer(raw, "<f4", math.prod(r.dims), r.data_at)
        ours = m.tensors[r.name].to_f32().astype(np.float64)
        if r.name.endswith("att.time_decay"):
            recomputed = -np.exp(ours) if version == "4v0" else np.exp(-np.exp(ours))
        elif r.name.endswith("att.time_first") and version == "5v1":
            recomputed = np.exp(ours)
        else:
            continue
        np.testing.assert_array_equal(recomputed.astype(np.float32).ravel(), stored, err_msg=r.name)
        checked += 1
    assert checked == MODELS[version][3] * (2 if version == "5v1" else 1)


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "7v0"])
def test_fp16_file_is_the_fp32_file_rounded(version: str) -> None:
    fp16, fp32, reference = model(version, "FP16"), model(version, "FP32"), pth(version)
    n_f16 = 0
    for name, t in fp16.tensors.items():
        exact = f32(fp32.tensors[name])
        if t.qtype == GGMLType.F16:
            n_f16 += 1
            assert t.data.ndim == 2 and ".time_" not in name, name  # only matrices are fp16
            assert torch.equal(f32(t), exact.half().float()), name
        else:
            assert torch.equal(f32(t), exact), name
        # Against the .pth directly: fp16 rounding (2^-11 relative, 2^-25 absolute in the
        # subnormal range) plus the .pth's own rounding of the same fp32 value.
        pth_eps = {torch.float32: 0, torch.float16: 2**-11, torch.bfloat16: 2**-8}
        tolerance = 2**-11 + pth_eps[reference[name].dtype]
        torch.testing.assert_close(f32(t), reference[name].float(), rtol=tolerance, atol=2**-24)
    assert n_f16 > 0


def _block_bound(qtype: GGMLType, x: np.ndarray) -> np.ndarray:
    """The largest |dequantized - x| of ggml's reference quantizer, for (n_blocks, 32) blocks x.

    Q5_0: d = max/-16 and -max maps to the clamped code 31, so up to one step |d| = amax/16; Q5_1:
    half a step d = (max - min)/31. Plus fp16 rounding of d (2^-11 relative, 2^-25 absolute for
    subnormals such as the 4v0 FFN weights of ~3e-7) times |q| <= 16 or 31, and of m = min.
    """
    amax = np.abs(x).max(axis=1, keepdims=True)
    if qtype == GGMLType.Q5_0:
        return amax / 16 * (1 + 16 * 2**-11) + 16 * 2**-25
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    return (hi - lo) / 31 * (0.5 + 31 * 2**-11) + np.abs(lo) * 2**-11 + 32 * 2**-25


def _as_stored(name: str, values: np.ndarray) -> np.ndarray:
    """Values in the file's orientation, where the 32-element blocks run along the last axis."""
    return values.T if name.endswith(TRANSPOSED_V6) else values


@pytest.mark.parametrize(
    ("version", "kind"), [f for f in FILES if f[1][0] == "Q" and f[0] != "6v0"]
)
def test_quantized_file_is_close_to_fp32_file(version: str, kind: str) -> None:
    """Quantized tensors are within the format's error bound of the FP32 file; the rest identical.

    Measured: the worst |error| / bound is 0.976 to 0.995 over these files, so the bound is tight.
    """
    quantized, exact = model(version, kind), model(version, "FP32")
    n_quantized = 0
    for name, t in quantized.tensors.items():
        x = exact.tensors[name].to_f32()
        if t.qtype == GGMLType.F32:
            assert np.array_equal(t.to_f32(), x), name
            continue
        n_quantized += 1
        assert t.qtype == KINDS[kind] and name not in ("emb.weight", "head.weight")
        blocks = x.astype(np.float64).reshape(-1, 32)
        error = np.abs(t.to_f32().astype(np.float64).reshape(-1, 32) - blocks)
        assert np.all(error <= _block_bound(t.qtype, blocks)), name
    assert n_quantized > 0


def test_v6_files() -> None:
    """No FP32 6v0 file exists; the 6v0 .pth is the Q5_1 file's values rounded to bf16.

    So the Q5_1 file mapped back must equal the .pth after bf16 rounding, including the
    dequantized, transposed LoRAs. The Q5_0 file is checked against the Q5_1 one with both
    formats' bounds (both come from the same absent FP32 weights; 1/16 slack because the bounds
    are evaluated on the Q5_1 values instead of the originals).
    """
    q51, q50, reference = model("6v0", "Q5_1"), model("6v0", "Q5_0"), pth("6v0")
    for name, expected in reference.items():
        assert torch.equal(f32(q51.tensors[name]).bfloat16(), expected), name
    for name in TRANSPOSED_V6 + ("att.time_maa_w2", "att.time_decay", "att.time_faaaa"):
        t = q51.tensors[f"blocks.3.{name}"]
        assert t.qtype == GGMLType.F32 and t.data.flags.c_contiguous and t.data.shape == t.shape
    for name, t in q50.tensors.items():
        x = q51.tensors[name].to_f32()
        if t.qtype == GGMLType.F32 and not name.endswith(TRANSPOSED_V6):
            assert np.array_equal(t.to_f32(), x), name
            continue
        stored = _as_stored(name, x).astype(np.float64).reshape(-1, 32)
        bound = _block_bound(GGMLType.Q5_0, stored) + _block_bound(GGMLType.Q5_1, stored)
        error = np.abs(_as_stored(name, t.to_f32()).astype(np.float64).reshape(-1, 32) - stored)
        assert np.all(error <= bound * (1 + 1 / 16)), name


# -------------------------------------------------------------------------------------------------
# Q4_0, Q4_1, Q8_0: files written here with gguf-py's quantizer


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0], ids=str)
def test_v4_file_quantized_with_gguf(tmp_path: Path, qtype: GGMLType) -> None:
    sd = pth("4v0")

    def pick(name: str, x: np.ndarray) -> GGMLType:  # rwkv.cpp's quantizer policy
        return qtype if x.ndim == 2 and name not in ("emb.weight", "head.weight") else GGMLType.F32

    records = convert(sd, pick)
    m = read_rwkvcpp(write_bin(tmp_path / "q.bin", (101, 256, 128, 4, CODES[qtype]), records))
    assert (m.arch, m.data_type, m.file_version) == ("4", qtype, 101)
    packed = {name: data for name, code, _, data in records if code == CODES[qtype]}
    assert len(packed) == 7 * 4
    for name, expected in sd.items():
        t = m.tensors[name]
        assert t.shape == tuple(expected.shape), name
        if name in packed:
            assert t.qtype == qtype and is_file_view(t.data) and t.data.tobytes() == packed[name]
            blocks = np.frombuffer(packed[name], np.uint8).reshape(t.data.shape)
            by_gguf = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(int(qtype)))
            np.testing.assert_array_equal(t.to_f32(), by_gguf, err_msg=name)
        else:
            assert torch.equal(f32(t).half(), expected), name


def test_v7_file_with_quantized_loras_and_mixes(tmp_path: Path) -> None:
    """Quantized tensors that must be transposed back (LoRAs) are dequantized to F32; a quantized
    x_rwkvag [6, 1, C] splits into six zero-copy quantized [1, 1, C] mixes."""
    sd = pth("7v0")
    loras = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")

    def pick(name: str, x: np.ndarray) -> GGMLType:
        last = name.split(".")[-1]
        if last in loras:
            return GGMLType.Q8_0
        return GGMLType.Q4_1 if last == "x_rwkvag" else GGMLType.F32

    records = convert(sd, pick)
    m = read_rwkvcpp(write_bin(tmp_path / "q.bin", (101, 256, 64, 12, 9), records))
    packed = {name: (shape, data) for name, _, shape, data in records}
    assert set(m.tensors) == set(sd)
    for layer in (0, 7):
        for lora in loras if layer else ("w1", "w2", "a1", "a2", "g1", "g2"):
            name = f"blocks.{layer}.att.{lora}"
            shape, data = packed[name]  # stored [out, in]
            blocks = np.frombuffer(data, np.uint8).reshape(shape[0], -1)
            stored = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
            t = m.tensors[name]
            assert t.qtype == GGMLType.F32 and t.shape == tuple(sd[name].shape) == stored.T.shape
            np.testing.assert_array_equal(t.to_f32(), stored.T)
        _, data = packed[f"blocks.{layer}.att.x_rwkvag"]
        blocks = np.frombuffer(data, np.uint8).reshape(6, -1)
        mixes = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_1)  # (6, 64)
        for i, letter in enumerate("rwkvag"):
            t = m.tensors[f"blocks.{layer}.att.x_{letter}"]
            assert t.qtype == GGMLType.Q4_1 and t.shape == (1, 1, 64) and is_file_view(t.data)
            np.testing.assert_array_equal(t.to_f32().ravel(), mixes[i])
    assert torch.equal(f32(m.tensors["blocks.5.att.r_k"]).half(), sd["blocks.5.att.r_k"])


# -------------------------------------------------------------------------------------------------
# Bad files: always a one-line ModelFileError


def _fails(path: Path, match: str | None = None) -> None:
    with pytest.raises(ModelFileError, match=match) as info:
        read_rwkvcpp(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


@pytest.mark.parametrize(("version", "kind"), [("4v0", "Q5_0"), ("7v0", "FP16"), ("6v0", "Q5_1")])
def test_every_truncation_fails(tmp_path: Path, version: str, kind: str) -> None:
    source = bin_path(version, kind)
    raw = source.read_bytes()
    records = scan(raw)
    cuts = {0, 1, 4, 23, 24, 25, 30, len(raw) - 1}
    for r in records[:40] + records[-40:]:
        cuts |= {r.start, r.start + 1, r.dims_at + 1, r.key_at, r.key_at + 1,
                 r.data_at, r.data_at + 1, r.end - 1}  # fmt: skip
    cuts |= set(np.random.default_rng(3).integers(0, len(raw), 100).tolist())
    cuts.discard(len(raw))
    path = tmp_path / "cut.bin"
    shutil.copyfile(source, path)
    for cut in sorted(cuts, reverse=True):  # truncated in place: each cut is shorter than the last
        with open(path, "r+b") as f:
            f.truncate(cut)
        _fails(path)


def _patched(tmp_path: Path, source: Path, edits: list, extra: bytes = b"") -> Path:
    """A copy of `source` with bytes overwritten at (offset, bytes) `edits` and `extra` appended."""
    raw = bytearray(source.read_bytes())
    for at, new in edits:
        raw[at : at + len(new)] = new
    path = tmp_path / "patched.bin"
    path.write_bytes(bytes(raw) + extra)
    return path


def _i32(x: int) -> bytes:
    return struct.pack("<i", x)


def _f32s(*x: float) -> bytes:
    return struct.pack(f"<{len(x)}f", *x)


def _record(source: Path, name: str) -> Record:
    return next(r for r in scan(source.read_bytes()) if r.name == name)


V4Q = bin_path("4v0", "Q5_0")  # 4 layers, 128 wide, Q5_0 matrices
V4F = bin_path("4v0", "FP32")  # file version 100
V5 = bin_path("5v1", "FP32")
V7 = bin_path("7v0", "FP32")

HEADER_CASES = [
    ("magic", [(0, b"ggml")], "not an rwkv.cpp model file"),
    ("gguf magic", [(0, b"GGUF")], "not an rwkv.cpp model file"),
    ("version 99", [(4, _i32(99))], "unsupported rwkv.cpp file version 99"),
    ("version 102", [(4, _i32(102))], "unsupported rwkv.cpp file version 102"),
    ("v100 quantized", [(4, _i32(100))], "file version 100 cannot hold Q5_0"),
    ("data type 4", [(20, _i32(4))], "unsupported rwkv.cpp data type 4"),
    ("data type 6", [(20, _i32(6))], "unsupported rwkv.cpp data type 6"),
    ("data type 10", [(20, _i32(10))], "unsupported rwkv.cpp data type 10"),
    ("data type -1", [(20, _i32(-1))], "unsupported rwkv.cpp data type -1"),
    ("n_vocab 0", [(8, _i32(0))], "bad header"),
    ("n_vocab", [(8, _i32(255))], r"emb.weight is \[256, 128\], the header says \[255, 128\]"),
    ("n_embd", [(12, _i32(64))], r"the header says \[256, 64\]"),
    ("n_layer small", [(16, _i32(3))], "header says 3 layers, the tensors have 4"),
    ("n_layer large", [(16, _i32(2**31 - 1))], "header says 2147483647 layers"),
    ("n_layer negative", [(16, _i32(-4))], "bad header"),
]


@pytest.mark.parametrize(("edits", "match"), [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])  # fmt: skip
def test_corrupt_file_header(tmp_path: Path, edits: list, match: str) -> None:
    _fails(_patched(tmp_path, V4Q, edits), match)


def _record_cases() -> list[tuple[str, Path, list, str]]:
    key = _record(V4Q, "blocks.0.att.key.weight")  # Q5_0 [128, 128]
    ln = _record(V4Q, "blocks.1.ln1.weight")
    head = _record(V4F, "head.weight")
    decay = _record(V4F, "blocks.2.att.time_decay")
    decay5 = _record(V5, "blocks.0.att.time_decay")  # [8, 1, 1]
    first5 = _record(V5, "blocks.0.att.time_first")
    mixes = _record(V7, "blocks.0.att.x_rwkvag")  # [6, 1, 64]
    return [
        ("n_dims 0", V4Q, [(key.start, _i32(0))], "0 dimensions"),
        ("n_dims 4", V4Q, [(key.start, _i32(4))], "4 dimensions"),
        ("key length 0", V4Q, [(key.start + 4, _i32(0))], "name length 0"),
        ("key length negative", V4Q, [(key.start + 4, _i32(-3))], "name length -3"),
        ("key length huge", V4Q, [(key.start + 4, _i32(10**9))], "name length 1000000000"),
        ("tensor type 5", V4Q, [(key.start + 8, _i32(5))], "unsupported rwkv.cpp data type 5"),
        ("tensor type 16", V4Q, [(key.start + 8, _i32(16))], "unsupported rwkv.cpp data type 16"),
        ("v100 quantized tensor", V4F, [(head.start + 8, _i32(9))], "100 cannot hold Q8_0"),
        ("dim 0", V4Q, [(key.dims_at, _i32(0))], "must be positive"),
        ("dim negative", V4Q, [(key.dims_at + 4, _i32(-128))], "must be positive"),
        ("dim huge", V4Q, [(key.dims_at + 4, _i32(2**31 - 1))], "truncated tensor 'blocks.0.att.k"),
        ("partial blocks", V4Q, [(key.dims_at, _i32(112))], "Q5_0 rows cut a block"),
        ("name not utf-8", V4Q, [(ln.key_at, b"\xff\xfe")], "not UTF-8"),
        ("duplicate", V4Q, [(ln.key_at + 7, b"2")], "'blocks.2.ln1.weight' appears twice"),
        ("missing", V4Q, [(ln.key_at, b"xlocks")], "RWKV 4 model lacks 'blocks.1.ln1.weight'"),
        ("v4 decay positive", V4F, [(decay.data_at + 8, _f32s(0.5))], r"outside -exp\(x\)"),
        ("v5 decay above 1", V5, [(decay5.data_at, _f32s(1.5))], r"outside exp\(-exp"),
        ("v5 decay NaN", V5, [(decay5.data_at + 4, _f32s(float("nan")))], r"outside exp\(-exp"),
        ("v5 first negative", V5, [(first5.data_at, _f32s(-1.0))], r"outside exp\(x\)"),
        ("v5 decay shape", V5, [(decay5.dims_at, _i32(2)), (decay5.dims_at + 8, _i32(4))],
         r"is \[4, 1, 2\], expected \[H, 1, 1\]"),
        ("v7 mixes shape", V7, [(mixes.dims_at + 4, _i32(2)), (mixes.dims_at + 8, _i32(3))],
         r"expected \[6, 1, C\]"),
        ("trailing bytes", V4Q, [], "truncated tensor record"),
    ]  # fmt: skip


RECORD_CASES = _record_cases()


@pytest.mark.parametrize(("source", "edits", "match"), [c[1:] for c in RECORD_CASES],
                         ids=[c[0] for c in RECORD_CASES])  # fmt: skip
def test_corrupt_tensor_record(tmp_path: Path, source: Path, edits: list, match: str) -> None:
    extra = b"" if edits else b"\x01\x00\x00"  # the "trailing bytes" case
    _fails(_patched(tmp_path, source, edits, extra), match)


def test_misshapen_lora(tmp_path: Path) -> None:
    records = convert(pth("7v0"), lambda name, x: GGMLType.F32)
    records = [(n, c, (1, *s) if n == "blocks.4.att.a2" else s, d) for n, c, s, d in records]
    path = write_bin(tmp_path / "m.bin", (101, 256, 64, 12, 0), records)
    _fails(path, r"'blocks.4.att.a2' is \[1, 64, 32\], expected a matrix")


def test_saturated_decays_map_to_infinities(tmp_path: Path) -> None:
    """exp(-exp(td)) is exactly 0 or 1 in f32 for large |td|: +-inf, which round-trip exactly."""
    decay5 = _record(V5, "blocks.0.att.time_decay")
    path = _patched(tmp_path, V5, [(decay5.data_at, _f32s(0.0, 1.0))])
    td = read_rwkvcpp(path).tensors["blocks.0.att.time_decay"].data  # (H,)
    assert td[0] == np.inf and td[1] == -np.inf
    assert np.exp(-np.exp(td[:2].astype(np.float64))).tolist() == [0.0, 1.0]


def test_other_kinds_of_file(tmp_path: Path) -> None:
    (tmp_path / "empty.bin").write_bytes(b"")
    _fails(tmp_path / "empty.bin", "less than a header")
    (tmp_path / "text.bin").write_text("hello, this is a text file and not a model\n")
    _fails(tmp_path / "text.bin", "not an rwkv.cpp model file")
    _fails(REFERENCE / "tiny-4v0.pth", "not an rwkv.cpp model file")  # a torch zip
    _fails(REFERENCE / "tiny-4v0.npz", "not an rwkv.cpp model file")
    _fails(TINY / "expected-logits-4v0-660K.bin", "not an rwkv.cpp model file")  # 256 raw floats
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "rwkv7")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _fails(tmp_path / "m.gguf", "not an rwkv.cpp model file")
    _fails(write_bin(tmp_path / "header.bin", (101, 256, 64, 1, 0), []), "missing tensor 'emb")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_corruption_raises_only_model_file_error(
    tmp_path: Path, data: st.DataObject
) -> None:
    """Random bytes over the file header or a tensor record's header: loads, or ModelFileError."""
    source = bin_path("5v1", "Q5_0")
    records = scan(source.read_bytes())
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, 23))
    else:
        r = data.draw(st.sampled_from(records[:30] + records[-30:]))
        at = data.draw(st.integers(r.start, r.data_at + 3))
    path = _patched(tmp_path, source, [(at, data.draw(st.binary(min_size=1, max_size=8)))])
    try:
        read_rwkvcpp(path)
    except ModelFileError as error:
        assert "\n" not in str(error)
