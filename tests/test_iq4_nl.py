"""IQ4_NL (ggml type 20) end to end: its bytes against gguf-py's decoder and a hand-built block, our
quantizer's error, and a GGUF file of IQ4_NL tensors read by gguf-py, by us and by `rwkv-edge info`.
(Random bytes against gguf-py: tests/test_blocks.py; kernels on every backend: tests/test_kernels_matvec.py.)
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from conftest import fixture_path
from rwkv_edge.quant.blocks import dequantize, quantize, quantize_rows
from rwkv_edge.quant.checkpoint import open_checkpoint
from rwkv_edge.quant.codebooks import CODEBOOKS, to_fp16
from rwkv_edge.quant.convert import convert
from rwkv_edge.quant.ggml_types import IQ4_NL_VALUES, GGMLType
from rwkv_edge.quant.gguf_layout import storage_type_of
from rwkv_edge.tools.cli import main

IQ4 = GGMLType.IQ4_NL
KVALUES = np.array(IQ4_NL_VALUES, dtype=np.float64)


def gguf_decode(data: np.ndarray) -> np.ndarray:
    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType.IQ4_NL)


def test_type_id_and_geometry_are_ggmls():
    assert int(IQ4) == int(gguf.GGMLQuantizationType.IQ4_NL) == 20
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ4_NL] == (32, 18)


def test_a_hand_built_block():
    # d = 0.5; byte j holds code j (element j) low and code 15 - j (element j + 16) high
    block = np.frombuffer(np.float16(0.5).tobytes() + bytes(j | (15 - j) << 4 for j in range(16)), np.uint8)
    expected = 0.5 * np.array(list(IQ4_NL_VALUES) + list(IQ4_NL_VALUES[::-1]), dtype=np.float32)
    np.testing.assert_array_equal(dequantize(IQ4, block, (32,)), expected)
    np.testing.assert_array_equal(gguf_decode(block.reshape(1, 18)).reshape(32), expected)
    assert dequantize(IQ4, block, (32,))[[0, 15, 16, 31]].tolist() == [-63.5, 56.5, 56.5, -63.5]


def test_quantized_bytes_decode_alike_in_gguf_py():
    x = np.random.default_rng(0).standard_normal((33, 256)).astype(np.float32)
    data = quantize(IQ4, x)
    assert data.shape == (33, 8 * 18) and data.dtype == np.uint8
    np.testing.assert_array_equal(dequantize(IQ4, data, x.shape), gguf_decode(data))


def test_every_block_beats_the_scale_that_maps_its_peak_to_either_end_of_the_grid():
    """The search's first candidates (ggml's own starting point): its choice is never worse."""
    rng = np.random.default_rng(1)
    x = (rng.standard_t(4, (400, 32)) * rng.uniform(0.001, 10, (400, 1))).astype(np.float32)
    ours = dequantize(IQ4, quantize(IQ4, x), x.shape).astype(np.float64)
    err = np.sum((ours - x) ** 2, axis=1)
    peak = x[np.arange(400), np.abs(x).argmax(axis=1)].astype(np.float64)
    book = CODEBOOKS[IQ4]
    for end in (KVALUES[0], KVALUES[-1]):
        d = to_fp16(peak / end)
        naive = d[:, None] * KVALUES[book.nearest(x / d[:, None])]
        assert np.all(err <= np.sum((naive - x) ** 2, axis=1) * (1 + 1e-12))


def test_error_is_well_below_q4_0_at_the_same_size():
    x = (0.02 * np.random.default_rng(2).standard_normal((64, 512))).astype(np.float32)
    ours = dequantize(IQ4, quantize(IQ4, x), x.shape)
    q4_0 = gguf.quants.dequantize(gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0),
                                  gguf.GGMLQuantizationType.Q4_0)
    assert np.mean((ours - x) ** 2) < 0.8 * np.mean((q4_0 - x) ** 2)


def test_zero_and_tiny_blocks_decode_to_zero():
    x = np.zeros((3, 32), np.float32)
    x[1, :3] = [1e-39, -2e-39, 5e-40]  # a scale below fp16's smallest subnormal
    x[2, 5] = -0.0
    np.testing.assert_array_equal(dequantize(IQ4, quantize(IQ4, x), x.shape), np.zeros((3, 32)))


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(IQ4, np.ones((2, 48), np.float32))
    x = np.ones((3, 64), np.float32)
    x[2, 40] = np.inf
    with pytest.raises(ValueError, match="row 2"):
        quantize_rows(IQ4, x)


def test_a_converted_gguf_file_of_iq4_nl(tmp_path):
    src = fixture_path("reference", "tiny-7v0.pth")
    dst = tmp_path / "iq4.gguf"
    result = convert(src, dst, IQ4)
    assert result.quantized_bits_per_weight == 4.5
    reader = gguf.GGUFReader(dst)  # llama.cpp's own reader
    ours = open_checkpoint(dst)
    source = open_checkpoint(src)
    n_matrices = sum(t.tensor_type == gguf.GGMLQuantizationType.IQ4_NL for t in reader.tensors)
    matrices = [n for n in source.tensors if storage_type_of(n) == "matrix"]
    assert n_matrices == len(matrices) > 0
    for name in matrices:
        raw = ours.tensors[name]
        assert raw.qtype == IQ4
        w = source.tensors[name].to_f32()
        np.testing.assert_array_equal(raw.to_f32(), dequantize(IQ4, quantize(IQ4, w), w.shape))
    assert reader.fields["general.file_type"].contents() == 25  # llama.cpp's MOSTLY_IQ4_NL


def test_info_names_the_type(tmp_path, capsys):
    dst = tmp_path / "iq4.gguf"
    convert(fixture_path("reference", "tiny-7v0.pth"), dst, IQ4)
    capsys.readouterr()
    assert main(["info", str(dst), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["tensor_types"]["IQ4_NL"] == 72
    assert described["matrix_bits_per_weight"] == 4.5
