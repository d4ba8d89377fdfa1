"""The `rwkv-edge` command end to end, in a subprocess as users run it: output, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fixture_path, rwkvcpp_path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rwkv_edge", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rwkv-edge: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_generate_on_the_embedded_model_is_repeatable():
    a = run_cli("generate", "--prompt", "The ", "-n", "20", "--seed", "7")
    b = run_cli("generate", "--prompt", "The ", "-n", "20", "--seed", "7")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("The ")
    assert len(a.stdout) > len("The ") + 5


def test_generate_greedy_matches_the_api():
    import rwkv_edge
    from rwkv_edge.tools.default_model import default_model_path

    model = rwkv_edge.load(default_model_path())
    ids = model.tokenizer.encode("In the")
    expected = []
    logits, state = model.forward(ids)
    for _ in range(12):
        token = int(logits.argmax())
        expected.append(token)
        logits, state = model.forward([token], state)
    proc = run_cli("generate", "--prompt", "In the", "-n", "12", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "In the" + bytes(expected).decode("utf-8", errors="replace") + "\n"


def test_generate_with_a_rwkvcpp_file():
    proc = run_cli("generate", str(rwkvcpp_path("5v2", "Q5_1")), "--prompt", "Hi", "-n", "5", "--seed", "1")
    assert proc.returncode == 0, proc.stderr


def test_info_json_describes_the_model():
    proc = run_cli("info", str(fixture_path("reference", "tiny-6v0.pth")), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["version"] == "6"
    assert (info["n_layer"], info["n_embd"], info["n_head"], info["head_size"]) == (12, 128, 16, 8)
    assert info["lora_ranks"] == {"mix": 32, "decay": 64}
    assert info["state_bytes"] == 4 * 12 * 128 * (2 + 8)
    assert info["tensor_types"] == {"BF16": info["n_tensors"]}
    text = run_cli("info", str(rwkvcpp_path("7v0", "Q5_1")))
    assert text.returncode == 0 and "RWKV-7" in text.stdout and "Q5_1" in text.stdout


def test_missing_file(tmp_path):
    assert_one_line_error(run_cli("info", str(tmp_path / "nope.pth")), "nope.pth", "No such file")


def test_directory(tmp_path):
    assert_one_line_error(run_cli("generate", str(tmp_path), "--prompt", "x"), str(tmp_path))


def test_file_of_another_kind(tmp_path):
    other = tmp_path / "notes.pth"
    other.write_text("these are not weights\n" * 10)
    assert_one_line_error(run_cli("info", str(other)), "notes.pth", "unknown file kind")


@pytest.mark.parametrize("source", ["pth", "bin"])
@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.97])
def test_truncated_file(tmp_path, source, fraction):
    src = fixture_path("reference", "tiny-7v0.pth") if source == "pth" else rwkvcpp_path("7v0", "Q5_1")
    data = src.read_bytes()
    cut = tmp_path / f"cut.{source}"
    cut.write_bytes(data[: max(16, int(len(data) * fraction))])
    assert_one_line_error(run_cli("generate", str(cut), "--prompt", "x", "-n", "1"), "cut.")


def test_pickle_naming_a_foreign_global_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(4, 4), "x": Payload()}, evil)
    assert_one_line_error(run_cli("info", str(evil)), "evil.pth", "system")
    assert not marker.exists()


def test_unsupported_variant(tmp_path):
    sd = torch.load(fixture_path("reference", "tiny-7v0.pth"), weights_only=True)
    sd["blocks.0.ffn.s_emb.weight"] = torch.zeros(256, 64, dtype=torch.float16)
    variant = tmp_path / "deepembed.pth"
    torch.save(sd, variant)
    assert_one_line_error(run_cli("info", str(variant)), "deepembed.pth", "DeepEmbed")


def test_tensor_with_a_contradicting_shape(tmp_path):
    sd = torch.load(fixture_path("reference", "tiny-7v0.pth"), weights_only=True)
    sd["blocks.3.att.key.weight"] = sd["blocks.3.att.key.weight"][:, :32].clone()
    bad = tmp_path / "bad-shape.pth"
    torch.save(sd, bad)
    assert_one_line_error(run_cli("generate", str(bad), "--prompt", "x"), "blocks.3.att.key.weight", "shape")


def test_token_id_out_of_range():
    # World ids for "Hello" are far beyond the tiny model's 256-entry vocabulary.
    proc = run_cli("generate", "--prompt", "Hello", "--tokenizer", "world")
    assert_one_line_error(proc, "token id", "out of range", "256")


def test_bad_sampling_arguments():
    assert_one_line_error(run_cli("generate", "--prompt", "x", "--top-p", "1.5"), "top_p")
