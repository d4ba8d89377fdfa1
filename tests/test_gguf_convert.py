"""GGUF conversion: files gguf-py reads, quantized bytes equal to gguf-py's (ggml's reference) quantizers,
logits preserved, re-quantization, and convert's refusal to lose data.

Truth: gguf-py (`gguf.quants`, `gguf.GGUFReader`), the source checkpoints' own logits.
"""

from __future__ import annotations

import subprocess
import sys

import gguf
import numpy as np
import pytest
from conftest import REFERENCE_MODELS, fixture_path, rwkvcpp_path

import rwkv_edge
from rwkv_edge.quant.convert import convert
from rwkv_edge.quant.ggml_types import GGMLType
from rwkv_edge.quant.gguf_layout import to_gguf
from rwkv_edge.quant.checkpoint import open_checkpoint
from rwkv_edge.quant.policy import Policy

TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q5_1, GGMLType.Q5_0,
         GGMLType.Q4_1, GGMLType.Q4_0]


def gguf_py_encode(values: np.ndarray, qtype: GGMLType) -> np.ndarray:
    if qtype == GGMLType.F32:
        return values.astype(np.float32).view(np.uint8).reshape(-1)
    if qtype == GGMLType.F16:
        return values.astype(np.float16).view(np.uint8).reshape(-1)
    return np.asarray(gguf.quants.quantize(values, gguf.GGMLQuantizationType(int(qtype)))).view(np.uint8).reshape(-1)


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.load(fixture_path("reference", "tiny-7v0.npz"))["tokens"]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("name", ["7v0", "6v0", "5v2"])
def test_every_tensor_is_ggmls_bytes(tmp_path, name, qtype):
    src = fixture_path("reference", f"tiny-{name}.pth")
    dst = tmp_path / f"{name}-{qtype.name}.gguf"
    convert(src, dst, qtype)
    ckpt = open_checkpoint(src)
    policy = Policy.for_type(qtype)
    reader = gguf.GGUFReader(dst)  # gguf-py must read our file
    ours = {t.name: t for t in reader.tensors}
    expected = list(to_gguf(ckpt.tensors, ckpt.spec, str(src)))
    assert set(ours) == {n for n, _, _ in expected}
    for gguf_name, official, raw in expected:
        want_type = policy.type_for(official, raw.shape)
        t = ours[gguf_name]
        assert int(t.tensor_type) == int(want_type), gguf_name
        assert tuple(int(d) for d in reversed(t.shape)) == raw.shape, gguf_name
        got = np.asarray(t.data).view(np.uint8).reshape(-1)
        np.testing.assert_array_equal(got, gguf_py_encode(raw.to_f32(), want_type), err_msg=gguf_name)
    arch = {"7v0": "rwkv7", "6v0": "rwkv6", "5v2": "rwkv5"}[name]
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == arch


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_f32_gguf_gives_the_source_logits(tmp_path, name, tokens):
    src = fixture_path("reference", f"tiny-{name}.pth")
    dst = tmp_path / "f32.gguf"
    convert(src, dst, GGMLType.F32)
    want, _ = rwkv_edge.load(src).forward(tokens, all_logits=True)
    model = rwkv_edge.load(dst)
    got, _ = model.forward(tokens, all_logits=True)
    assert model.spec == rwkv_edge.load(src).spec
    # v5.0 stores exp(time_first) computed in float64: one float32 rounding apart, nothing more.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))
    ref = np.load(fixture_path("reference", f"tiny-{name}.npz"))
    assert np.abs(got - ref["seq_logits"]).max() / ref["seq_logits"].std() < 1e-4


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_q8_0_stays_close_to_f32(tmp_path, name, tokens):
    src = fixture_path("reference", f"tiny-{name}.pth")
    convert(src, tmp_path / "q8.gguf", GGMLType.Q8_0)
    want, _ = rwkv_edge.load(src).forward(tokens, all_logits=True)
    got, _ = rwkv_edge.load(tmp_path / "q8.gguf").forward(tokens, all_logits=True)
    # Bound: max error under 10% of the logits' spread. Measured (48 tokens): 4v0 2.5%, 5v1 7.1%, 5v2 4.7%,
    # 6v0 2.1%, 7v0 2.1% (the byte-level v5 models are the most fragile); top-1 always agreed.
    assert np.abs(got - want).max() < 0.10 * want.std()
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.95


def test_rwkvcpp_quantized_file_passes_through_unchanged(tmp_path):
    src = rwkvcpp_path("7v0", "Q5_1")
    # rwkv.cpp keeps emb and head in F16: keep them so too, and every stored byte passes through.
    convert(src, tmp_path / "q51.gguf", GGMLType.Q5_1, emb_type=GGMLType.F16, head_type=GGMLType.F16)
    ckpt = open_checkpoint(src)
    reader = gguf.GGUFReader(tmp_path / "q51.gguf")
    key = {t.name: t for t in reader.tensors}["blk.3.time_mix_key.weight"]
    np.testing.assert_array_equal(np.asarray(key.data), ckpt.tensors["blocks.3.att.key.weight"].data)
    a, _ = rwkv_edge.load(src).forward([34, 105, 110])
    b, _ = rwkv_edge.load(tmp_path / "q51.gguf").forward([34, 105, 110])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_requantizing_a_gguf_equals_converting_the_source(tmp_path):
    src = fixture_path("reference", "tiny-7v0.pth")
    convert(src, tmp_path / "f32.gguf", GGMLType.F32)
    convert(tmp_path / "f32.gguf", tmp_path / "a.gguf", GGMLType.Q4_0)
    convert(src, tmp_path / "b.gguf", GGMLType.Q4_0)
    ta = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(tmp_path / "a.gguf").tensors}
    tb = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(tmp_path / "b.gguf").tensors}
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


def test_gguf_carries_the_tokenizer(tmp_path):
    src = fixture_path("reference", "tiny-7v0.pth")
    with pytest.raises(ValueError, match="vocabulary"):
        convert(src, tmp_path / "world.gguf", GGMLType.F16, tokenizer="world")  # 65530 tokens, 256 rows
    assert not (tmp_path / "world.gguf").exists()
    convert(src, tmp_path / "bytes.gguf", GGMLType.F16)
    model = rwkv_edge.load(tmp_path / "bytes.gguf")
    assert model.tokenizer.encode("hé") == list("hé".encode())


def test_world_vocabulary_round_trips_through_gguf(tmp_path):
    import torch
    from synthetic_checkpoints import make_checkpoint, save_checkpoint

    from rwkv_edge.runtime.tokenizer import world_tokenizer

    pth = tmp_path / "world.pth"
    save_checkpoint(make_checkpoint("7", n_embd=64, n_layer=2, head_size=32, vocab=65536, dtype=torch.float16,
                                    seed=1), pth)
    convert(pth, tmp_path / "world.gguf", GGMLType.Q8_0)
    reader = gguf.GGUFReader(tmp_path / "world.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    texts = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    # llama.cpp's converter writes exactly these strings (repr(bytes)[2:-1]).
    assert texts[0] == "<s>" and texts[11] == "\\n" and texts[261] == "\\n\\n" and texts[65530] == "[PAD65530]"
    model = rwkv_edge.load(tmp_path / "world.gguf")
    bundled = world_tokenizer()
    text = "The Eiffel tower 以下は、 😀 \x00 'quotes' \\back\\slash"
    assert model.tokenizer.encode(text) == bundled.encode(text)
    ids = bundled.encode(text)
    assert model.tokenizer.decode_bytes(ids) == bundled.decode_bytes(ids)


def test_convert_refuses_to_overwrite_its_source(tmp_path):
    src = tmp_path / "m.gguf"
    convert(fixture_path("reference", "tiny-7v0.pth"), src, GGMLType.F16)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="source"):
        convert(src, src, GGMLType.Q8_0)
    assert src.read_bytes() == before


def test_a_failed_convert_leaves_no_partial_output(tmp_path, monkeypatch):
    import rwkv_edge.quant.convert as conv

    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"precious")
    real = conv.quantize
    calls = []

    def failing(qtype, values):
        calls.append(qtype)
        if len(calls) > 3:
            raise RuntimeError("disk on fire")
        return real(qtype, values)

    monkeypatch.setattr(conv, "quantize", failing)
    with pytest.raises(RuntimeError):
        convert(fixture_path("reference", "tiny-7v0.pth"), dst, GGMLType.Q8_0)
    assert dst.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_cli_convert_info_generate(tmp_path):
    dst = tmp_path / "tiny-q8.gguf"
    run = lambda *a: subprocess.run([sys.executable, "-m", "rwkv_edge", *a], capture_output=True, text=True)
    proc = run("convert", str(fixture_path("reference", "tiny-5v2.pth")), str(dst), "--type", "Q8_0")
    assert proc.returncode == 0, proc.stderr
    assert "Q8_0" in proc.stdout and "8.50 bits/weight" in proc.stdout
    info = run("info", str(dst), "--json")
    assert info.returncode == 0, info.stderr
    gen = run("generate", str(dst), "--prompt", "The ", "-n", "8", "--seed", "1")
    assert gen.returncode == 0 and gen.stdout.startswith("The "), gen.stderr
    bad = run("convert", str(dst), str(tmp_path / "x.gguf"), "--type", "Q3_Z")
    assert bad.returncode == 1 and bad.stderr.startswith("rwkv-edge: error: unknown type 'Q3_Z'")


@pytest.mark.parametrize("name, loras", [("7v0", ("w1", "a2", "v1", "g2")),
                                          ("6v0", ("maa_w1", "decay_w1", "decay_w2"))])
def test_lora_matrices_run_from_the_map_as_f16(tmp_path, name, loras):
    """A quantized file's 2-D LoRAs are F16 and the runtime computes with them in place: the
    layer's Linear is the file's own bytes (no F32 copy at load), for the C and numpy paths alike."""
    from rwkv_edge.runtime.model import load

    dst = tmp_path / f"{name}.gguf"
    convert(fixture_path("reference", f"tiny-{name}.pth"), dst, GGMLType.Q8_0)
    model = load(str(dst))
    mix = model.blocks[1].mix
    for field in loras:
        lin = getattr(mix, field)
        assert lin.qtype == GGMLType.F16, field
        stored = [t for n, t in model.checkpoint.tensors.items() if n.startswith("blocks.1.att.")]
        assert any(np.shares_memory(lin.data, t.data) for t in stored), field


def test_a_lora_beyond_f16_range_stays_f32(tmp_path):
    from rwkv_edge.quant.convert import convert_checkpoint
    from rwkv_edge.quant.ggml_types import RawTensor

    ckpt = open_checkpoint(fixture_path("reference", "tiny-7v0.pth"))
    w1 = ckpt.tensors["blocks.0.att.w1"].to_f32().copy()
    w1[0, 0] = 1e6  # beyond F16's 65504
    ckpt.tensors["blocks.0.att.w1"] = RawTensor.from_array(w1)
    dst = tmp_path / "big.gguf"
    convert_checkpoint(ckpt, dst, GGMLType.Q8_0)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(dst).tensors}
    assert types["blk.0.time_mix_w1.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.1.time_mix_w1.weight"] == gguf.GGMLQuantizationType.F16
