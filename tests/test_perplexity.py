"""Perplexity, bits per token, KL divergence and top-1 agreement, checked against torch on hand-run logits."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fixture_path, rwkvcpp_path
from synthetic_checkpoints import make_checkpoint, save_checkpoint
from test_cli import assert_one_line_error, run_cli

import rwkv_edge
from rwkv_edge.quant.ggml_types import RawTensor
from rwkv_edge.runtime.evaluate import evaluate_text, evaluate_tokens, windows
from rwkv_edge.runtime.model import Model
from rwkv_edge.runtime.tokenizer import world_tokenizer


@pytest.fixture(scope="module")
def model() -> Model:
    return rwkv_edge.load(rwkvcpp_path("7v0", "FP32"))


@pytest.fixture(scope="module")
def perturbed(model: Model) -> Model:
    """The same model with noise of 5% of the weights' scale added to the head (the tiny model shrugs off
    noise in most matrices, not in the head)."""
    rng = np.random.default_rng(0)
    tensors = dict(model.checkpoint.tensors)
    w = model.checkpoint.tensors["head.weight"].to_f32()  # (V, C)
    noise = rng.standard_normal(w.shape).astype(np.float32) * np.float32(0.05 * w.std())
    tensors["head.weight"] = RawTensor.from_array(w + noise)
    return Model(dataclasses.replace(model.checkpoint, tensors=tensors))


@pytest.fixture(scope="module")
def text() -> str:
    # 600 bytes: more than one 256-token forward chunk, so chunk boundaries are crossed.
    return fixture_path("text-gpl3.txt").read_text(encoding="utf-8")[1000:1600]


def torch_nll(logits: np.ndarray, targets: list[int]) -> torch.Tensor:
    """(T,) float64 NLL of each target from (T, V) logits, computed by torch."""
    return F.cross_entropy(torch.from_numpy(logits).double(), torch.tensor(targets), reduction="none")


def torch_kl(base_logits: np.ndarray, logits: np.ndarray) -> torch.Tensor:
    """(T,) float64 KL(base || model) per position, computed by torch."""
    base_logp = F.log_softmax(torch.from_numpy(base_logits).double(), dim=-1)
    logp = F.log_softmax(torch.from_numpy(logits).double(), dim=-1)
    return F.kl_div(logp, base_logp, log_target=True, reduction="none").sum(dim=-1)


def test_windows_cover_the_text_and_drop_a_lone_last_token():
    assert windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert windows(9, 4) == [(0, 4), (4, 8)]
    assert windows(5, 5) == [(0, 5)]


def test_perplexity_is_exp_of_the_nll_of_the_full_logits(model, text):
    ids = model.tokenizer.encode(text)
    logits, _ = model.forward(ids, all_logits=True)  # (T, V)
    nll = torch_nll(logits[:-1], ids[1:]).mean().item()
    r = evaluate_text(model, text)
    assert (r.n_tokens, r.n_predicted, r.ctx) == (len(ids), len(ids) - 1, len(ids))
    assert r.nll_mean == pytest.approx(nll, rel=1e-12)
    assert r.ppl == pytest.approx(math.exp(nll), rel=1e-12)
    assert r.bits_per_token == pytest.approx(nll / math.log(2), rel=1e-12)
    assert r.kl_mean is None and r.top1_agreement is None and r.base_ppl is None


@pytest.mark.parametrize("ctx", [150, 199])
def test_each_window_starts_from_a_fresh_state(model, text, ctx):
    ids = model.tokenizer.encode(text)  # 600 tokens: 150 -> 4 windows; 199 -> 3 windows + a lone token
    nlls = []
    for start in range(0, len(ids), ctx):
        window = ids[start : start + ctx]
        if len(window) >= 2:
            logits, _ = model.forward(window, all_logits=True)
            nlls.append(torch_nll(logits[:-1], window[1:]))
    expected = torch.cat(nlls)
    r = evaluate_tokens(model, ids, ctx=ctx)
    assert r.n_predicted == len(expected) == sum(len(ids[s : s + ctx]) - 1 for s in range(0, len(ids), ctx)
                                                 if len(ids[s : s + ctx]) >= 2)
    assert r.nll_mean == pytest.approx(expected.mean().item(), rel=1e-12)
    # Fresh states change the answer: windows are not one long run.
    assert r.nll_mean != pytest.approx(evaluate_tokens(model, ids).nll_mean, rel=1e-6)


def test_a_model_against_itself(model, text):
    r = evaluate_text(model, text, base=model)
    assert r.kl_mean == 0.0 and r.kl_p99 == 0.0
    assert r.top1_agreement == 1.0
    assert r.base_ppl == r.ppl


@pytest.mark.parametrize("ctx", [None, 250])
def test_kl_against_a_perturbed_model_matches_torch(model, perturbed, text, ctx):
    ids = model.tokenizer.encode(text)
    step = ctx or len(ids)
    kls, agree, base_nll = [], [], []
    for start in range(0, len(ids), step):
        window = ids[start : start + step]
        base_logits, _ = model.forward(window, all_logits=True)
        logits, _ = perturbed.forward(window, all_logits=True)
        kls.append(torch_kl(base_logits[:-1], logits[:-1]))
        agree.append(base_logits[:-1].argmax(-1) == logits[:-1].argmax(-1))
        base_nll.append(torch_nll(base_logits[:-1], window[1:]))
    kl = torch.cat(kls)
    r = evaluate_text(perturbed, text, ctx=ctx, base=model)
    assert r.kl_mean > 1e-4
    assert r.kl_mean == pytest.approx(kl.mean().item(), rel=1e-9)
    assert r.kl_p99 == pytest.approx(torch.quantile(kl, 0.99).item(), rel=1e-9)
    assert r.top1_agreement == np.concatenate(agree).mean()
    assert 0.5 < r.top1_agreement < 1.0
    assert r.base_ppl == pytest.approx(math.exp(torch.cat(base_nll).mean().item()), rel=1e-12)
    assert r.ppl == pytest.approx(evaluate_text(perturbed, text, ctx=ctx).ppl, rel=1e-15)


@pytest.fixture(scope="module")
def other_vocab(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vocab") / "vocab300.pth"
    save_checkpoint(make_checkpoint("7", n_embd=64, n_layer=1, head_size=16, vocab=300, seed=3), str(path))
    return str(path)


def test_bad_input_is_a_clear_value_error(model, other_vocab):
    with pytest.raises(ValueError, match="the text is empty"):
        evaluate_text(model, "")
    with pytest.raises(ValueError, match="1 token long; at least 2"):
        evaluate_text(model, "a")
    with pytest.raises(ValueError, match="ctx must be at least 2"):
        evaluate_text(model, "abc", ctx=1)
    with pytest.raises(ValueError, match="vocabulary mismatch: .* 256 tokens.*vocab300.pth has 300"):
        evaluate_text(model, "abc", base=rwkv_edge.load(other_vocab))
    world = Model(model.checkpoint)  # the constructor refuses a larger tokenizer; set one behind its back
    world.tokenizer = world_tokenizer()
    with pytest.raises(ValueError, match="tokenizer mismatch: .* bytes, the base .* world"):
        evaluate_text(model, "abc", base=world)
    with pytest.raises(ValueError, match="no standard tokenizer for its 300-word vocabulary"):
        evaluate_text(rwkv_edge.load(other_vocab), "abc")


def test_cli_json_equals_the_api(tmp_path, text):
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    q5, f32 = rwkvcpp_path("7v0", "Q5_1"), rwkvcpp_path("7v0", "FP32")
    proc = run_cli("perplexity", str(q5), "--text", str(path), "--ctx", "300", "--kl-base", str(f32), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    expected = evaluate_text(rwkv_edge.load(q5), text, ctx=300, base=rwkv_edge.load(f32))
    assert got == {"model": str(q5), "text": str(path), "kl_base": str(f32), **dataclasses.asdict(expected)}
    assert 0 < got["kl_mean"] < 1e-3 and got["top1_agreement"] > 0.95


def test_cli_text_summary(tmp_path, text):
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    proc = run_cli("perplexity", str(rwkvcpp_path("7v0", "FP32")), "--text", str(path), "--ctx", "200")
    assert proc.returncode == 0, proc.stderr
    r = evaluate_text(rwkv_edge.load(rwkvcpp_path("7v0", "FP32")), text, ctx=200)
    assert "600 tokens in 3 windows of 200, 597 predicted" in proc.stdout
    assert f"perplexity    {r.ppl:.4f}" in proc.stdout
    assert f"bits/token    {r.bits_per_token:.4f}" in proc.stdout
    assert "KL" not in proc.stdout


def test_cli_errors_are_one_line(tmp_path, other_vocab):
    model = str(rwkvcpp_path("7v0", "Q5_1"))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    one = tmp_path / "one.txt"
    one.write_bytes(b"x")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    ok = tmp_path / "ok.txt"
    ok.write_text("some text to score", encoding="utf-8")
    assert_one_line_error(run_cli("perplexity", model, "--text", str(empty)), "empty.txt", "the text is empty")
    assert_one_line_error(run_cli("perplexity", model, "--text", str(one)), "1 token long")
    assert_one_line_error(run_cli("perplexity", model, "--text", str(latin1)), "latin1.txt", "not UTF-8", "offset 3")
    assert_one_line_error(run_cli("perplexity", model, "--text", str(tmp_path / "nope.txt")), "nope.txt", "No such file")
    assert_one_line_error(run_cli("perplexity", model, "--text", str(ok), "--ctx", "1"), "--ctx must be at least 2")
    assert_one_line_error(
        run_cli("perplexity", model, "--text", str(ok), "--kl-base", other_vocab), "vocabulary mismatch", "300"
    )
