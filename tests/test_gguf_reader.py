"""The GGUF reader against gguf-py's writer, and its refusal of damaged files (one ModelFileError each).

Files are written with gguf-py's GGUFWriter (independent of our converter) or converted and then damaged.
"""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from conftest import fixture_path

import rwkv_edge
from rwkv_edge.quant.convert import convert
from rwkv_edge.quant.errors import ModelFileError
from rwkv_edge.quant.ggml_types import GGMLType
from rwkv_edge.quant.gguf_reader import GGUFStrings, read_gguf


def write_with_gguf_py(path, tensors: dict, meta: dict | None = None, alignment: int | None = None):
    w = gguf.GGUFWriter(path, "rwkv7")
    if alignment:
        w.add_custom_alignment(alignment)
    for k, v in (meta or {}).items():
        w.add_uint32(k, v)
    for name, (arr, qtype) in tensors.items():
        if qtype is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_reads_what_gguf_py_writes(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    b = rng.standard_normal((5, 96)).astype(np.float32)
    c = rng.standard_normal((2, 3, 32)).astype(np.float16)
    path = tmp_path / "t.gguf"
    write_with_gguf_py(path, {"a": (a, None), "b": (b, gguf.GGMLQuantizationType.Q4_1), "c": (c, None)},
                       {"x.count": 7}, alignment=64)
    f = read_gguf(path)
    assert f.metadata["x.count"] == 7 and f.metadata["general.architecture"] == "rwkv7"
    assert f.alignment == 64
    np.testing.assert_array_equal(f.tensors["a"].data, a)
    assert f.tensors["b"].qtype == GGMLType.Q4_1 and f.tensors["b"].shape == (5, 96)
    np.testing.assert_array_equal(f.tensors["b"].to_f32(),
                                  gguf.quants.dequantize(gguf.quants.quantize(b, gguf.GGMLQuantizationType.Q4_1),
                                                         gguf.GGMLQuantizationType.Q4_1))
    np.testing.assert_array_equal(f.tensors["c"].data, c)
    assert isinstance(f.tensors["a"].data.base, np.memmap) or isinstance(f.tensors["a"].data, np.memmap)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    convert(fixture_path("reference", "tiny-7v0.pth"), path, GGMLType.Q8_0)
    return path.read_bytes()


def load_error(tmp_path, data: bytes) -> str:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as info:
        rwkv_edge.load(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated(tmp_path, good_file, fraction):
    load_error(tmp_path, good_file[: int(len(good_file) * fraction)])


def test_every_early_cut_fails_cleanly(tmp_path, good_file):
    # The header, metadata and tensor infos: cut at many points, never anything but ModelFileError.
    header_end = read_gguf_info_end(good_file)
    for cut in range(0, header_end, max(1, header_end // 97)):
        load_error(tmp_path, good_file[:cut])


def read_gguf_info_end(data: bytes) -> int:
    import os
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
        f.write(data)
    try:
        return read_gguf(f.name).data_offset
    finally:
        os.remove(f.name)


def test_bad_magic_and_version(tmp_path, good_file):
    assert "unknown file kind" in load_error(tmp_path, b"GGUX" + good_file[4:])
    msg = load_error(tmp_path, good_file[:4] + struct.pack("<I", 9) + good_file[8:])
    assert "version 9" in msg


def _tensor_info_offset(data: bytes, name: str) -> int:
    """Byte offset just after `name` in the tensor-info section."""
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = data.rfind(key, 0, read_gguf_info_end(data))
    assert pos > 0
    return pos + len(key)


def test_unknown_type(tmp_path, good_file):
    pos = _tensor_info_offset(good_file, "blk.0.time_mix_key.weight")
    n_dims = struct.unpack_from("<I", good_file, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    data = good_file[:type_pos] + struct.pack("<I", 77) + good_file[type_pos + 4 :]
    assert "unknown ggml type 77" in load_error(tmp_path, data)


def test_absurd_dimension(tmp_path, good_file):
    pos = _tensor_info_offset(good_file, "blk.0.time_mix_key.weight") + 4
    data = good_file[:pos] + struct.pack("<Q", 1 << 50) + good_file[pos + 8 :]
    assert "absurd dimension" in load_error(tmp_path, data)


def test_data_past_the_end(tmp_path, good_file):
    pos = _tensor_info_offset(good_file, "blk.11.channel_mix_value.weight")
    n_dims = struct.unpack_from("<I", good_file, pos)[0]
    off_pos = pos + 4 + 8 * n_dims + 4
    data = good_file[:off_pos] + struct.pack("<Q", len(good_file)) + good_file[off_pos + 8 :]
    assert "past the end" in load_error(tmp_path, data)


def test_metadata_contradicting_shapes(tmp_path, good_file):
    key = b"rwkv7.feed_forward_length"
    pos = good_file.index(key) + len(key)
    vtype, value = struct.unpack_from("<II", good_file, pos)
    assert vtype == 4 and value == 256
    data = good_file[:pos + 4] + struct.pack("<I", 512) + good_file[pos + 8 :]
    assert "contradicts" in load_error(tmp_path, data)


def test_not_an_rwkv_architecture(tmp_path):
    path = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "'llama'" in load_error(tmp_path, path.read_bytes())


def test_huge_counts_in_the_header(tmp_path, good_file):
    data = good_file[:8] + struct.pack("<Q", 1 << 60) + good_file[16:]
    assert "corrupt" in load_error(tmp_path, data)


def smaps_entry(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    entry: dict[str, str] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
                start, end = (int(v, 16) for v in head.split("-"))
                if inside:
                    break
                inside = start <= address < end
            elif inside:
                key, _, value = line.partition(":")
                entry[key] = value.strip()
    return entry


def test_maps_asking_for_huge_pages(tmp_path, good_file):
    # A decode step walks every weight page: the map asks for 2 MiB pages (VmFlags "hg" = MADV_HUGEPAGE).
    path = tmp_path / "m.gguf"
    path.write_bytes(good_file)
    f = read_gguf(path)
    data = next(iter(f.tensors.values())).data
    flags = smaps_entry(data.ctypes.data)["VmFlags"].split()
    assert "hg" in flags and "rd" in flags and "wr" not in flags


def test_long_string_arrays_are_read_in_place(tmp_path):
    # A vocabulary stays in the map and is decoded item by item; it reads as the list gguf-py wrote.
    words = [f"w{i}" for i in range(3000)]
    words[5], words[6], words[2999] = "", "日本語 ✓", "a" * 300
    path = tmp_path / "v.gguf"
    w = gguf.GGUFWriter(path, "rwkv7")
    w.add_array("x.words", words)
    w.add_array("x.short", ["a", "b"])
    w.add_tensor("t", np.zeros((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = read_gguf(path)
    got = f.metadata["x.words"]
    assert isinstance(got, GGUFStrings) and f.metadata["x.short"] == ["a", "b"]
    assert len(got) == 3000 and got == words and list(got) == words
    assert got[6] == "日本語 ✓" and got[-1] == "a" * 300 and got[5] == "" and got[10:13] == words[10:13]
    with pytest.raises(IndexError):
        got[3000]
    assert got != words[:-1] and got != [*words[:-1], "b"]
    np.testing.assert_array_equal(f.tensors["t"].data, np.zeros((2, 32), np.float32))

    # a file cut inside the array fails at once, at every cut
    whole = path.read_bytes()
    start = whole.index(b"w0")
    for cut in range(start - 8, start + 20000, 997):
        short = tmp_path / "short.gguf"
        short.write_bytes(whole[:cut])
        with pytest.raises(ModelFileError, match="file ends inside metadata 'x.words'"):
            read_gguf(short)

    # a bad item is found when it is read: one line naming the file and the item
    data = bytearray(path.read_bytes())
    at = bytes(data).index(b"w1234")
    data[at] = 0xFF
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    words_bad = read_gguf(bad).metadata["x.words"]
    assert words_bad[1233] == "w1233"
    with pytest.raises(ModelFileError) as info:
        words_bad[1234]
    assert str(info.value) == f"{bad}: metadata 'x.words' item 1234 is not valid UTF-8"
