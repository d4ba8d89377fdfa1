"""quant/safetensors_file.py: files from the safetensors library and by hand; bad ones refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from rwkv_edge.quant.errors import ModelFileError
from rwkv_edge.quant.ggml_types import GGMLType, RawTensor
from rwkv_edge.quant.safetensors_file import read_safetensors


def is_memmap_view(array: np.ndarray) -> bool:
    base = array
    while base is not None:
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return False


def hand_built(header: dict, data: bytes, *, pad_to: int = 8) -> bytes:
    """A safetensors file from its parts, as the format describes it."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + data


def test_numpy_written_f32_f16(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "emb.weight": rng.standard_normal((11, 8)).astype(np.float32),
        "blocks.0.att.time_mix_k": rng.random((1, 1, 8)).astype(np.float16),
        "scalar": np.array(2.5, dtype=np.float32),
        "vector": rng.standard_normal(5).astype(np.float16),
        "cube": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    path = tmp_path / "np.safetensors"
    save_numpy(arrays, str(path), metadata={"format": "np", "note": "hello"})
    tensors, metadata = read_safetensors(path)
    assert metadata == {"format": "np", "note": "hello"}
    assert set(tensors) == set(arrays)
    for name, expected in arrays.items():
        got = tensors[name]
        assert (
            got.qtype == {np.float32: GGMLType.F32, np.float16: GGMLType.F16}[expected.dtype.type]
        )
        assert got.shape == expected.shape
        assert got.data.dtype == expected.dtype
        assert np.array_equal(got.data, expected)
    assert is_memmap_view(tensors["emb.weight"].data)


def test_torch_written_bf16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {
        "w": (torch.randn(6, 10) * 100).bfloat16(),
        "v": torch.randn(1, 1, 10).bfloat16(),
        "h": torch.randn(4, 4).half(),
        "f": torch.randn(3),
    }
    path = tmp_path / "t.safetensors"
    save_torch(state, str(path), metadata={"format": "pt"})  # what save_pretrained writes
    tensors, metadata = read_safetensors(path)
    assert metadata == {"format": "pt"}
    for name, t in state.items():
        got = tensors[name]
        if t.dtype == torch.bfloat16:
            assert got.qtype == GGMLType.BF16
            expected = t.view(torch.int16).numpy().view(np.uint16)
        else:
            expected = t.numpy()
        assert got.shape == tuple(t.shape)
        assert got.data.dtype == expected.dtype
        assert np.array_equal(got.data, expected)
        assert is_memmap_view(got.data)


def test_hand_built_file_documents_the_format(tmp_path: Path) -> None:
    # bf16 0x3F80 is 1.0; fp16 0x4000 is 2.0
    data = struct.pack("<2H", 0x3F80, 0xBF80) + struct.pack("<e", 2.0)
    header = {
        "a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
        "b": {"dtype": "F16", "shape": [1, 1], "data_offsets": [4, 6]},
    }
    path = tmp_path / "hand.safetensors"
    path.write_bytes(hand_built(header, data))
    tensors, metadata = read_safetensors(path)
    assert metadata == {}
    assert tensors["a"] == RawTensor(GGMLType.BF16, (2,), tensors["a"].data)
    assert tensors["a"].data.tolist() == [0x3F80, 0xBF80]
    assert tensors["b"].shape == (1, 1) and tensors["b"].data.tolist() == [[2.0]]


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}, "dtype 'I64'"),
        ({"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}, "dtype 'F64'"),
        ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, r"dtype \['F32'\]"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12 bytes, has 8"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 12]}, "spans bytes 4..12 of 8 "),
        ({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}, "spans bytes 8..4"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "malformed shape"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "malformed shape"),
        ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "malformed shape"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "malformed data_offsets"),
        ({"dtype": "F32", "shape": [2]}, "malformed data_offsets"),
        ([1, 2], "not an object"),
    ],
)
def test_bad_entries(tmp_path: Path, entry: object, problem: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(hand_built({"t": entry}, b"\x00" * 8))
    with pytest.raises(ModelFileError, match=problem):
        read_safetensors(path)


def test_bad_metadata(tmp_path: Path) -> None:
    path = tmp_path / "meta.safetensors"
    path.write_bytes(hand_built({"__metadata__": {"n": 3}}, b""))
    with pytest.raises(ModelFileError, match="__metadata__"):
        read_safetensors(path)


@pytest.mark.parametrize(
    "blob, problem",
    [
        (b"", "too short"),
        (b"\x08\x00\x00", "too short"),
        (struct.pack("<Q", 1 << 40) + b"{}", "header length"),
        (struct.pack("<Q", 50) + b"{}", "header length"),
        (struct.pack("<Q", 4) + b"{{}}", "not valid JSON"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not an object"),
        (struct.pack("<Q", 2000) + b"[" * 2000, "not valid JSON"),
    ],
)
def test_bad_headers(tmp_path: Path, blob: bytes, problem: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ModelFileError, match=problem):
        read_safetensors(path)


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "full.safetensors"
    save_numpy({"a": np.ones((4, 4), np.float32), "b": np.ones(3, np.float16)}, str(path))
    blob = path.read_bytes()
    for keep in (len(blob) - 1, len(blob) - 7, 20, 8):
        cut = tmp_path / "cut.safetensors"
        cut.write_bytes(blob[:keep])
        with pytest.raises(ModelFileError):
            read_safetensors(cut)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read file"):
        read_safetensors(tmp_path / "absent.safetensors")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_corrupted_bytes_give_model_file_error_or_tensors(
    tmp_path: Path, data: st.DataObject
) -> None:
    path = tmp_path / "src.safetensors"
    save_numpy({"a": np.ones((2, 3), np.float32), "b": np.ones(5, np.float16)}, str(path))
    blob = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, header_end - 1))] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(blob))
    try:
        tensors, _ = read_safetensors(path)
    except ModelFileError:
        return
    assert all(isinstance(t, RawTensor) for t in tensors.values())
