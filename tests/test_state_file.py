"""State files: round trip for every version, the documented bytes, and refusal of damaged or foreign files.

Truth: the layout in docs/format.md ("State files") rebuilt here with struct and hashlib; Model.forward on
the original state for the round trip.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
from conftest import REFERENCE_MODELS, fixture_path
from synthetic_checkpoints import make_checkpoint, save_checkpoint

import rwkv_edge
from rwkv_edge import ModelFileError, State

TEXT = list(b"The quick brown fox jumps over the lazy dog.")


@pytest.fixture(scope="module")
def models() -> dict[str, rwkv_edge.Model]:
    return {name: rwkv_edge.load(fixture_path("reference", f"tiny-{name}.pth")) for name in REFERENCE_MODELS}


@pytest.fixture()
def saved(models, tmp_path):
    model = models["7v0"]
    _, state = model.forward(TEXT)
    path = tmp_path / "chat.state"
    state.save(path)
    return model, state, path


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_round_trip_gives_identical_logits(models, tmp_path, name):
    model = models[name]
    _, state = model.forward(TEXT[:20])
    path = tmp_path / f"{name}.state"
    state.save(path)
    loaded = State.load(path, model)
    assert loaded == state and loaded.fingerprint == model.fingerprint
    a, _ = model.forward(TEXT[20:], state)
    b, _ = model.forward(TEXT[20:], loaded)
    assert np.array_equal(a, b)
    assert path.stat().st_size == 60 + model.spec.state_nbytes + 16


def test_file_bytes_are_the_documented_layout(saved):
    model, state, path = saved
    spec = model.spec
    header = struct.pack(
        "<8sI8s6I", b"RWKVSTAT", 1, b"7".ljust(8, b"\0"), spec.n_layer, spec.n_embd, spec.n_head, spec.head_size,
        spec.n_vocab, 2 * spec.n_embd + spec.n_head * spec.head_size**2,
    ) + bytes.fromhex(model.fingerprint)
    body = header + state.buffer.astype("<f4").tobytes()
    checksum = hashlib.blake2b(body, digest_size=16, person=b"rwkv-edge-s1").digest()
    assert path.read_bytes() == body + checksum
    # The wkv block of layer 0 sits right after its two token-shift vectors, [head][value][key].
    floats = np.frombuffer(path.read_bytes()[60:-16], dtype="<f4")
    C, N = spec.n_embd, spec.head_size
    assert np.array_equal(floats[2 * C : 2 * C + N * N].reshape(N, N), state.wkv[0, 0])


def test_fingerprint_is_stable_and_tells_weights_apart(models):
    again = rwkv_edge.load(fixture_path("reference", "tiny-7v0.pth"))
    assert again.fingerprint == models["7v0"].fingerprint
    assert len({m.fingerprint for m in models.values()}) == len(models)
    assert len(bytes.fromhex(again.fingerprint)) == 16


def test_saving_replaces_atomically_and_leaves_no_temporary_file(saved, tmp_path):
    model, _, path = saved
    _, other = model.forward(TEXT[:3])
    other.save(path)
    assert State.load(path, model) == other
    assert sorted(os.listdir(tmp_path)) == ["chat.state"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_state_from_a_bare_spec_needs_the_model(models, tmp_path):
    model = models["5v2"]
    bare = State(model.spec)
    with pytest.raises(ValueError, match="model"):
        bare.save(tmp_path / "x.state")
    bare.save(tmp_path / "x.state", model)
    assert State.load(tmp_path / "x.state", model) == bare


def test_another_architecture_is_refused(saved, models):
    _, _, path = saved
    with pytest.raises(ModelFileError, match="RWKV-7 model .* not for this RWKV-6 model") as err:
        State.load(path, models["6v0"])
    assert err.value.path == str(path)


def test_other_weights_of_the_same_shape_are_refused_unless_asked(tmp_path):
    paths = []
    for seed in (1, 2):
        sd = make_checkpoint("6", n_embd=64, n_layer=2, head_size=16, vocab=256, lora={"mix": 8, "decay": 8},
                             seed=seed)
        paths.append(tmp_path / f"m{seed}.pth")
        save_checkpoint(sd, str(paths[-1]))
    a, b = (rwkv_edge.load(p) for p in paths)
    _, state = a.forward(TEXT)
    state.save(tmp_path / "a.state")
    with pytest.raises(ModelFileError, match="other weights"):
        State.load(tmp_path / "a.state", b)
    loaded = State.load(tmp_path / "a.state", b, check_weights=False)
    assert loaded == state and loaded.fingerprint == b.fingerprint


def test_truncated_files_are_refused(saved, tmp_path):
    model, _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.state"
    for n in (0, 7, 40, 75, 76, 60 + 100, len(data) - 16, len(data) - 1):
        cut.write_bytes(data[:n])
        with pytest.raises(ModelFileError, match="truncated"):
            State.load(cut, model)


@pytest.mark.parametrize(
    "offset, value, fragment",
    [
        (0, b"X", "not an rwkv-edge state file"),
        (8, b"\x02", "format version 2 .*newer"),
        (20, b"\x0d", "truncated"),  # a header claiming 13 layers
        (100, b"\x55", "checksum"),
        (-1, b"\x00", "checksum"),
    ],
)
def test_corrupt_files_are_refused(saved, tmp_path, offset, value, fragment):
    model, _, path = saved
    data = bytearray(path.read_bytes())
    data[offset] = value[0] if data[offset] != value[0] else value[0] ^ 0xFF
    bad = tmp_path / "bad.state"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=fragment):
        State.load(bad, model)


def test_a_file_cut_after_its_size_was_read_is_refused(saved, tmp_path, monkeypatch):
    model, _, path = saved
    full_size = path.stat().st_size
    cut = tmp_path / "shrinking.state"
    cut.write_bytes(path.read_bytes()[:30])
    real_fstat = os.fstat

    def fstat_before_the_cut(fd):  # the size as it was a moment before another process truncated the file
        st = real_fstat(fd)
        return os.stat_result((*st[:6], full_size, *st[7:]))

    monkeypatch.setattr(os, "fstat", fstat_before_the_cut)
    with pytest.raises(ModelFileError, match="changed while it was read"):
        State.load(cut, model)


def test_trailing_bytes_and_non_files_are_refused(saved, tmp_path):
    model, _, path = saved
    longer = tmp_path / "longer.state"
    longer.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="unexpected bytes"):
        State.load(longer, model)
    with pytest.raises(ModelFileError, match="not a regular file"):
        State.load(tmp_path, model)
    with pytest.raises(ModelFileError, match="No such file"):
        State.load(tmp_path / "missing.state", model)
