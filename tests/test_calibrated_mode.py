"""The calibrated 4-bit mode end to end (`rwkv-edge convert ... --type IQ4_CAL`): the file is an ordinary
GGUF that gguf-py reads, every tensor has its documented type, the matrices stay within the bit budget, and
on text it never saw the tiny v7 model loses less to it than to plain Q5_1 at 6 bits per weight."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import gguf
import numpy as np
import pytest
from conftest import fixture_path, rwkvcpp_path
from rwkv_edge.quant.checkpoint import open_checkpoint
from rwkv_edge.quant.convert import convert
from rwkv_edge.quant.ggml_types import GGMLType, RawTensor
from rwkv_edge.quant.gguf_layout import storage_type_of, to_gguf
from rwkv_edge.runtime.evaluate import evaluate_tokens
from rwkv_edge.runtime.model import Model
from rwkv_edge.tools import calibrated
from rwkv_edge.tools.cli import main

GT = gguf.GGMLQuantizationType
TEXT = fixture_path("text-gpl3.txt").read_text(encoding="utf-8")
CALIBRATION = TEXT[:2000]  # byte-level model: one character, one token
HELD_OUT = TEXT[-600:]  # the evaluation slice, never seen in calibration


@pytest.fixture(scope="module")
def source() -> str:
    return str(rwkvcpp_path("7v0", "FP32"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, source) -> tuple[str, str]:
    """(path, stderr) of `convert --type IQ4_CAL` with the default options, calibrated on CALIBRATION."""
    d = tmp_path_factory.mktemp("cal")
    text = d / "calibration.txt"
    text.write_text(CALIBRATION, encoding="utf-8")
    dst = d / "cal.gguf"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        # few tokens keep the test fast (the numpy backend too) and still show the effect
        rc = main(["convert", source, str(dst), "--type", "IQ4_CAL", "--calibration", str(text),
                   "--calibration-tokens", "512", "--sensitivity-tokens", "64"])
    assert rc == 0, err.getvalue()
    return str(dst), err.getvalue()


def test_the_file_is_ordinary_gguf_with_the_documented_types(converted, source):
    path, stderr = converted
    reader = gguf.GGUFReader(path)  # llama.cpp's own reader
    ours = open_checkpoint(path)
    src = open_checkpoint(source)
    official_of = {g: o for g, o, _ in to_gguf(src.tensors, src.spec, source)}
    matrix_bits = matrix_weights = 0
    kinds: dict[GT, int] = {}
    for t in reader.tensors:
        official = official_of[t.name]
        if storage_type_of(official) == "matrix":
            assert t.tensor_type in (GT.IQ4_NL, GT.Q5_0), (t.name, t.tensor_type)
            matrix_bits += 8 * t.n_bytes
            matrix_weights += t.n_elements
            kinds[t.tensor_type] = kinds.get(t.tensor_type, 0) + 1
            # what gguf-py decodes is what we run, and it stands for the source weights
            w = src.tensors[official].to_f32()
            decoded = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
            assert np.array_equal(decoded, ours.tensors[official].to_f32())
            # the last Linear of a half also cancels the residual stream's drift, so it moves further
            bound = 1.0 if official.endswith(("att.output.weight", "ffn.value.weight")) else 0.5
            assert np.sqrt(np.mean((decoded - w) ** 2)) < bound * np.sqrt(np.mean(w**2))
        elif storage_type_of(official) in ("emb", "head"):
            assert t.tensor_type == GT.Q8_0, (t.name, t.tensor_type)
        elif storage_type_of(official) == "lora":
            # 2-D LoRAs are F16, as llama.cpp stores them: the source's [out, in] transpose, rounded
            assert t.tensor_type == GT.F16, (t.name, t.tensor_type)
            w = src.tensors[official].to_f32()
            assert np.array_equal(np.asarray(t.data).reshape(w.T.shape), w.T.astype(np.float16))
        else:
            assert t.tensor_type == GT.F32, (t.name, t.tensor_type)
    n_matrices = sum(storage_type_of(n) == "matrix" for n in src.tensors)
    assert sum(kinds.values()) == n_matrices == 72
    assert kinds[GT.IQ4_NL] > kinds.get(GT.Q5_0, 0) > 0  # the budget bought a few Q5_0 matrices
    assert 4.5 < matrix_bits / matrix_weights <= calibrated.Options().budget_bpw
    assert reader.fields["general.file_type"].contents() == 25  # llama.cpp's MOSTLY_IQ4_NL
    stages = ("sensitivity on 64 tokens", "sensitivity 72/72", "types: IQ4_NL x", "rounding layer 12/12 on 512 tokens")
    assert all(stage in stderr for stage in stages), stderr


def test_on_held_out_text_it_beats_plain_q5_1(converted, source, tmp_path):
    """KL to the F32 model: the files as the runtime runs them (kernels, 8-bit activations), then only their
    matrices (decoded to F32, the rest of the model F32, exact activations), where the mode's work shows."""
    q5_1 = tmp_path / "q5_1.gguf"
    convert(source, q5_1, GGMLType.Q5_1)
    base = Model.load(source)
    ids = base.tokenizer.encode(HELD_OUT)
    ours = evaluate_tokens(Model.load(converted[0]), ids, base=base).kl_mean
    plain = evaluate_tokens(Model.load(q5_1), ids, base=base).kl_mean
    assert 0 < ours < plain  # both share the Q8_0 head and embedding, most of the error here
    exact_base = Model.load(source, native=False)
    ours_matrices = evaluate_tokens(_matrices_of(converted[0], exact_base), ids, base=exact_base).kl_mean
    plain_matrices = evaluate_tokens(_matrices_of(q5_1, exact_base), ids, base=exact_base).kl_mean
    assert 0 < ours_matrices < 0.5 * plain_matrices


def _matrices_of(path, base: Model) -> Model:
    """`base` with the large matrices of the file at `path`, decoded to F32, on the numpy layers."""
    stored = open_checkpoint(path).tensors
    tensors = {n: RawTensor.from_array(np.asarray(stored[n].to_f32(), np.float32)) if storage_type_of(n) == "matrix"
               else t for n, t in base.checkpoint.tensors.items()}
    return Model(dataclasses.replace(base.checkpoint, tensors=tensors), native=False)


def test_without_a_text_it_calibrates_on_the_models_own_samples(tmp_path, source):
    dst = tmp_path / "sampled.gguf"
    options = calibrated.Options(calibration_tokens=128, sensitivity_tokens=64, sequential=False)
    lines = []
    result, details = calibrated.convert_calibrated(source, dst, options=options, say=lines.append)
    assert any("sampling 128 calibration tokens" in line for line in lines)
    assert result.quantized_bits_per_weight == details.bits_per_weight <= 4.6
    assert gguf.GGUFReader(dst).tensors  # readable


@pytest.mark.parametrize(
    "args, message",
    [
        (["--type", "Q4_0", "--bpw", "4.6"], "--bpw applies to --type IQ4_CAL only"),
        (["--type", "Q8_0", "--calibration", "x.txt"], "--calibration applies to --type IQ4_CAL only"),
        (["--type", "IQ4_CAL", "--bpw", "4.4"], "below IQ4_NL's 4.5"),
        (["--type", "IQ4_CAL", "--calibration-tokens", "10"], "at least 64"),
        (["--type", "Q5_1", "--sensitivity-tokens", "10"], "--sensitivity-tokens applies to --type IQ4_CAL only"),
    ],
)
def test_bad_options_are_one_line_errors_and_leave_no_file(tmp_path, capsys, source, args, message):
    dst = tmp_path / "out.gguf"
    assert main(["convert", source, str(dst), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rwkv-edge: error: ") and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_short_calibration_text_is_refused(tmp_path, capsys, source):
    text = tmp_path / "short.txt"
    text.write_text("too short", encoding="utf-8")
    assert main(["convert", source, str(tmp_path / "o.gguf"), "--type", "IQ4_CAL", "--calibration", str(text)]) == 1
    assert "at least 64 are needed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


def test_the_destination_is_checked_before_calibrating(tmp_path, capsys, source):
    assert main(["convert", source, str(tmp_path / "no" / "o.gguf"), "--type", "IQ4_CAL", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "its directory does not exist" in err and "sampling" not in err
