"""An in-memory cache from token prefixes to model states, so a repeated prompt prefix is not computed twice.

    cache = rwkv_edge.PrefixCache(max_bytes=512 << 20)
    for question in questions:
        model.complete(system_prompt + question, cache=cache)  # the shared start is computed once
    print(cache.stats)

Entries are (namespace, token tuple) -> State copy, plus the logits after the last token when the entry ends a
prompt. The namespace names the model weights and the initial state (see `generation.cache_namespace`), so
one cache may serve several models or state-tuned starts. Least recently used entries go first once the
entries' bytes exceed `max_bytes`. All methods are thread-safe; stored states are never handed out, only
copies, so callers may step them in place. Which entries generate() stores and may reuse is its business
(runtime/generation.py): the cache itself just finds the longest stored prefix it is allowed to use.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .state import State

# Rough bytes per cached token id (a tuple slot plus an int object) and per entry (dict, tuple, objects).
_BYTES_PER_TOKEN = 40
_BYTES_PER_ENTRY = 400


@dataclass(frozen=True)
class CacheHit:
    length: int  # how many leading tokens the state covers
    state: State  # a private copy, free to modify
    logits: np.ndarray | None  # (V,) float32 after token `length - 1`, if the entry ended a prompt


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    tokens_saved: int  # prompt tokens not recomputed thanks to hits
    entries: int
    nbytes: int
    evictions: int


@dataclass(frozen=True)
class _Entry:
    state: State  # never modified once stored
    logits: np.ndarray | None  # (V,) float32, never modified
    nbytes: int


class PrefixCache:
    """LRU map from token prefixes to states, bounded by bytes; lookups find the longest cached prefix.

    `checkpoints`: besides the state after each whole prompt, generate() stores the state at every multiple
    of the model's chunk length (256 tokens) inside it, so a long shared start (a system prompt, the
    earlier turns of a chat) helps prompts that go on differently. False stores prompt ends only.
    """

    def __init__(self, max_bytes: int = 512 << 20, *, checkpoints: bool = True) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.checkpoints = checkpoints
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], _Entry] = OrderedDict()  # oldest use first
        self._lengths: dict[str, Counter[int]] = {}  # namespace -> how many entries have each length
        self._nbytes = 0
        self._hits = self._misses = self._tokens_saved = self._evictions = 0

    def lookup(
        self,
        namespace: str,
        tokens: Sequence[int],
        usable: Callable[[int, bool], bool] | None = None,
    ) -> CacheHit | None:
        """The longest cached prefix of `tokens` (counted as a hit), or None (a miss).

        `usable(length, has_logits)` may reject candidates, e.g. a prefix that leaves too little to compute.
        """
        key_tokens = tuple(int(t) for t in tokens)
        with self._lock:
            found = None
            for n in sorted(self._lengths.get(namespace, ()), reverse=True):
                if n > len(key_tokens):
                    continue
                entry = self._entries.get((namespace, key_tokens[:n]))
                if entry is not None and (usable is None or usable(n, entry.logits is not None)):
                    self._entries.move_to_end((namespace, key_tokens[:n]))
                    found = n, entry
                    break
            if found is None:
                self._misses += 1
                return None
            self._hits += 1
            self._tokens_saved += found[0]
        n, entry = found
        # Entries are immutable, so copying outside the lock is safe and keeps other threads moving.
        logits = None if entry.logits is None else entry.logits.copy()
        return CacheHit(n, entry.state.copy(), logits)

    def store(self, namespace: str, tokens: Sequence[int], state: State, logits: np.ndarray | None = None) -> None:
        """Remember `state` (copied) as the state after `tokens`; `logits` (V,) those after the last one."""
        if not len(tokens):
            raise ValueError("cannot cache the state of an empty prefix")
        key = (namespace, tuple(int(t) for t in tokens))
        kept_logits = None if logits is None else np.array(logits, dtype=np.float32)
        nbytes = state.nbytes + (0 if kept_logits is None else kept_logits.nbytes)
        nbytes += _BYTES_PER_ENTRY + _BYTES_PER_TOKEN * len(key[1])
        if nbytes > self.max_bytes:
            return
        entry = _Entry(state.copy(), kept_logits, nbytes)
        with self._lock:
            old = self._entries.get(key)
            if old is not None and old.logits is not None and entry.logits is None:
                self._entries.move_to_end(key)  # a checkpoint never replaces an entry that has logits
                return
            if old is not None:
                self._remove(key)
            self._entries[key] = entry
            self._lengths.setdefault(namespace, Counter())[len(key[1])] += 1
            self._nbytes += nbytes
            while self._nbytes > self.max_bytes:
                self._remove(next(iter(self._entries)))
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lengths.clear()
            self._nbytes = 0

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._tokens_saved, len(self._entries), self._nbytes, self._evictions
            )

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        s = self.stats
        return f"PrefixCache({s.entries} entries, {s.nbytes} of {self.max_bytes} bytes, {s.hits} hits)"

    def _remove(self, key: tuple[str, tuple[int, ...]]) -> None:
        """Drop one entry; the caller holds the lock."""
        entry = self._entries.pop(key)
        self._nbytes -= entry.nbytes
        lengths = self._lengths[key[0]]
        lengths[len(key[1])] -= 1
        if not lengths[len(key[1])]:
            del lengths[len(key[1])]
        if not lengths:
            del self._lengths[key[0]]
