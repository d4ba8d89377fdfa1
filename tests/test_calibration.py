"""runtime.calibration: the layer-major streams against Model.forward, input moments against what the
layers output, sensitivities against runtime.evaluate, and sampled calibration tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import fixture_path, rwkvcpp_path
from rwkv_edge.quant.ggml_types import RawTensor
from rwkv_edge.runtime import calibration as cal
from rwkv_edge.runtime.evaluate import evaluate_tokens, log_softmax
from rwkv_edge.runtime.model import Model

TEXT = "GNU GENERAL PUBLIC LICENSE, version 3: free software for everyone, to share and change. "


def load(arch: str) -> Model:
    fmt = "Q5_1" if arch == "6v0" else "FP32"  # v6's only source is a Q5_1 file
    return Model.load(rwkvcpp_path(arch, fmt), native=False)  # the numpy layers the streams share


@pytest.fixture(scope="module")
def tiny() -> Model:
    return load("7v0")


@pytest.fixture(scope="module")
def ids(tiny: Model) -> np.ndarray:
    text = fixture_path("text-gpl3.txt").read_text(encoding="utf-8")[:400]
    return np.array(tiny.tokenizer.encode(text))  # (400,): two chunks of CHUNK_LEN


def run_through(stream: cal.Stream) -> cal.Stream:
    while stream.next < 2 * stream.model.spec.n_layer:
        cal.advance(stream)
    return stream


def with_tensor(model: Model, name: str, raw: RawTensor) -> Model:
    """The model rebuilt from a checkpoint holding `raw` as `name` (independent of calibration.with_tensors)."""
    ckpt = dataclasses.replace(model.checkpoint, tensors={**model.checkpoint.tensors, name: raw})
    return Model(ckpt, model.tokenizer, native=False)


@pytest.mark.parametrize("arch", ["4v0", "5v2", "6v0", "7v0"])
def test_a_stream_through_every_half_gives_forwards_logits_bit_for_bit(arch):
    model = load(arch)
    tokens = model.tokenizer.encode(TEXT * 3)  # > CHUNK_LEN
    expected, _ = model.forward(tokens, all_logits=True)
    got = run_through(cal.Stream(model, tokens)).logits()
    assert got.shape == expected.shape and np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_logits_need_every_half(tiny, ids):
    s = cal.Stream(tiny, ids)
    cal.advance(s)
    with pytest.raises(ValueError, match="not run through every layer"):
        s.logits()


def test_moments_reproduce_what_the_last_linears_add_to_the_residual(tiny, ids):
    """In v7 the TimeMix adds output(...) and the ChannelMix adds value(...) to the residual stream, so for
    y = the increment over a half, W E[x x^T] W^T must equal E[y y^T]."""
    s = cal.Stream(tiny, ids)
    for _ in range(2 * 11):
        cal.advance(s)
    for name in ("blocks.11.att.output.weight", "blocks.11.ffn.value.weight"):
        before = s.x.astype(np.float64)
        moments = cal.half_moments(s, names=[name])
        assert set(moments) == {name} and moments[name].n_tokens == len(ids) and moments[name].cross is None
        assert np.array_equal(s.x, before)  # no advance
        cal.advance(s)
        y = s.x.astype(np.float64) - before  # (T, C)
        W = tiny.checkpoint.tensors[name].to_f32().astype(np.float64)
        got = W @ moments[name].second @ W.T
        expected = y.T @ y / len(y)
        assert np.allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
        assert np.array_equal(moments[name].imatrix, np.diag(moments[name].second))


def test_cross_moments_pair_the_two_models_token_by_token(tiny, ids):
    """Perturb layer 10: in layer 11, W C W^T = E[y_ref y^T] for the increments of both models."""
    name = "blocks.10.ffn.value.weight"
    raw = RawTensor.from_array(tiny.checkpoint.tensors[name].to_f32() * np.float32(1.5))
    other = with_tensor(tiny, name, raw)
    ref, cur = cal.Stream(tiny, ids), cal.Stream(other, ids)
    for _ in range(2 * 11 + 1):  # to layer 11's ChannelMix
        cal.advance(ref)
        cal.advance(cur)
    target = "blocks.11.ffn.value.weight"
    m = cal.half_moments(ref, cur, [target])[target]
    # the same moments with both streams on one model: cross is second
    same = cal.half_moments(ref, ref.with_model(tiny), None)
    assert set(same) == {"blocks.11.ffn.key.weight", target}
    assert all(np.array_equal(v.cross, v.second) for v in same.values())
    x_ref, x_cur = ref.x.astype(np.float64), cur.x.astype(np.float64)
    cal.advance(ref)
    cal.advance(cur)
    y_ref, y = ref.x - x_ref, cur.x - x_cur
    W = tiny.checkpoint.tensors[target].to_f32().astype(np.float64)
    expected = y_ref.T @ y / len(y)
    assert np.allclose(W @ m.cross @ W.T, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    assert not np.allclose(m.cross, m.second, rtol=1e-2)
    with pytest.raises(ValueError, match="already run through every layer"):
        cal.half_moments(ref)


def test_drift_moments_pair_the_residual_streams_gap_with_the_inputs(tiny, ids):
    """Perturb layer 10: in layer 11's ChannelMix, value adds y = W x to the stream, so
    drift W^T = E[(h_ref - h) y^T] with h the streams at the half's input, token by token."""
    name, target = "blocks.10.ffn.value.weight", "blocks.11.ffn.value.weight"
    raw = RawTensor.from_array(tiny.checkpoint.tensors[name].to_f32() * np.float32(1.5))
    ref, cur = cal.Stream(tiny, ids), cal.Stream(with_tensor(tiny, name, raw), ids)
    for _ in range(2 * 11 + 1):  # to layer 11's ChannelMix
        cal.advance(ref)
        cal.advance(cur)
    moments = cal.half_moments(ref, cur, drift=[target])
    assert moments[target].drift.shape == (64, 256)
    assert all(m.drift is None for n, m in moments.items() if n != target)
    gap, h = (ref.x - cur.x).astype(np.float64), cur.x.astype(np.float64)
    cal.advance(cur)
    y = cur.x - h
    W = tiny.checkpoint.tensors[target].to_f32().astype(np.float64)
    expected = gap.T @ y / len(y)
    assert np.abs(expected).max() > 0
    assert np.allclose(moments[target].drift @ W.T, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    with pytest.raises(ValueError, match="give cur"):
        cal.half_moments(ref, drift=[target])


def test_moments_while_advancing_equal_moments_then_advance(tiny, ids):
    a, b = cal.Stream(tiny, ids), cal.Stream(tiny, ids)
    first = cal.half_moments(a)
    cal.advance(a)
    second = cal.half_moments(b, advance_ref=True)
    assert set(first) == set(second) == {f"blocks.0.att.{n}.weight" for n in ("receptance", "key", "value", "output")}
    assert all(np.array_equal(first[n].second, second[n].second) for n in first)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.state.buffer, b.state.buffer) and a.next == b.next == 1


def test_a_twin_with_a_replaced_tensor_runs_like_a_model_built_with_it(tiny, ids):
    name = "blocks.3.att.key.weight"
    raw = RawTensor.from_array(tiny.checkpoint.tensors[name].to_f32()[::-1].copy())
    twin = cal.with_tensors(tiny, {name: raw})
    expected, _ = with_tensor(tiny, name, raw).forward(ids, all_logits=True)
    got, _ = twin.forward(ids, all_logits=True)
    assert np.array_equal(got, expected)
    base, _ = tiny.forward(ids, all_logits=True)
    assert not np.array_equal(base, got)  # and the original is untouched
    assert np.array_equal(run_through(cal.Stream(tiny, ids)).logits(), base)
    with pytest.raises(ValueError, match="not a Linear"):
        cal.with_tensors(tiny, {"head.weight": tiny.checkpoint.tensors["head.weight"]})
    with pytest.raises(ValueError, match="shape"):
        cal.with_tensors(tiny, {name: RawTensor.from_array(np.zeros((3, 64), np.float32))})


def test_single_tensor_kl_is_evaluates_kl(tiny, ids):
    names = ["blocks.0.att.value.weight", "blocks.7.att.output.weight"]
    ids = ids[:300]
    rng = np.random.default_rng(0)
    candidates = {}
    for n in names:
        w = tiny.checkpoint.tensors[n].to_f32()
        candidates[n] = RawTensor.from_array(w + np.float32(0.05) * rng.standard_normal(w.shape, np.float32))
    seen = []
    kl = cal.single_tensor_kl(tiny, ids, candidates, progress=lambda k, n: seen.append((k, n)))
    assert seen == [(1, 2), (2, 2)]
    for n in names:
        expected = evaluate_tokens(with_tensor(tiny, n, candidates[n]), ids, base=tiny).kl_mean
        assert kl[n] > 0 and kl[n] == pytest.approx(expected, rel=1e-9)


def test_sampled_tokens_are_the_models_own_and_fixed_by_the_seed(tiny):
    a = cal.sample_tokens(tiny, 200, seed=1)
    assert a.shape == (200,) and a.dtype == np.int64 and a.min() >= 0 and a.max() < tiny.spec.n_vocab
    assert np.array_equal(a, cal.sample_tokens(tiny, 200, seed=1))
    assert not np.array_equal(a, cal.sample_tokens(tiny, 200, seed=2))
    # drawn from the model's own distribution: the mean surprise of the drawn tokens is, in expectation,
    # the mean entropy of the distributions they were drawn from (200 draws: within a few standard errors)
    logits, _ = tiny.forward(a, all_logits=True)
    logp = log_softmax(logits[:-1])  # (199, V) the distributions of tokens 1..199
    entropy = -np.sum(np.exp(logp) * logp, axis=1)
    surprise = -logp[np.arange(199), a[1:]]
    assert abs(surprise.mean() - entropy.mean()) < 4 * surprise.std() / np.sqrt(199)
    with pytest.raises(ValueError, match="at least 1"):
        cal.sample_tokens(tiny, 0)


def test_names_outside_layers_are_refused():
    with pytest.raises(ValueError, match="not a Linear inside a layer"):
        cal.half_of("head.weight")
    assert cal.half_of("blocks.11.ffn.value.weight") == (11, "ffn")
