"""model.generate / model.complete: sampling against the official PIPELINE, stop strings, UTF-8, end token, state.

Truth: the rwkv package's own PIPELINE.generate (penalties, penalty decay, top-p/top-k/temperature) driven by
our forward pass, with its final random draw replaced by the documented inverse-CDF draw; hand-written
formulas for min_p and logit_bias; Model.forward for greedy decoding and for the states.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fixture_path
from rwkv.utils import PIPELINE, PIPELINE_ARGS
from synthetic_checkpoints import make_checkpoint, save_checkpoint

import rwkv_edge
from rwkv_edge.runtime.sampling import probabilities, sample_logits
from rwkv_edge.runtime.text_stream import TextStream

PROMPT = "In a shocking finding, scientists"


@pytest.fixture(scope="module")
def model() -> rwkv_edge.Model:
    return rwkv_edge.load(fixture_path("reference", "tiny-7v0.pth"))


def greedy_reference(model: rwkv_edge.Model, ids: list[int], n: int) -> list[int]:
    logits, state = model.forward(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits, state = model.forward([out[-1]], state)
    return out


def stepped_state(model: rwkv_edge.Model, ids: list[int], tokens, state=None) -> rwkv_edge.State:
    """The state generation reaches: the prompt in one call, then one call per generated token.

    Bitwise equal only along the same calls: the numpy backend's matrix products round by row count.
    """
    _, state = model.forward(ids, state)
    for token in tokens:
        _, state = model.forward([token], state)
    return state


def inverse_cdf(p: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(np.asarray(p, dtype=np.float64))
    return int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))


# ------------------------------------------------------------------------------------------- sampling


def test_same_seed_same_text_and_other_seed_other_text(model):
    a = model.complete(PROMPT, max_tokens=40, seed=11)
    b = model.complete(PROMPT, max_tokens=40, seed=11)
    c = model.complete(PROMPT, max_tokens=40, seed=12)
    assert a.tokens == b.tokens and a.text == b.text and len(a.tokens) == 40
    assert a.tokens != c.tokens


def test_temperature_zero_is_greedy(model):
    ids = model.tokenizer.encode(PROMPT)
    done = model.complete(PROMPT, max_tokens=30, temperature=0, seed=1)
    assert list(done.tokens) == greedy_reference(model, ids, 30)
    assert done.finish_reason == "length" and done.completion_tokens == 30 and done.prompt_tokens == len(ids)
    assert done.text == bytes(done.tokens).decode("utf-8", errors="replace")


class _ModelForPipeline:
    """What PIPELINE needs of a model: forward(tokens, state) -> (torch logits, state)."""

    def __init__(self, model: rwkv_edge.Model) -> None:
        self.model = model

    def forward(self, tokens, state):
        logits, state = self.model.forward(tokens, state)
        return torch.from_numpy(logits.copy()), state


class _Codec:
    """PIPELINE's tokenizer slot (its class name must not contain 'Tokenizer', or PIPELINE calls .ids)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def pipeline_tokens(model, prompt, n, seed, monkeypatch, *, temperature, top_p, top_k, presence, frequency, decay):
    """Tokens the official PIPELINE.generate picks, its np.random.choice swapped for our documented draw."""
    pipe = PIPELINE.__new__(PIPELINE)
    pipe.model = _ModelForPipeline(model)
    pipe.tokenizer = _Codec(model.tokenizer)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []

    def sample_logits(logits, temperature, top_p, top_k):
        captured = {}

        def choice(a, p):
            captured["p"] = np.array(p, dtype=np.float64)
            return 0

        with monkeypatch.context() as m:
            m.setattr(np.random, "choice", choice)
            PIPELINE.sample_logits(pipe, logits, temperature=temperature, top_p=top_p, top_k=top_k)
        chosen.append(inverse_cdf(captured["p"], rng))
        return chosen[-1]

    pipe.sample_logits = sample_logits
    args = PIPELINE_ARGS(temperature=temperature, top_p=top_p, top_k=top_k, alpha_frequency=frequency,
                         alpha_presence=presence, alpha_decay=decay, token_ban=[], token_stop=[])
    pipe.generate(prompt, token_count=n, args=args)
    return chosen


@pytest.mark.parametrize(
    "temperature, top_p, top_k, presence, frequency, decay",
    [
        (0.3, 0.9, 0, 0.5, 0.5, 0.996),
        (0.7, 0.6, 30, 0.0, 1.0, 0.9),
        (0.5, 0.99, 0, 2.0, 0.0, 1.0),
        (1.0, 0.85, 0, 0.0, 0.0, 0.996),
    ],
)
def test_penalties_and_sampling_follow_pipeline(model, monkeypatch, temperature, top_p, top_k, presence, frequency,
                                                decay):
    seed, n = 5, 32
    expected = pipeline_tokens(model, PROMPT, n, seed, monkeypatch, temperature=temperature, top_p=top_p,
                               top_k=top_k, presence=presence, frequency=frequency, decay=decay)
    ours = model.complete(PROMPT, max_tokens=n, seed=seed, temperature=temperature, top_p=top_p, top_k=top_k,
                          presence_penalty=presence, frequency_penalty=frequency, penalty_decay=decay)
    assert list(ours.tokens) == expected
    # PIPELINE's zero-weight tokens (space, digits) must have come up, or that rule went untested.
    if presence or frequency:
        assert any(bytes([t]).decode("utf-8", "replace") in " \t0123456789" for t in expected)


def test_penalty_changes_the_tokens(model):
    plain = model.complete(PROMPT, max_tokens=40, seed=3)
    penalised = model.complete(PROMPT, max_tokens=40, seed=3, presence_penalty=1.0, frequency_penalty=1.0)
    assert plain.tokens != penalised.tokens


def test_min_p_and_logit_bias_follow_their_formulas(model):
    ids = model.tokenizer.encode(PROMPT)
    seed, n, min_p, temperature = 9, 40, 0.05, 0.8
    bias = {ord("e"): 2.0, ord(" "): -1.5, ord("a"): -np.inf}
    rng = np.random.default_rng(seed)
    logits, state = model.forward(ids)
    expected = []
    for _ in range(n):
        z = logits.astype(np.float64)
        for token, b in bias.items():
            z[token] += b
        p = np.exp(z - z.max())
        p /= p.sum()
        p[p < min_p * p.max()] = 0.0
        p = p ** (1 / temperature)
        expected.append(inverse_cdf(p / p.sum(), rng))
        logits, state = model.forward([expected[-1]], state)
    ours = model.complete(PROMPT, max_tokens=n, seed=seed, temperature=temperature, top_p=1.0, min_p=min_p,
                          logit_bias=bias)
    assert list(ours.tokens) == expected
    assert ord("a") not in expected


def test_low_temperature_does_not_underflow():
    # p ** (1 / 0.001) is 0.0 in float64 for every p below about 0.49: the distribution must still be
    # softmax(log p / T), nearly all on the likeliest token, never NaN or a draw from the tail.
    p = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    for temperature in (0.001, 0.01, 0.05):
        expected = torch.softmax(torch.log(torch.tensor(p, dtype=torch.float64)) / temperature, 0).numpy()
        ours = probabilities(np.log(p), temperature=temperature, top_p=1.0)
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-300)
    rng = np.random.default_rng(0)
    assert [sample_logits(np.log(p), rng, temperature=0.001) for _ in range(20)] == [0] * 20


def test_banned_greedy_token_gives_the_second_best(model):
    ids = model.tokenizer.encode(PROMPT)
    logits, _ = model.forward(ids)
    first, second = np.argsort(logits)[::-1][:2]
    done = model.complete(ids, max_tokens=1, temperature=0, logit_bias={int(first): float("-inf")})
    assert done.tokens == (int(second),)


# ------------------------------------------------------------------------------------------- text


def test_text_stream_holds_back_split_characters_and_stop_prefixes():
    stream = TextStream(["\n\nUser:", "STOP"])
    pieces = [stream.feed(b) for b in [b"ab", b"\xc3", b"\xa9c\n", b"\nUs", b"e", b"r:tail"]]
    assert pieces == ["ab", "", "\u00e9c", "", "", ""]
    assert stream.stopped and stream.finish() == ""
    stream = TextStream(["\n\nUser:"])
    pieces = [stream.feed(b) for b in [b"x\n", b"\nU", b"h\xe2\x82"]]
    assert pieces == ["x", "", "\n\nUh"] and not stream.stopped
    assert stream.finish() == "\ufffd"  # an unfinished character at the very end


def test_earliest_stop_string_wins():
    stream = TextStream(["cd", "bc"])
    assert stream.feed(b"abcde") == "a" and stream.stopped


def test_stop_string_split_across_tokens(model):
    ids = model.tokenizer.encode(PROMPT)
    tokens = greedy_reference(model, ids, 80)
    full = bytes(tokens).decode("utf-8", errors="replace")
    start = next(i for i in range(3, len(full) - 5) if full.find(full[i : i + 5]) == i)
    stop = full[start : start + 5]
    k = next(k for k in range(len(tokens) + 1) if stop in bytes(tokens[:k]).decode("utf-8", errors="replace"))
    gen = model.generate(PROMPT, max_tokens=80, temperature=0, stop=[stop, "\x01never"])
    pieces = list(gen)
    assert "".join(pieces) == full[:start] == gen.text
    assert gen.finish_reason == "stop"
    assert gen.tokens == tokens[:k] and k >= start + 5  # the stop string spans five tokens at least
    assert gen.state == stepped_state(model, ids, tokens[:k])  # the stop string's tokens are in the state


def test_possible_stop_prefix_is_released_at_the_end(model):
    ids = model.tokenizer.encode(PROMPT)
    tokens = greedy_reference(model, ids, 30)
    full = bytes(tokens).decode("utf-8", errors="replace")
    gen = model.generate(ids, max_tokens=30, temperature=0, stop=full[-2:] + "\x01")
    assert "".join(gen) == full and gen.finish_reason == "length"


@pytest.mark.parametrize("char", ["\u00e9", "\u20ac"])
def test_pieces_are_whole_characters(model, char):
    # Only the bytes of `char` (c3 a9, or e2 82 ac) can be drawn: characters split over tokens, and broken ones.
    allowed = set(char.encode())
    bias = {t: -np.inf for t in range(256) if t not in allowed}
    gen = model.generate(PROMPT, max_tokens=64, seed=4, top_p=1.0, logit_bias=bias)
    pieces = list(gen)
    text = bytes(gen.tokens).decode("utf-8", errors="replace")
    assert "".join(pieces) == text  # a split piece would have shown U+FFFD where the whole decode has `char`
    assert char in text and "\ufffd" in text
    assert all(piece for piece in pieces)


# ------------------------------------------------------------------------------------------- end token, state


def test_end_token_stops_world_vocab_only(tmp_path, model):
    sd = make_checkpoint("7", n_embd=32, n_layer=1, head_size=16, vocab=65536,
                         lora={"w": 8, "a": 8, "v": 8, "g": 8}, seed=1)
    path = tmp_path / "world.pth"
    save_checkpoint(sd, str(path))
    world = rwkv_edge.load(path)
    assert world.tokenizer.name == "world"
    done = world.complete("Hi", max_tokens=5, logit_bias={0: 100.0})
    assert done.finish_reason == "stop" and done.tokens == () and done.text == ""
    assert done.state == world.forward(world.tokenizer.encode("Hi"))[1]  # the end token is not fed
    nul = model.complete(PROMPT, max_tokens=3, logit_bias={0: 100.0})  # bytes: id 0 is just NUL
    assert nul.tokens == (0, 0, 0) and nul.text == "\x00" * 3 and nul.finish_reason == "length"


def test_state_continues_and_the_given_state_is_untouched(model):
    ids = model.tokenizer.encode(PROMPT)
    _, start = model.forward(ids[:5])
    before = start.copy()
    done = model.complete(ids[5:], max_tokens=12, seed=2, state=start)
    assert start == before
    assert done.state == stepped_state(model, ids[5:], done.tokens, start)
    again = model.complete(ids, max_tokens=12, seed=2)
    assert again.tokens == done.tokens  # from a state or from scratch: the same continuation


def test_close_stops_early(model):
    gen = model.generate(PROMPT, max_tokens=50, seed=1, top_p=1.0)
    first = [next(gen), next(gen), next(gen)]
    gen.close()
    gen.close()
    assert list(gen) == [] and gen.finish_reason is None
    assert "".join(first) == gen.text
    assert gen.state == stepped_state(model, model.tokenizer.encode(PROMPT), gen.tokens)


def test_zero_max_tokens_runs_the_prompt_only(model):
    done = model.complete(PROMPT, max_tokens=0)
    assert done.tokens == () and done.text == "" and done.finish_reason == "length"
    assert done.state == model.forward(model.tokenizer.encode(PROMPT))[1]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"penalty_decay": 1.5}, "penalty_decay"),
        ({"logit_bias": {256: 1.0}}, "logit_bias"),
        ({"logit_bias": {t: -np.inf for t in range(256)}}, "every token"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_arguments_fail_at_once(model, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        model.generate(PROMPT, **kwargs)


def test_bad_prompts_fail_at_once(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate("")
    with pytest.raises(ValueError, match="out of range"):
        model.generate([1, 256])
    other = rwkv_edge.load(fixture_path("reference", "tiny-6v0.pth"))
    with pytest.raises(ValueError, match="different model"):
        model.generate(PROMPT, state=other.new_state())
