"""What the prefix state cache saves: a chat request that shares a 500-token system message with an earlier
one, and the next turn of a conversation, each timed cold and through a PrefixCache (a developer tool).

    python -m rwkv_edge.tools.bench_cache MODEL.gguf

Token ids are random (RandomState(1234)); the system message ends in World's "\\n\\n" token (261), where the
cache keeps a checkpoint. Both runs must produce the same tokens, or the tool fails.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..runtime.model import load
from ..runtime.prefix_cache import PrefixCache

WORLD_BLANK_LINE = 261


def _timed(f: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = f()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rwkv_edge.tools.bench_cache MODEL", file=sys.stderr)
        return 2
    model = load(args[0])
    n_vocab = min(model.spec.n_vocab, 65529)
    rng = np.random.RandomState(1234)
    blank_line = [10, 10] if model.spec.n_vocab == 256 else [WORLD_BLANK_LINE]  # byte vocabulary: two "\n"
    system = [int(t) for t in rng.randint(1, n_vocab, 500 - len(blank_line))] + blank_line
    q1, q2 = ([int(t) for t in rng.randint(1, n_vocab, 20)] for _ in range(2))
    cache = PrefixCache(max_bytes=64 << 20)
    model.complete(system + q1, max_tokens=1)  # warm-up: page in the weights
    cold, a = _timed(lambda: model.complete(system + q2, max_tokens=1, seed=1))
    model.complete(system + q1, max_tokens=16, seed=1, cache=cache)
    warm, b = _timed(lambda: model.complete(system + q2, max_tokens=1, seed=1, cache=cache))
    turn = model.complete(system + q1, max_tokens=16, seed=2, cache=cache)
    follow = system + q1 + list(turn.tokens) + q2
    cold_turn, c = _timed(lambda: model.complete(follow, max_tokens=1, seed=3))
    warm_turn, d = _timed(lambda: model.complete(follow, max_tokens=1, seed=3, cache=cache))
    if a.tokens != b.tokens or c.tokens != d.tokens:
        print("bench_cache: cached and cold runs differ", file=sys.stderr)
        return 1
    print(f"shared 500-token system message, 20 new tokens: cold {cold * 1e3:.0f} ms, cached {warm * 1e3:.0f} ms "
          f"({cold / warm:.1f}x)")
    print(f"next turn of a conversation ({len(follow)} tokens, 20 new): cold {cold_turn * 1e3:.0f} ms, "
          f"cached {warm_turn * 1e3:.0f} ms ({cold_turn / warm_turn:.1f}x)")
    print(cache.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
