"""State-tuning files (`blocks.N.att.time_state`) as the initial state, against the official rwkv package.

Truth: for v5/v6 the rwkv package itself, which loads `time_state` found among a model's weights as its
initial state (transposed into its [key][value] layout); for v7, whose package class has no time_state
support, the package run from the state the v7 training code (RWKV-PEFT) implies: time_state as its
[value][key] WKV state, token shifts zero. Both run in a child process (this file), as in reference_oracle.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_path

import rwkv_edge
from rwkv_edge import ModelFileError, State

REL_TOL = 1e-4
TOKENS = list(b"Once")  # few tokens: the initial state still matters at the end
CASES = {"5v1": "5.0", "5v2": "5.2", "6v0": "6", "7v0": "7"}


def time_states(model: rwkv_edge.Model, seed: int) -> dict[str, torch.Tensor]:
    spec = model.spec
    gen = torch.Generator().manual_seed(seed)
    shape = (spec.n_head, spec.head_size, spec.head_size)
    return {f"blocks.{i}.att.time_state": torch.randn(shape, generator=gen) * 0.5 for i in range(spec.n_layer)}


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / ref.std())


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """name -> (our model, state-tuning .pth path, time_state tensors, the package's last-token logits)."""
    tmp = tmp_path_factory.mktemp("tuning")
    cases, jobs = {}, {False: [], True: []}
    for k, (name, version) in enumerate(CASES.items()):
        source = fixture_path("reference", f"tiny-{name}.pth")
        model = rwkv_edge.load(source)
        ts = time_states(model, seed=k)
        tuning = tmp / f"{name}-tuning.pth"
        torch.save(ts, tuning)
        if version == "7":
            job = [str(source), str(tuning), TOKENS]
        else:  # the package picks time_state up from the model file
            merged = tmp / f"{name}-with-state.pth"
            torch.save({**torch.load(source, map_location="cpu", weights_only=True), **ts}, merged)
            job = [str(merged), None, TOKENS]
        jobs[version == "7"].append((name, job))
        cases[name] = (model, tuning, ts)
    logits = {}
    for v7, named in jobs.items():
        for (name, _), out in zip(named, run_child([job for _, job in named], v7)):
            logits[name] = out
    return {name: (*cases[name], logits[name]) for name in CASES}


def run_child(jobs: list, v7: bool) -> list[np.ndarray]:
    env = dict(os.environ, RWKV_JIT_ON="0", RWKV_CUDA_ON="0", CUDA_VISIBLE_DEVICES="")
    for key in ("RWKV_V7_ON", "RWKV_RESCALE_LAYER", "RWKV_DE_VERSION"):
        env.pop(key, None)
    if v7:
        env["RWKV_V7_ON"] = "1"
    with tempfile.TemporaryDirectory(prefix="rwkv-tuning-oracle-") as tmp:
        request, answer = Path(tmp) / "jobs.json", Path(tmp) / "logits.npz"
        request.write_text(json.dumps(jobs))
        proc = subprocess.run([sys.executable, __file__, str(request), str(answer)], env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        with np.load(answer) as z:
            return [z[f"logits_{i}"] for i in range(len(jobs))]


def _child_main(request: str, answer: str) -> None:
    import gc

    from rwkv.model import RWKV

    torch.set_num_threads(1)
    gc.freeze()
    out = {}
    for i, (model_path, tuning_path, tokens) in enumerate(json.loads(Path(request).read_text())):
        model = RWKV(model=model_path[: -len(".pth")], strategy="cpu fp32")
        state = None
        if tuning_path is None:
            if not model.args.time_state:
                raise RuntimeError(f"{model_path}: the rwkv package did not pick up time_state")
        else:
            ts = torch.load(tuning_path, map_location="cpu", weights_only=True)
            state = model.generate_zero_state()
            for layer in range(model.n_layer):
                state[layer * 3 + 1] = ts[f"blocks.{layer}.att.time_state"].float().clone()  # [value][key]
        logits, _ = model.forward(list(tokens), state)
        out[f"logits_{i}"] = logits.float().numpy()
    np.savez(answer, **out)


@pytest.mark.parametrize("name", CASES)
def test_time_state_matches_the_official_package(oracle, name):
    model, tuning, _, expected = oracle[name]
    state = model.load_state_tuning(tuning)
    ours, _ = model.forward(TOKENS, state)
    assert rel_err(ours, expected) < REL_TOL
    # The state and its orientation matter: no state or the transposed matrices give clearly other logits.
    flipped = state.copy()
    flipped.wkv[:] = np.swapaxes(state.wkv, -1, -2)
    assert rel_err(model.forward(TOKENS, flipped)[0], expected) > 100 * REL_TOL
    assert rel_err(model.forward(TOKENS)[0], expected) > 100 * REL_TOL
    assert not state.att_x_prev.any() and not state.ffn_x_prev.any()


def test_safetensors_gives_the_same_state(oracle, tmp_path):
    from safetensors.torch import save_file

    model, _, ts, _ = oracle["6v0"]
    path = tmp_path / "tuning.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in ts.items()}, str(path))
    from_st = State.from_tuning(path, model)
    expected = np.stack([v.to(torch.bfloat16).float().numpy() for v in ts.values()])
    assert np.array_equal(from_st.wkv, expected)
    assert from_st.fingerprint == model.fingerprint


def test_tuned_state_seeds_generation(oracle):
    model, tuning, _, _ = oracle["7v0"]
    state = model.load_state_tuning(tuning)
    tuned = model.complete(TOKENS, max_tokens=10, seed=3, state=state)
    expected = model.forward(TOKENS, state)[1]
    for token in tuned.tokens:  # one call per token, as generation runs them
        expected = model.forward([token], expected)[1]
    assert tuned.state == expected
    assert tuned.state != model.complete(TOKENS, max_tokens=10, seed=3).state


def test_bad_tuning_files_are_refused(oracle, tmp_path):
    model, _, ts, _ = oracle["6v0"]
    cases = {
        "missing.pth": ({k: v for k, v in ts.items() if "blocks.3." not in k}, "layer 3 is missing"),
        "extra.pth": ({**ts, "blocks.12.att.time_state": ts["blocks.0.att.time_state"]}, "has layer 12"),
        "shape.pth": ({**ts, "blocks.2.att.time_state": torch.zeros(16, 8, 4)}, r"shape \[16, 8, 4\]"),
        "nan.pth": ({**ts, "blocks.1.att.time_state": ts["blocks.1.att.time_state"] * float("nan")}, "non-finite"),
        "none.pth": ({"emb.weight": torch.zeros(4, 4)}, "not a state-tuning file"),
    }
    for file_name, (tensors, fragment) in cases.items():
        torch.save(tensors, tmp_path / file_name)
        with pytest.raises(ModelFileError, match=fragment):
            model.load_state_tuning(tmp_path / file_name)
    (tmp_path / "text.pth").write_text("hello, not a model at all")
    with pytest.raises(ModelFileError):
        model.load_state_tuning(tmp_path / "text.pth")
    v4 = rwkv_edge.load(fixture_path("reference", "tiny-4v0.pth"))
    with pytest.raises(ModelFileError, match="RWKV-4"):
        v4.load_state_tuning(oracle["6v0"][1])


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
