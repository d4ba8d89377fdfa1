"""PrefixCache: hits give exactly the cold run's logits and states, LRU within the byte bound, threads;
and Generation.prefill, which feeds a prompt a chunk at a time.

Truth: Model.forward over the whole prompt (the cold run) and generation without a cache. The model's
chunk length is cut to 16 tokens here, so short prompts cross several chunk boundaries (where the cache
keeps checkpoints) and the tests stay fast on the slow numpy backend too.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import fixture_path

import rwkv_edge
import rwkv_edge.runtime.model
from rwkv_edge import PrefixCache
from rwkv_edge.runtime.generation import cache_namespace

MODEL = ("reference", "tiny-7v0.pth")
CHUNK = 16


@pytest.fixture(autouse=True)
def short_chunks(monkeypatch):
    monkeypatch.setattr(rwkv_edge.runtime.model, "CHUNK_LEN", CHUNK)


@pytest.fixture(scope="module")
def model() -> rwkv_edge.Model:
    return rwkv_edge.load(fixture_path(*MODEL))


@pytest.fixture(scope="module")
def text() -> list[int]:
    return list(fixture_path("text-gpl3.txt").read_bytes()[:2000])


def test_repeated_prompt_hits_with_identical_logits(model, text):
    prompt = text[:40]
    cache = PrefixCache()
    cold_logits, cold_state = model.forward(prompt)
    first = model.complete(prompt, max_tokens=0, cache=cache)
    assert cache.stats.hits == 0 and cache.stats.misses == 1
    hit = cache.lookup(cache_namespace(model, None), prompt)
    assert hit is not None and hit.length == 40
    assert np.array_equal(hit.logits, cold_logits) and hit.state == cold_state == first.state
    again = model.complete(prompt, max_tokens=6, seed=4, cache=cache)
    plain = model.complete(prompt, max_tokens=6, seed=4)
    assert again.tokens == plain.tokens and again.state == plain.state
    assert cache.stats.hits == 2 and cache.stats.tokens_saved == 80


def test_shared_start_resumes_from_a_checkpoint_with_identical_logits(model, text):
    cache = PrefixCache()
    a = text[:60]
    b = text[:53] + text[100:107]
    model.complete(a, max_tokens=0, cache=cache)  # stores states after 16, 32 and 48 tokens, and after 60
    assert len(cache) == 4
    warm = model.complete(b, max_tokens=6, seed=8, cache=cache)
    assert cache.stats.hits == 1 and cache.stats.tokens_saved == 48
    cold = model.complete(b, max_tokens=6, seed=8)
    assert warm.tokens == cold.tokens and warm.state == cold.state
    hit = cache.lookup(cache_namespace(model, None), b)
    cold_logits, cold_state = model.forward(b)
    assert hit.length == len(b) and np.array_equal(hit.logits, cold_logits) and hit.state == cold_state


def test_numpy_path_reuses_only_chunk_boundaries_or_the_same_prompt(text):
    model = rwkv_edge.Model.load(fixture_path(*MODEL), native=False)
    cache = PrefixCache(checkpoints=False)
    model.complete(text[:10], max_tokens=0, cache=cache)
    model.complete(text[:15], max_tokens=0, cache=cache)  # 10 is not a chunk boundary: computed afresh
    model.complete(text[:40], max_tokens=0, cache=cache)  # no checkpoints were kept at 16 or 32
    assert cache.stats.hits == 0 and cache.stats.misses == 3 and len(cache) == 3


def test_c_path_reuses_any_cached_prefix(text):
    model = rwkv_edge.Model.load(fixture_path(*MODEL), native=True)
    cache = PrefixCache(checkpoints=False)
    model.complete(text[:10], max_tokens=0, cache=cache)
    warm = model.complete(text[:15], max_tokens=3, seed=2, cache=cache)  # resumes after 10 tokens
    model.complete(text[:40], max_tokens=0, cache=cache)  # resumes after 15 (the reply is not text[15:18])
    assert cache.stats.hits == 2 and cache.stats.tokens_saved == 25
    assert warm.tokens == model.complete(text[:15], max_tokens=3, seed=2).tokens


def test_the_initial_state_is_part_of_the_key(model, text):
    cache = PrefixCache()
    _, start = model.forward(text[:10])
    model.complete(text[10:30], max_tokens=0, state=start, cache=cache)
    model.complete(text[10:30], max_tokens=0, cache=cache)
    assert cache.stats.hits == 0
    warm = model.complete(text[10:30], max_tokens=4, seed=1, state=start.copy(), cache=cache)
    assert cache.stats.hits == 1
    assert warm.tokens == model.complete(text[10:30], max_tokens=4, seed=1, state=start).tokens


def test_hits_are_private_copies(model, text):
    cache = PrefixCache()
    model.complete(text[:40], max_tokens=0, cache=cache)
    namespace = cache_namespace(model, None)
    hit = cache.lookup(namespace, text[:40])
    hit.state.buffer[:] = 7.0
    hit.logits[:] = 7.0
    again = cache.lookup(namespace, text[:40])
    assert again.state == model.forward(text[:40])[1] and not np.any(again.logits == 7.0)


def test_lru_eviction_keeps_within_the_bound(model, text):
    _, state = model.forward(text[:5])
    logits = np.zeros(model.spec.n_vocab, np.float32)
    one = PrefixCache()
    one.store("ns", [1], state, logits)
    cache = PrefixCache(max_bytes=2 * one.nbytes + 10)
    cache.store("ns", [1], state, logits)
    cache.store("ns", [2], state, logits)
    assert cache.lookup("ns", [1]) is not None  # [1] is now the most recently used
    cache.store("ns", [3], state, logits)
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    assert cache.lookup("ns", [2]) is None and cache.lookup("ns", [1, 5]) is not None
    stats = cache.stats
    assert (stats.evictions, stats.entries, stats.hits, stats.misses) == (1, 2, 2, 1)
    tiny = PrefixCache(max_bytes=one.nbytes - 1)
    tiny.store("ns", [1], state, logits)
    assert len(tiny) == 0 and tiny.nbytes == 0


def test_one_cache_from_several_threads(text):
    prompts = [text[:36] + text[100 + 10 * i : 110 + 10 * i] for i in range(3)]
    serial_model = rwkv_edge.load(fixture_path(*MODEL))
    expected = [serial_model.complete(p, max_tokens=4, seed=i).tokens for i, p in enumerate(prompts)]
    cache = PrefixCache()
    results: dict[tuple[int, int], tuple[int, ...]] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            own = rwkv_edge.load(fixture_path(*MODEL))  # one model per thread; the cache is what is shared
            for round_ in range(2):
                for i, p in enumerate(prompts):
                    results[worker, round_, i] = own.complete(p, max_tokens=4, seed=i, cache=cache).tokens
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(results) == 18 and all(tokens == expected[key[2]] for key, tokens in results.items())
    assert cache.stats.hits + cache.stats.misses == 18 and cache.stats.hits >= 18 - 3 * 3


def test_next_turn_resumes_after_the_reply_with_identical_logits(model, text):
    """With the C forward pass a conversation's next request (prompt + reply + new message) resumes after the
    reply, at a length that is no chunk boundary, and still computes the cold run's logits exactly."""
    if model.native is None:  # the numpy path resumes only at chunk boundaries (tested above)
        model = rwkv_edge.Model.load(fixture_path(*MODEL), native=True)
    cache = PrefixCache()
    prompt = text[:21]
    reply = model.complete(prompt, max_tokens=7, seed=3, cache=cache)
    follow = prompt + list(reply.tokens) + text[300:305]
    hit = cache.lookup(cache_namespace(model, None), follow)
    assert hit is not None and hit.length == 28 and hit.length % CHUNK != 0
    saved = cache.stats.tokens_saved
    warm = model.complete(follow, max_tokens=5, seed=9, cache=cache)
    cold = model.complete(follow, max_tokens=5, seed=9)
    assert cache.stats.tokens_saved - saved == 28
    assert warm.tokens == cold.tokens and warm.state == cold.state
    cold_logits, _ = model.forward(follow)
    assert np.array_equal(model.forward(follow[28:], hit.state)[0], cold_logits)


def test_prefill_feeds_a_chunk_at_a_time_and_changes_nothing(model, text):
    calls: list[int] = []
    own = rwkv_edge.load(fixture_path(*MODEL))
    original = own.forward

    def forward(tokens, *args, **kwargs):
        calls.append(len(tokens))
        return original(tokens, *args, **kwargs)

    own.forward = forward
    gen = own.generate(text[:40], max_tokens=5, seed=3)
    assert [gen.prefill() for _ in range(4)] == [False, False, True, True]
    assert calls == [CHUNK, CHUNK, 40 - 2 * CHUNK]  # and nothing more once the prompt is in
    whole = model.complete(text[:40], max_tokens=5, seed=3)
    assert "".join(gen) == whole.text and tuple(gen.tokens) == whole.tokens and gen.state == whole.state


def test_a_shared_system_message_is_reused_by_a_different_question(text):
    """Checkpoints after each blank line: two conversations sharing only their first message resume after it."""
    model = rwkv_edge.Model.load(fixture_path(*MODEL), native=True)
    system = list(b"System: be brief.\n\n")
    first = system + list(b"User: hi\n\nAssistant:")
    second = system + list(b"User: who are you?\n\nAssistant:")
    cache = PrefixCache()
    model.complete(first, max_tokens=0, cache=cache)
    hit = cache.lookup(cache_namespace(model, None), second)
    assert hit is not None and hit.length == len(system)
    warm = model.complete(second, max_tokens=5, seed=6, cache=cache)
    cold = model.complete(second, max_tokens=5, seed=6)
    assert warm.tokens == cold.tokens and warm.state == cold.state
    assert np.array_equal(model.forward(second[len(system):], hit.state)[0], model.forward(second)[0])
