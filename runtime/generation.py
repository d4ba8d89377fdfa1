"""Text generation: feed a prompt, then sample token after token, streaming text pieces as they complete.

    for piece in model.generate("The capital of France is", max_tokens=50, stop=["\\n"], seed=1):
        print(piece, end="", flush=True)
    reply = model.complete("User: hi\\n\\nAssistant:", stop=["\\n\\n"], temperature=0.8)
    reply.text, reply.finish_reason, reply.state   # the state continues the conversation

Pieces are always whole UTF-8 characters (bytes of a character split across tokens wait for the rest) and
never contain a stop string or anything after it (text that may begin one waits until decided). Sampling
follows the rwkv package's PIPELINE, in the order documented in runtime/sampling.py.

The prompt is fed in pieces that end at multiples of the model's CHUNK_LEN (counted from the start of the
prompt), as Model.forward splits a long prompt. A PrefixCache hit resumes from the longest cached prefix of
the prompt: with the C forward pass at any length (a chunk computes the bits of its tokens fed one by one);
on the numpy path only at those boundaries (or for the very same prompt), where the result of a matrix
product depends on how many rows it has. Either way a hit gives a cold run's logits exactly. The state after
a reply is cached as well (C path), so the next turn of a conversation costs only its new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .prefix_cache import PrefixCache
from .sampling import Penalties, SamplingSettings, sample_logits
from .state import State
from .text_stream import TextStream

if TYPE_CHECKING:
    from .model import Model

# Id 0 ends the text in World and GPT-NeoX vocabularies; in a byte vocabulary it is just NUL.
END_TOKEN = 0
_END_TOKEN_VOCABS = ("world", "neox")


@dataclass(frozen=True)
class Completion:
    """A finished generation (`Model.complete`)."""

    text: str
    finish_reason: str  # "stop": a stop string or the end token; "length": max_tokens reached
    prompt_tokens: int
    completion_tokens: int
    tokens: tuple[int, ...]  # generated ids, including those of a stop string (not the end token)
    state: State  # after the prompt and every generated token: continues the conversation


class Generation(Iterator[str]):
    """An iterator of text pieces from one prompt. Made by `Model.generate`.

    While and after iterating: `tokens` (generated ids), `text` (everything yielded), `completion_tokens`,
    `prompt_tokens`, and `finish_reason`: None until finished ("stop" or "length"), and still None if
    `close()` ended it early. `state` is a copy of the state after the prompt and all of `tokens`: a stop
    string's tokens are in it even though its text is not yielded, and the end token is not.
    The prompt is only run by the first `next()` (or `state`), or a chunk at a time by `prefill()`. One
    Generation is for one thread, except `close()`, which any thread may call at any time; it holds no
    resources, so dropping it is enough.
    """

    def __init__(
        self,
        model: Model,
        prompt_ids: list[int],
        settings: SamplingSettings,
        *,
        max_tokens: int,
        stop: Sequence[str],
        seed: int | None,
        state: State | None,
        cache: PrefixCache | None,
    ) -> None:
        tokenizer = model.tokenizer
        self._model = model
        self._prompt = prompt_ids
        self._settings = settings
        self._max_tokens = max_tokens
        self._initial = state.copy() if state is not None else None  # the caller's state is never touched
        self._cache = cache
        self._rng = np.random.default_rng(seed)
        self._penalties = Penalties(settings, model.spec.n_vocab)
        self._stream = TextStream(stop)
        self._end_token = END_TOKEN if tokenizer is not None and tokenizer.name in _END_TOKEN_VOCABS else None
        self._state: State | None = None  # stepped in place; None until the prompt has started
        self._fed = 0  # prompt tokens in self._state
        self._namespace = ""  # of this generation's cache entries, once the prompt has started
        self._logits: np.ndarray | None = None  # (V,) float32 after the last fed token; None until the prompt is in
        self._pending: int | None = None  # sampled and counted, but not yet fed to the model
        self._tokens: list[int] = []
        self._pieces: list[str] = []
        self._closed = False
        self._boundaries: list[int] = []  # prompt lengths to cache a checkpoint at (see message_ends)
        self.finish_reason: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self._prompt)

    @property
    def completion_tokens(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    @property
    def state(self) -> State:
        self._catch_up()
        assert self._state is not None
        return self._state.copy()

    def close(self) -> None:
        """Stop generating: the next `next()` ends the iteration. Safe from any thread, any number of times."""
        self._closed = True

    def prefill(self) -> bool:
        """Feed the next piece of the prompt (at most CHUNK_LEN tokens); True once all of it is in the state.

        For a caller that interleaves other work with a long prompt, or may stop it halfway: `next()`
        feeds all of what is left at once.
        """
        if self._logits is not None:
            return True
        if self._state is None and self._start_prompt():
            return True
        model, ids, cache, state = self._model, self._prompt, self._cache, self._state
        assert state is not None
        n, begin = len(ids), self._fed
        end = min(begin + _chunk_len(), n, *(b for b in self._boundaries if b > begin))
        logits, _ = model.forward(ids[begin:end], state, out=state)
        self._fed = end
        if end < n:
            if cache is not None and cache.checkpoints:
                cache.store(self._namespace, ids[:end], state)
            return False
        if cache is not None:
            cache.store(self._namespace, ids, state, logits)
        self._logits = logits
        return True

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        while self.finish_reason is None and not self._closed:
            piece = self._step()
            if piece:
                self._pieces.append(piece)
                return piece
        raise StopIteration

    def _step(self) -> str:
        """Sample one token (or finish); return the text it completes ("" if none yet)."""
        self._catch_up()
        assert self._logits is not None
        if len(self._tokens) >= self._max_tokens:
            return self._finish("length")
        s = self._settings
        logits = self._penalties.apply(self._logits)  # (V,) float64
        token = sample_logits(logits, self._rng, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              min_p=s.min_p)
        if token == self._end_token:
            return self._finish("stop")
        data = self._token_bytes(token)
        self._tokens.append(token)
        self._penalties.record(token, data.decode("utf-8", errors="replace"))
        self._pending = token
        piece = self._stream.feed(data)
        if self._stream.stopped:
            self.finish_reason = "stop"
            self._remember()
        return piece

    def _finish(self, reason: str) -> str:
        self.finish_reason = reason
        self._remember()
        return self._stream.finish()

    def _remember(self) -> None:
        """Cache the state after the reply too, so that the next turn of a conversation (prompt, reply, new
        message) resumes after the reply; only where any split point computes the cold run's bits."""
        if self._cache is None or self._model.native is None or not self._tokens:
            return
        self._catch_up()
        assert self._state is not None
        self._cache.store(self._namespace, self._prompt + self._tokens, self._state, self._logits)

    def _catch_up(self) -> None:
        """Run the prompt if not done yet, and feed the pending token."""
        while not self.prefill():
            pass
        if self._pending is not None:
            self._logits, _ = self._model.forward([self._pending], self._state, out=self._state)
            self._pending = None

    def _token_bytes(self, token: int) -> bytes:
        tokenizer = self._model.tokenizer
        return tokenizer.decode_bytes([token]) if tokenizer is not None else f"[{token}]".encode()

    def _start_prompt(self) -> bool:
        """Take the starting state: the longest usable cached prefix, or the initial state; True if a cached
        entry covers the whole prompt (and so gives its logits too)."""
        model, ids, cache = self._model, self._prompt, self._cache
        n, chunk = len(ids), _chunk_len()
        hit = None
        if cache is not None:
            self._namespace = cache_namespace(model, self._initial)
            # Only where resuming computes exactly what a cold run would: anywhere with the C forward pass (a
            # chunk gives the bits of its tokens fed one by one), else where a cold run's pieces end.
            split_free = model.native is not None

            def usable(length: int, has_logits: bool) -> bool:
                if length == n:
                    return has_logits
                return length < n and (split_free or length % chunk == 0)

            hit = cache.lookup(self._namespace, ids, usable)
            if split_free and cache.checkpoints:
                self._boundaries = message_ends(model, ids)
        if hit is not None:
            self._state, self._fed = hit.state, hit.length
            if hit.length == n:
                self._logits = hit.logits
                return True
        else:
            self._state = self._initial.copy() if self._initial is not None else model.new_state()
        self._state.fingerprint = model.fingerprint  # whatever state it started from, it now belongs to this model
        return False


def message_ends(model: Model, ids: Sequence[int]) -> list[int]:
    """Prompt lengths just after a token ending in a blank line ("\\n\\n" ends every message of the RWKV chat
    format), before the last token: cache checkpoints there let a conversation that shares its system prompt
    or earlier turns, but not what follows, resume after the shared messages."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        return []
    # a token's last two bytes are all the test needs: each distinct id is decoded once
    tails: dict[int, bytes] = {}
    ends, previous = [], b""
    for i, t in enumerate(ids[:-1]):
        data = tails.get(t)
        if data is None:
            data = tails[t] = tokenizer.decode_bytes([t])[-2:]
        if (previous + data).endswith(b"\n\n"):  # a "\n\n" token, or two "\n" tokens of a byte vocabulary
            ends.append(i + 1)
        previous = data[-1:] if data else previous
    return ends


def _chunk_len() -> int:
    from . import model  # deferred: model.py defers its import of this module the same way

    return model.CHUNK_LEN


def cache_namespace(model: Model, state: State | None) -> str:
    """Cache entries are shared by generations with the same weights and the same initial state."""
    # The forward path is part of the key: the C and numpy paths agree closely, not bit for bit.
    path = "c" if model.native is not None else "numpy"
    return f"{model.fingerprint}/{path}/{state.digest() if state is not None else 'zero'}"


def prompt_ids(model: Model, prompt: str | Sequence[int]) -> list[int]:
    """The prompt as checked token ids."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass the prompt as token ids")
        ids = model.tokenizer.encode(prompt)
    else:
        ids = list(prompt)
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, (int, np.integer))]
        if bad:
            raise ValueError(f"prompt token ids must be integers, got {bad[0]!r}")
        ids = [int(t) for t in ids]
    if not ids:
        raise ValueError("the prompt is empty")
    out_of_range = [t for t in ids if not 0 <= t < model.spec.n_vocab]
    if out_of_range:
        raise ValueError(f"token id {out_of_range[0]} is out of range for a vocabulary of {model.spec.n_vocab}")
    return ids


def generate(
    model: Model,
    prompt: str | Sequence[int],
    *,
    max_tokens: int = 100,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 0,
    min_p: float = 0.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    penalty_decay: float = 0.996,
    logit_bias: Mapping[int, float] | None = None,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    state: State | None = None,
    cache: PrefixCache | None = None,
) -> Generation:
    """Stream a continuation of `prompt` (text, or token ids); arguments are checked here, at once.

    state: start from this state (copied; never modified) instead of a fresh one. cache: reuse and store
    prompt states (see PrefixCache); entries are keyed by the weights and the initial state as well.
    seed: the same seed, prompt and settings give the same text. stop: a string or strings that end the
    text. Ends at max_tokens, at a stop string, or at the end token (id 0 for World and NeoX vocabularies).
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    settings = SamplingSettings(temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty,
                                penalty_decay, logit_bias)
    settings.check(model.spec.n_vocab)
    if state is not None and state.spec != model.spec:
        raise ValueError("the state belongs to a different model")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
    if stop is not None and not isinstance(stop, (str, list, tuple)):
        raise ValueError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    ids = prompt_ids(model, prompt)
    return Generation(model, ids, settings, max_tokens=int(max_tokens), stop=stops, seed=seed, state=state,
                      cache=cache)


def complete(model: Model, prompt: str | Sequence[int], **options: Any) -> Completion:
    """Run `generate` to the end; same arguments."""
    gen = generate(model, prompt, **options)
    for _ in gen:
        pass
    assert gen.finish_reason is not None
    return Completion(gen.text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens, tuple(gen.tokens),
                      gen.state)
