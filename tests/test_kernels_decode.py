"""The C forward pass (kernels/model_native.py, csrc/rwkv*_forward.c) against the numpy layer math.

Truth: the numpy path of the same model (Model(native=False)), itself checked against the official
package by test_reference_*.py; quant/blocks.py and numpy's float16 for the embedding steps.
Awkward shapes: widths and head sizes that are not multiples of 8 (the vector width), odd LoRA
ranks, 1..5 heads, FFN widths that are not multiples of 32.

Tolerances. The C path runs the same matrix kernels as the numpy path, so they differ only in the
small operations: libm's expf/tanhf and RWKV-7's rke_exp (csrc/rke_exp.h, within 1 ulp) against
numpy's (a few ulps), and the WKV's float32 dot
products in 8 lanes against numpy's matmul (the norms sum in numpy's own order). Over a few layers that stays below 1e-5 of the logits' spread
(measured: at most ~3e-6); states agree to 1e-5 of their largest value. The scalar and AVX2
implementations compute the same bits by construction (rke_model_internal.h), so they must be
equal exactly, and so must a chunk and the same tokens one at a time.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import fixture_path
from rwkv_edge.kernels import dispatch, model_native
from rwkv_edge.kernels._ext import ffi, lib
from rwkv_edge.kernels.model_native import Matrix, NativeModel
from rwkv_edge.quant.blocks import dequantize
from rwkv_edge.quant.checkpoint import open_checkpoint
from rwkv_edge.quant.convert import convert
from rwkv_edge.quant.ggml_types import BLOCK_SIZES, GGMLType
from rwkv_edge.runtime import native_forward
from rwkv_edge.runtime.model import CHUNK_LEN, Model
from rwkv_edge.runtime.weights import round_to
from synthetic_checkpoints import make_checkpoint, save_checkpoint

C_VS_NUMPY = 1e-5  # max |C - numpy| / std(logits)
STATE_TOL = 1e-5  # max |C - numpy| / max |state|
C_BACKENDS = [name for name in dispatch.available() if name != "numpy"]


@dataclass(frozen=True)
class Shape:
    name: str
    version: str
    n_embd: int
    head_size: int | None
    n_ffn: int
    lora: dict[str, int]
    dtype: torch.dtype


# fmt: off
SHAPES = [
    Shape("v4-c44-f100",         "4",   44, None, 100, {},                                 torch.float16),
    Shape("v5.0-c24-h4n6",       "5.0", 24, 6,    72,  {},                                 torch.bfloat16),
    Shape("v5.1-c40-h5n8",       "5.1", 40, 8,    88,  {},                                 torch.float32),
    Shape("v5.2-c36-h3n12",      "5.2", 36, 12,   100, {},                                 torch.float16),
    Shape("v6-c40-h4n10",        "6",   40, 10,   72,  {"mix": 6, "decay": 10},            torch.bfloat16),
    Shape("v7-c36-h3n12",        "7",   36, 12,   100, {"w": 5, "a": 7, "v": 3, "g": 9},   torch.float32),
    Shape("v7-c72-h3n24",        "7",   72, 24,   144, {"w": 8, "a": 16, "v": 4, "g": 12}, torch.bfloat16),
]
# fmt: on
VOCAB = 97
TOKENS = [int(t) for t in np.random.default_rng(7).integers(0, VOCAB, 14)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("decode")
    out = {}
    for seed, s in enumerate(SHAPES):
        sd = make_checkpoint(s.version, n_embd=s.n_embd, n_layer=3, head_size=s.head_size, vocab=VOCAB,
                             n_ffn=s.n_ffn, lora=s.lora, dtype=s.dtype, seed=100 + seed)
        out[s.name] = str(root / f"{s.name}.pth")
        save_checkpoint(sd, out[s.name])
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / b.std())


def state_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def run(model: Model, tokens: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sequence logits (T, V), its state, token-by-token logits (T, V), their state)."""
    seq, seq_state = model.forward(tokens, all_logits=True)
    state = model.new_state()
    rows = [model.forward([t], state, out=state)[0] for t in tokens]
    return seq, seq_state.buffer, np.stack(rows), state.buffer


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_c_matches_the_numpy_layer_math(paths: dict[str, str], shape: Shape) -> None:
    c_model = Model.load(paths[shape.name], native=True)
    numpy_model = Model.load(paths[shape.name], native=False)
    assert c_model.native is not None and numpy_model.native is None
    assert c_model.spec.version == shape.version
    for ours, want in zip(run(c_model, TOKENS), run(numpy_model, TOKENS)):
        check = rel if ours.shape[-1] == VOCAB else state_rel
        assert check(ours, want) < (C_VS_NUMPY if check is rel else STATE_TOL)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_c_backends_compute_the_same_bits(paths: dict[str, str], shape: Shape) -> None:
    model = Model.load(paths[shape.name], native=True)
    results = {}
    for backend in ["scalar", *C_BACKENDS]:
        model.native = model.build_native(backend)
        results[backend] = run(model, TOKENS)
    assert "avx2" in results or "avx2" not in dispatch.available()
    for backend, got in results.items():
        for ours, want in zip(got, results["scalar"]):
            np.testing.assert_array_equal(ours, want, err_msg=backend)


@pytest.mark.parametrize("name", ["v4-c44-f100", "v5.2-c36-h3n12", "v6-c40-h4n10", "v7-c72-h3n24"])
def test_thread_count_changes_no_bit(paths: dict[str, str], name: str) -> None:
    """Threads split rows, heads and tokens, never a sum, so any count gives the same bits."""
    one, *others = (run(Model.load(paths[name], native=True, threads=n), TOKENS) for n in (1, 2, 3))
    for got in others:
        for ours, want in zip(got, one):
            np.testing.assert_array_equal(ours, want)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_sequence_equals_token_by_token_and_splits_continue(paths: dict[str, str], shape: Shape) -> None:
    """Exactly: a row of the kernels' matmul is their matvec bit for bit, and every other step
    treats a chunk's tokens one by one in the same order."""
    model = Model.load(paths[shape.name], native=True)
    seq, seq_state, one, one_state = run(model, TOKENS)
    np.testing.assert_array_equal(seq, one)
    np.testing.assert_array_equal(seq_state, one_state)
    for split in (1, 5, len(TOKENS) - 1):
        head, state = model.forward(TOKENS[:split], all_logits=True)
        tail, state = model.forward(TOKENS[split:], state, all_logits=True)
        np.testing.assert_array_equal(np.concatenate([head, tail]), seq)
        np.testing.assert_array_equal(state.buffer, seq_state)


def test_long_prompts_run_in_calls_within_the_scratch_budget(paths: dict[str, str], monkeypatch) -> None:
    """A prompt longer than the C call's token budget runs in pieces: the same bits as one call."""
    model = Model.load(paths["v7-c72-h3n24"], native=True)
    native = model.native
    assert native is not None
    per_call = native.tokens_per_call
    scratch_bytes = lambda n: int(lib.rke_model_scratch_floats(native._struct, n)) * 4  # noqa: E731
    assert per_call % 16 == 0 and scratch_bytes(per_call) <= model_native.SCRATCH_BUDGET_BYTES
    assert per_call == model_native.MAX_TOKENS_PER_CALL or scratch_bytes(per_call + 16) > model_native.SCRATCH_BUDGET_BYTES
    tokens = [int(t) for t in np.random.default_rng(11).integers(0, VOCAB, 53)]
    whole, whole_state = model.forward(tokens, all_logits=True)
    last, _ = model.forward(tokens)
    native.tokens_per_call = 16  # pieces of 16, 16, 16, 5
    pieces, pieces_state = model.forward(tokens, all_logits=True)
    np.testing.assert_array_equal(pieces, whole)
    np.testing.assert_array_equal(pieces_state.buffer, whole_state.buffer)
    np.testing.assert_array_equal(model.forward(tokens)[0], last)
    # a budget between the scratch of 32 and of 48 tokens gives calls of 32
    monkeypatch.setattr(model_native, "SCRATCH_BUDGET_BYTES", (scratch_bytes(32) + scratch_bytes(48)) // 2)
    smaller = Model.load(paths["v7-c72-h3n24"], native=True)
    assert smaller.native is not None and smaller.native.tokens_per_call == 32
    np.testing.assert_array_equal(smaller.forward(tokens, all_logits=True)[0], whole)


@pytest.mark.parametrize("name", ["v4-c44-f100", "v6-c40-h4n10", "v7-c72-h3n24"])
def test_llama_cpp_rescaled_residual_stream(paths: dict[str, str], name: str) -> None:
    """llama.cpp's v6 files halve x after every n-th layer (spec.rescale_every); both paths do it alike."""
    checkpoint = open_checkpoint(paths[name])
    checkpoint = dataclasses.replace(checkpoint, spec=dataclasses.replace(checkpoint.spec, rescale_every=2))
    plain = run(Model.load(paths[name], native=True), TOKENS)
    ours, want = run(Model(checkpoint, native=True), TOKENS), run(Model(checkpoint, native=False), TOKENS)
    assert rel(ours[0], want[0]) < C_VS_NUMPY and rel(ours[2], want[2]) < C_VS_NUMPY
    assert state_rel(ours[1], want[1]) < STATE_TOL
    assert rel(ours[0], plain[0]) > 1e-3  # the halving took effect


def test_prompts_longer_than_a_chunk(paths: dict[str, str]) -> None:
    tokens = [int(t) for t in np.random.default_rng(3).integers(0, VOCAB, CHUNK_LEN + 37)]
    c_model = Model.load(paths["v7-c36-h3n12"], native=True)
    numpy_model = Model.load(paths["v7-c36-h3n12"], native=False)
    ours, our_state = c_model.forward(tokens, all_logits=True)
    want, want_state = numpy_model.forward(tokens, all_logits=True)
    assert rel(ours, want) < C_VS_NUMPY and state_rel(our_state.buffer, want_state.buffer) < STATE_TOL
    last, _ = c_model.forward(tokens)
    np.testing.assert_array_equal(last, ours[-1])


# Quantized weights multiply activations rounded to 8 bits per block of 32 (q8x): a last-ulp
# difference upstream can move an activation across a rounding boundary, one q8x step (1/254 of
# the block's range), and the tiny v5/v6 models amplify that (docs/rwkv-math.md §14). Measured on
# these cases: up to 2.6% of the logits' spread, the same argmax everywhere.
Q8X_FLIPS = 0.05


@pytest.mark.parametrize(
    ("name", "qtype", "emb"),
    [
        ("7v0", GGMLType.Q4_0, None),  # the embedding and head at the policy's Q8_0
        ("6v0", GGMLType.Q5_1, GGMLType.Q4_1),
        ("5v1", GGMLType.Q8_0, GGMLType.Q5_0),
        ("4v0", GGMLType.Q4_1, GGMLType.Q5_1),
        ("5v2", GGMLType.F16, GGMLType.BF16),
        ("6v0", GGMLType.BF16, GGMLType.F32),
    ],
)
def test_gguf_through_c_matches_numpy(tmp_path, name: str, qtype: GGMLType, emb: GGMLType | None) -> None:
    path = tmp_path / f"{name}-{qtype.name}.gguf"
    convert(fixture_path("reference", f"tiny-{name}.pth"), path, qtype, emb_type=emb)
    c_model = Model.load(path, native=True)
    assert c_model.native is not None and c_model.native.looks_up_embedding
    tokens = [int(t) for t in np.load(fixture_path("reference", f"tiny-{name}.npz"))["tokens"][:24]]
    bound = C_VS_NUMPY if qtype in (GGMLType.F16, GGMLType.BF16) else Q8X_FLIPS
    ours, want = run(c_model, tokens), run(Model.load(path, native=False), tokens)
    for logits, expected in ((ours[0], want[0]), (ours[2], want[2])):
        assert rel(logits, expected) < bound
        assert np.array_equal(logits.argmax(1), expected.argmax(1))
    if bound == C_VS_NUMPY:
        assert state_rel(ours[1], want[1]) < STATE_TOL and state_rel(ours[3], want[3]) < STATE_TOL


@pytest.mark.parametrize("name", ["v4-c44-f100", "v5.1-c40-h5n8", "v6-c40-h4n10"])  # fp16, none, bf16 rounding
def test_embedding_rows_c_cannot_address_come_from_python(paths: dict[str, str], name: str) -> None:
    """The Python lookup (runtime/weights.Embedding) and C's give the same bits: the same decoding,
    LayerNorm summed in numpy's order, the same rounding to the checkpoint's precision."""
    model = Model.load(paths[name], native=True)
    expected = run(model, TOKENS)
    emb = model.emb.matrix
    shifted = np.empty(emb.data.nbytes + 1, np.uint8)[1:]  # the table at an odd address
    shifted[:] = emb.data.reshape(-1).view(np.uint8)
    model.emb.raw = model.emb.raw.__class__(model.emb.raw.qtype, model.emb.raw.shape, shifted.view(emb.data.dtype))
    model.native = model.build_native(C_BACKENDS[0])
    assert not model.native.looks_up_embedding
    with pytest.raises(ValueError, match="pass x_in"):
        model.native.forward(model.new_state().buffer, tokens=np.array([1]))
    for ours, want in zip(run(model, TOKENS), expected):
        np.testing.assert_array_equal(ours, want)


def test_stepping_allocates_nothing_per_token(tmp_path) -> None:
    path = str(tmp_path / "wide-vocab.pth")
    save_checkpoint(make_checkpoint("7", n_embd=64, n_layer=2, head_size=32, vocab=8000, seed=5), path)
    model = Model.load(path, native=True)
    state = model.new_state()
    logits = np.empty(model.spec.n_vocab, np.float32)
    model.forward([1], state, out=state, logits_out=logits)
    scratch = model.native._scratch[1]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for token in range(40):
            got, returned = model.forward([token], state, out=state, logits_out=logits)
            assert got is logits and returned is state
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # Python's own temporaries (token arrays, tuples) take ~1.5 KB; the logits are 32 KB, the
    # state 33 KB and the scratch 40 KB: none of those may be allocated per token
    assert peak < 8000, peak
    assert model.native._scratch[1] is scratch


def test_numpy_backend_runs_without_c() -> None:
    script = (
        "import numpy as np, rwkv_edge\n"
        f"m = rwkv_edge.load({str(fixture_path('reference', 'tiny-7v0.pth'))!r})\n"
        f"z = np.load({str(fixture_path('reference', 'tiny-7v0.npz'))!r})\n"
        "logits, _ = m.forward(z['tokens'], all_logits=True)\n"
        "print(m.native is None, float(np.abs(logits - z['seq_logits']).max() / z['seq_logits'].std()))\n"
    )
    env = {**os.environ, "RWKV_EDGE_KERNELS": "numpy"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    is_none, err = out.stdout.split()
    assert is_none == "True" and float(err) < 1e-4


# ---------------------------------------------------------------------------------------------
# The embedding's steps, bit for bit


EMBEDDING_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q5_1, GGMLType.Q5_0,
                   GGMLType.Q4_1, GGMLType.Q4_0, GGMLType.IQ4_NL]


@pytest.mark.parametrize("qtype", EMBEDDING_TYPES, ids=lambda t: t.name)
def test_c_dequantizes_rows_like_quant_blocks(qtype: GGMLType) -> None:
    assert lib.rke_embedding_supported(int(qtype))
    block, size = BLOCK_SIZES[qtype]
    n = 4 * 32
    # Random bytes: every quant value, and scales that are NaN, inf, subnormal or zero.
    rows = np.random.default_rng(int(qtype)).integers(0, 256, (64, n // block * size), dtype=np.uint8)
    with np.errstate(invalid="ignore"):  # inf scales times zero quants
        want = np.asarray(dequantize(qtype, rows, (len(rows), n)), np.float32)
    got = np.empty_like(want)
    for r in range(len(rows)):
        assert lib.rke_dequantize_row(int(qtype), ffi.from_buffer(rows[r]), ffi.from_buffer("float[]", got[r]), n)
    np.testing.assert_array_equal(got, want)  # NaN where numpy has NaN
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))  # signed zeros too


def _edge_floats() -> np.ndarray:
    rng = np.random.default_rng(0)
    random = rng.standard_normal(20000) * 2.0 ** rng.integers(-30, 18, 20000)
    halves = np.arange(0, 0x7C00, 7, dtype=np.uint16).view(np.float16).astype(np.float32)
    # exactly between two halves (ties) and one float32 ulp either side, subnormals included
    ties = (halves[:-1].astype(np.float64) + np.diff(halves.astype(np.float64)) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, 65504, 65519.996, 65520, 1e6, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25,
                        2.0**-26, 2.0**-14, np.inf, -np.inf, 3e38], np.float32)
    x = np.concatenate([random, halves, ties, near, special]).astype(np.float32)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("qtype", [GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_c_rounds_the_embedding_like_numpy(qtype: GGMLType) -> None:
    x = _edge_floats()
    got = x.copy()
    lib.rke_round_to(ffi.from_buffer("float[]", got), got.size, int(qtype))
    with np.errstate(over="ignore"):  # values past 65504 become inf, as they should
        want = round_to(x, qtype)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    unchanged = x.copy()
    lib.rke_round_to(ffi.from_buffer("float[]", unchanged), x.size, int(GGMLType.F32))
    np.testing.assert_array_equal(unchanged, x)


# ---------------------------------------------------------------------------------------------
# Nothing malformed reaches C


@pytest.fixture(scope="module")
def parts() -> tuple[Model, list[dict[str, object]]]:
    model = Model.load(fixture_path("reference", "tiny-7v0.pth"), native=True)
    built = model.native
    assert built is not None
    return model, [native_forward.layer_fields("7", block) for block in model.blocks]


def build(model: Model, layers: list[dict[str, object]], **changes: object) -> NativeModel:
    args: dict[str, object] = {
        "emb": model.emb.matrix, "emb_round": model.emb.fold_dtype, "ln0": model.emb.ln0, "ln_out": model.ln_out,
        "head": model.head.matrix, "layers": layers, "backend": "scalar", "pool": None,
    }
    args.update(changes)
    return NativeModel(native_forward.dims_of(model.spec), **args)  # type: ignore[arg-type]


def with_field(layers: list[dict[str, object]], i: int, name: str, value: object) -> list[dict[str, object]]:
    out = [dict(layer) for layer in layers]
    if value is KeyError:
        del out[i][name]
    else:
        out[i][name] = value
    return out


def test_the_valid_parts_build(parts) -> None:
    model, layers = parts
    native = build(model, layers)
    state = model.new_state()
    logits = np.empty((1, 256), np.float32)
    native.forward(state.buffer, tokens=np.array([3, 4]), logits=logits)
    want, _ = model.forward([3, 4])
    assert rel(logits[0], want) < C_VS_NUMPY


@pytest.mark.parametrize(
    ("i", "name", "value", "message"),
    [
        (1, "x_r", np.zeros(63, np.float32), "layer 1 x_r must be float32 of shape"),
        (1, "x_r", np.zeros(64, np.float64), "layer 1 x_r must be float32"),
        (1, "x_r", np.zeros(128, np.float32)[::2], "C-contiguous"),
        (2, "a1", Matrix(0, np.zeros((32, 64), np.float32), 31, 64), "layer 2 a1 is 31 x 64"),
        (2, "key", Matrix(2, np.zeros((64, 35), np.uint8), 64, 64), "bytes"),
        (2, "key", Matrix(99, np.zeros((64, 36), np.uint8), 64, 64), "unknown weight type|no kernel"),
        (0, "bogus", np.zeros(64, np.float32), "missing or unknown"),
        (0, "k_k", KeyError, "missing or unknown"),
        (1, "v1", None, "v0, v1, v2 are needed"),
        (1, "ffn_key", "not a matrix", "must be a Matrix"),
    ],
)
def test_malformed_fields_are_refused(parts, i, name, value, message) -> None:
    model, layers = parts
    with pytest.raises(ValueError, match=message):
        build(model, with_field(layers, i, name, value))


def test_malformed_model_arrays_are_refused(parts) -> None:
    model, layers = parts
    with pytest.raises(ValueError, match="head is 255 x 64"):
        build(model, layers, head=Matrix(1, np.zeros((255, 64), np.float16), 255, 64))
    with pytest.raises(ValueError, match="ln_out w"):
        build(model, layers, ln_out=(np.zeros(65, np.float32), model.ln_out[1]))
    with pytest.raises(ValueError, match="3 layers given"):
        build(model, layers[:3])
    with pytest.raises(ValueError, match="F16 or BF16"):
        build(model, layers, emb_round=GGMLType.Q4_0)
    with pytest.raises(ValueError, match="no C forward pass"):
        build(model, layers, backend="numpy")


def test_forward_arguments_are_checked(parts) -> None:
    model, layers = parts
    native = build(model, layers)
    state = model.new_state().buffer
    with pytest.raises(ValueError, match="ids below 256"):
        native.forward(state, tokens=np.array([256]))
    with pytest.raises(ValueError, match="ids below 256"):
        native.forward(state, tokens=np.array([-1]))
    with pytest.raises(ValueError, match="not both"):
        native.forward(state, tokens=np.array([1]), x_in=np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="state must be"):
        native.forward(state[:-1], tokens=np.array([1]))
    with pytest.raises(ValueError, match="state must be"):
        native.forward(state.astype(np.float64), tokens=np.array([1]))
    with pytest.raises(ValueError, match="1 or 2 rows"):
        native.forward(state, tokens=np.array([1, 2]), logits=np.zeros((3, 256), np.float32))
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        native.forward(state, tokens=np.array([1]), logits=np.zeros((1, 255), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        native.forward(state, tokens=np.array([1]), logits=state.reshape(-1)[:256].reshape(1, 256))
    with pytest.raises(ValueError, match="x must have shape"):
        native.forward(state, x_in=np.zeros((1, 65), np.float32))
