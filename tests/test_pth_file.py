"""quant/pth_file.py: torch-free `.pth` reading checked against torch.load; bad files refused."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rwkv_edge.quant.errors import ModelFileError
from rwkv_edge.quant.ggml_types import GGMLType, RawTensor
from rwkv_edge.quant.pth_file import read_pth

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
FIXTURE_NAMES = ["tiny-4v0", "tiny-5v1", "tiny-5v2", "tiny-6v0", "tiny-7v0"]
QTYPES = {torch.float32: GGMLType.F32, torch.float16: GGMLType.F16, torch.bfloat16: GGMLType.BF16}


def torch_bits(t: torch.Tensor) -> np.ndarray:
    """torch's values as the numpy array a RawTensor should hold (bf16 as uint16 bit patterns)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def assert_same(ours: dict[str, RawTensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for name, t in theirs.items():
        expected = torch_bits(t)
        got = ours[name]
        assert got.qtype == QTYPES[t.dtype], name
        assert got.shape == tuple(t.shape), name
        assert got.data.dtype == expected.dtype, name
        assert got.data.shape == expected.shape, name
        assert np.array_equal(got.data, expected), name


def is_memmap_view(array: np.ndarray) -> bool:
    base = array
    while base is not None:
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return False


def rezip(
    src: Path,
    dst: Path,
    *,
    replace: dict[str, bytes] | None = None,
    compress: int = zipfile.ZIP_STORED,
) -> None:
    """Copy a torch zip member by member, optionally replacing some members' bytes."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compress) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info)))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_reference_fixtures_match_torch_load(name: str) -> None:
    path = FIXTURES / f"{name}.pth"
    theirs = torch.load(path, weights_only=True, map_location="cpu")
    ours = read_pth(path)
    assert_same(ours, theirs)
    # Contiguous tensors are zero-copy; 6v0 also holds transposed LoRA matrices, which are copied.
    for name, t in theirs.items():
        assert is_memmap_view(ours[name].data) == t.is_contiguous(), name


def test_all_dtypes_shapes_and_shared_storage(tmp_path: Path) -> None:
    torch.manual_seed(0)
    big = torch.randn(6, 10)
    half = torch.randn(4, 3, 5).half()
    bf = (torch.randn(7, 9) * 1000).bfloat16()
    state = {
        "f32.scalar": torch.tensor(3.25),
        "f32.vector": torch.randn(17),
        "f32.matrix": torch.randn(5, 8),
        "f32.big": big,
        # views of `big` share its storage and start at non-zero element offsets
        "f32.rows": big[2:5],
        "f32.row": big[4],
        "f32.tail": big.view(-1)[33:],
        "f16.cube": half,
        "f16.slice": half[1:3],
        "f16.time_mix": torch.rand(1, 1, 64).half(),
        "bf16.matrix": bf,
        "bf16.rows": bf[3:],
        "bf16.vector": torch.randn(33).bfloat16(),
    }
    path = tmp_path / "mixed.pth"
    torch.save(state, path)
    with zipfile.ZipFile(path) as z:
        storages = [n for n in z.namelist() if "/data/" in n]
    assert len(storages) == 8  # shared storages really were saved once
    ours = read_pth(path)
    assert_same(ours, torch.load(path, weights_only=True))
    assert all(is_memmap_view(t.data) for t in ours.values())
    assert ours["f32.rows"].data.base is not None


def test_non_contiguous_and_empty_tensors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    m = torch.randn(4, 6)
    state = {
        "transposed": m.t(),
        "strided": m[:, ::2],
        "expanded": torch.randn(3).expand(5, 3),
        "bf16.transposed": torch.randn(3, 5).bfloat16().t(),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "strided.pth"
    torch.save(state, path)
    assert_same(read_pth(path), torch.load(path, weights_only=True))


def test_parameters_and_ordered_dicts(tmp_path: Path) -> None:
    module = torch.nn.Linear(4, 3)
    state = {"from_state_dict": module.state_dict()["weight"], "parameter": module.bias}
    path = tmp_path / "params.pth"
    torch.save(state, path)
    assert_same(read_pth(path), torch.load(path, weights_only=True))
    path2 = tmp_path / "module.pth"
    torch.save(module.state_dict(), path2)  # an OrderedDict with _metadata
    assert_same(read_pth(path2), dict(module.state_dict()))


def test_nested_state_dict_is_unwrapped(tmp_path: Path) -> None:
    inner = {"emb.weight": torch.randn(8, 4), "head.weight": torch.randn(8, 4).half()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": inner, "epoch": 3}, path)
    assert_same(read_pth(path), inner)


class _Payload:
    """Unpickling this runs `func(arg)`; torch.save pickles it like any other object."""

    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _Payload(os.system, f"touch '{marker}'")
        shown = rf"'{os.system.__module__}\.system'"  # 'posix.system' on Linux
    else:
        payload = _Payload(eval, f"open({str(marker)!r}, 'w').close()")
        shown = r"'(builtins|__builtin__)\.eval'"  # protocol 2 writes the Python 2 module name
    path = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.ones(2, 2), "x": payload}, path)

    # Proof that the file is armed: unrestricted loading runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ModelFileError, match="refusing pickle global " + shown) as info:
        read_pth(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_other_torch_globals_are_refused(tmp_path: Path) -> None:
    # torch.load itself would be happy to call this; a state dict never needs it.
    path = tmp_path / "g.pth"
    data = b"\x80\x02ctorch.serialization\nload\nq\x00."
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("g/data.pkl", data)
    with pytest.raises(ModelFileError, match=r"torch\.serialization\.load"):
        read_pth(path)


def test_file_converted_by_rwkv_pip_package_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "converted.pth"
    torch.save({"emb.weight": torch.ones(2, 2), "_strategy": "cpu fp32", "_version": "0.7"}, path)
    with pytest.raises(ModelFileError, match="converted by the rwkv pip package"):
        read_pth(path)


def test_non_tensor_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"emb.weight": torch.ones(2, 2), "note": "hello"}, path)
    with pytest.raises(ModelFileError, match="entry 'note' is a str, not a tensor"):
        read_pth(path)


def test_unsupported_dtype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "int.pth"
    torch.save({"ids": torch.arange(5)}, path)
    with pytest.raises(ModelFileError, match="unsupported tensor storage LongStorage"):
        read_pth(path)


def test_not_a_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2)], path)
    with pytest.raises(ModelFileError, match="holds a list"):
        read_pth(path)


@pytest.mark.parametrize("cut", [0, 1, 100, 0.5, -1, -22])
def test_truncated_file(tmp_path: Path, cut: float) -> None:
    data = (FIXTURES / "tiny-7v0.pth").read_bytes()
    keep = (
        int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    )
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:keep])
    with pytest.raises(ModelFileError):
        read_pth(path)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "text.pth"
    path.write_text("hello, this is not a checkpoint\n" * 10)
    with pytest.raises(ModelFileError, match="not a PyTorch zip checkpoint"):
        read_pth(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read file"):
        read_pth(tmp_path / "absent.pth")


def test_legacy_torch_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="legacy"):
        read_pth(path)


def test_pickle_garbage(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(3)}, src)
    for garbage in [b"garbage", b"", b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01", b"\x80\x02K\x01."]:
        path = tmp_path / "garbage.pth"
        rezip(src, path, replace={"ok/data.pkl": garbage})
        with pytest.raises(ModelFileError):
            read_pth(path)


def test_data_member_shorter_than_storage(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(4, 4)}, src)
    path = tmp_path / "short.pth"
    rezip(src, path, replace={"ok/data/0": b"\x00" * 60})
    with pytest.raises(ModelFileError, match="holds 60 bytes but its storage needs 64"):
        read_pth(path)


def test_tensor_outside_its_storage(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(4)}, src)
    with zipfile.ZipFile(src) as z:
        pkl = z.read("ok/data.pkl")
    # BINPERSID then BININT1 0 (the storage offset): make the offset 3 for a 4-element tensor
    assert pkl.count(b"QK\x00") == 1
    bad = pkl.replace(b"QK\x00", b"QK\x03")
    path = tmp_path / "outside.pth"
    rezip(src, path, replace={"ok/data.pkl": bad})
    with pytest.raises(ModelFileError, match="reaches element 6 of a storage of 4"):
        read_pth(path)


def test_missing_storage_member(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(4)}, src)
    path = tmp_path / "missing.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if info.filename != "ok/data/0":
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(ModelFileError, match="'ok/data/0' is missing"):
        read_pth(path)


def test_compressed_storage_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save({"w": torch.zeros(256)}, src)
    path = tmp_path / "deflated.pth"
    rezip(src, path, compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelFileError, match="compressed"):
        read_pth(path)


def test_big_endian_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(2)}, src)
    path = tmp_path / "big.pth"
    rezip(src, path, replace={"ok/byteorder": b"big"})
    with pytest.raises(ModelFileError, match="byte order"):
        read_pth(path)


def test_restored_zip_reads_like_the_original(tmp_path: Path) -> None:
    # Member offsets come from local headers, so a plain re-zip (no 64-byte alignment) still works.
    src = tmp_path / "ok.pth"
    state = {"a": torch.randn(3, 5), "b": torch.randn(7).half()}
    torch.save(state, src)
    path = tmp_path / "rezipped.pth"
    rezip(src, path)
    assert_same(read_pth(path), state)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_corrupted_bytes_give_model_file_error_or_tensors(
    tmp_path: Path, data: st.DataObject
) -> None:
    src = FIXTURES / "tiny-4v0.pth"
    blob = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        pkl_info = z.getinfo("tiny-4v0/data.pkl")
    # Aim most flips at the pickle and the zip structures, where parsing happens.
    regions = [(0, pkl_info.file_size + 200), (len(blob) - 4000, len(blob)), (0, len(blob))]
    lo, hi = data.draw(st.sampled_from(regions))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(lo, hi - 1))
        blob[i] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.pth"
    path.write_bytes(bytes(blob))
    try:
        tensors = read_pth(path)
    except ModelFileError:
        return
    assert all(isinstance(t, RawTensor) for t in tensors.values())


def test_pickle_protocols(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 3), "b": torch.randn(3).bfloat16()}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pth"
        torch.save(state, path, pickle_protocol=protocol)
        assert_same(read_pth(path), state)
