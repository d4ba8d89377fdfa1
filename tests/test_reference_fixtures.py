"""Logits of the official `.pth` fixtures against the official rwkv package's, token by token and as one sequence.

Truth: fixtures/reference/*.npz, written by rwkv 0.8.32 (cpu fp32) for 48 tokens.
Criterion (docs/rwkv-math.md §12): max |our - reference| / std(reference) < 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REFERENCE_MODELS, fixture_path

import rwkv_edge

REL_TOL = 1e-4
EXPECTED_VERSION = {"4v0": "4", "5v1": "5.0", "5v2": "5.2", "6v0": "6", "7v0": "7"}


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / ref.std())


@pytest.fixture(scope="module", params=REFERENCE_MODELS)
def case(request):
    name = request.param
    model = rwkv_edge.load(fixture_path("reference", f"tiny-{name}.pth"))
    ref = np.load(fixture_path("reference", f"tiny-{name}.npz"))
    return name, model, ref


def test_version_detected(case):
    name, model, _ = case
    assert model.spec.version == EXPECTED_VERSION[name]
    assert model.spec.n_vocab == 256


def test_token_by_token_matches_reference(case):
    _, model, ref = case
    state = None
    logits = []
    for token in ref["tokens"]:
        out, state = model.forward([int(token)], state)
        logits.append(out)
    assert rel_err(np.array(logits), ref["logits"]) < REL_TOL


def test_sequence_matches_reference(case):
    _, model, ref = case
    logits, _ = model.forward(ref["tokens"], all_logits=True)
    assert logits.shape == ref["seq_logits"].shape
    assert rel_err(logits, ref["seq_logits"]) < REL_TOL
    last, _ = model.forward(ref["tokens"])
    # One head row against 48 rows: BLAS may sum in another order, nothing more.
    np.testing.assert_allclose(last, logits[-1], rtol=1e-5, atol=1e-5 * float(np.abs(last).max()))


def test_every_split_continues_the_state(case):
    _, model, ref = case
    tokens = [int(t) for t in ref["tokens"]]
    whole, whole_state = model.forward(tokens, all_logits=True)
    for split in range(1, len(tokens)):
        head, state = model.forward(tokens[:split], all_logits=True)
        tail, state = model.forward(tokens[split:], state, all_logits=True)
        joined = np.concatenate([head, tail])
        assert rel_err(joined, whole) < 1e-5, split
        np.testing.assert_allclose(state.buffer, whole_state.buffer, rtol=1e-4, atol=1e-5)


def test_forward_leaves_the_callers_state_alone(case):
    _, model, ref = case
    tokens = [int(t) for t in ref["tokens"]]
    _, state = model.forward(tokens[:10])
    before = state.buffer.copy()
    a, _ = model.forward(tokens[10:20], state)
    np.testing.assert_array_equal(state.buffer, before)
    b, _ = model.forward(tokens[10:20], state)
    np.testing.assert_array_equal(a, b)


def test_copied_states_are_independent(case):
    _, model, ref = case
    tokens = [int(t) for t in ref["tokens"]]
    _, state = model.forward(tokens[:8])
    branch = state.copy()
    assert branch == state and branch.buffer is not state.buffer
    model.forward(tokens[8:16], branch, out=branch)  # in place, on the branch only
    assert branch != state
    logits_a, _ = model.forward(tokens[16:20], state)
    logits_b, _ = model.forward(tokens[16:20], state.copy())
    np.testing.assert_array_equal(logits_a, logits_b)


def test_out_argument_steps_in_place(case):
    _, model, ref = case
    tokens = [int(t) for t in ref["tokens"][:12]]
    expected, expected_state = model.forward(tokens)
    state = model.new_state()
    for token in tokens:
        logits, returned = model.forward([token], state, out=state)
        assert returned is state
    assert rel_err(logits, expected) < 1e-5
    np.testing.assert_allclose(state.buffer, expected_state.buffer, rtol=1e-4, atol=1e-5)
