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


def test_tokenizer_larger_than_the_vocabulary():
    # World ids reach 65535, far beyond the tiny model's 256-entry vocabulary.
    proc = run_cli("generate", "--prompt", "Hello", "--tokenizer", "world")
    assert_one_line_error(proc, "world tokenizer", "65536", "256")
    assert proc.stdout == ""


def test_token_id_out_of_range_through_the_api():
    import rwkv_edge
    from rwkv_edge.tools.default_model import default_model_path

    model = rwkv_edge.load(default_model_path())
    with pytest.raises(ValueError, match="token id 300 is out of range for a vocabulary of 256"):
        model.forward([5, 300])
    with pytest.raises(ValueError, match="token id -1"):
        model.forward([-1])


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli("info", str(fifo)), "model.pth", "not a regular file")


def test_wrong_rank_tensor(tmp_path):
    sd = torch.load(fixture_path("reference", "tiny-7v0.pth"), weights_only=True)
    sd["blocks.0.att.w1"] = torch.zeros(64, dtype=torch.float16)
    bad = tmp_path / "rank.pth"
    torch.save(sd, bad)
    assert_one_line_error(run_cli("info", str(bad)), "rank.pth", "blocks.0.att.w1")


def test_expanded_tensor_is_refused_not_materialised(tmp_path):
    sd = torch.load(fixture_path("reference", "tiny-7v0.pth"), weights_only=True)
    sd["emb.weight"] = torch.zeros(1, dtype=torch.float16).expand(2**20, 2**20)
    bad = tmp_path / "expand.pth"
    torch.save(sd, bad)
    assert_one_line_error(run_cli("info", str(bad)), "expand.pth", "more than the file holds")


@pytest.mark.parametrize("where", ["missing-dir", "is-dir"])
def test_convert_destination_problems_name_the_destination(tmp_path, where):
    dst = tmp_path / "nodir" / "out.gguf" if where == "missing-dir" else tmp_path
    proc = run_cli("convert", str(fixture_path("reference", "tiny-7v0.pth")), str(dst), "--type", "Q8_0")
    assert_one_line_error(proc, str(dst))
    assert ".tmp" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == []


def test_converted_file_has_ordinary_permissions(tmp_path):
    dst = tmp_path / "out.gguf"
    proc = run_cli("convert", str(fixture_path("reference", "tiny-7v0.pth")), str(dst), "--type", "Q8_0")
    assert proc.returncode == 0, proc.stderr
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask


def test_bad_sampling_arguments():
    assert_one_line_error(run_cli("generate", "--prompt", "x", "--top-p", "1.5"), "top_p")
