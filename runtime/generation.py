"""Text generation: feed a prompt, then sample token after token, yielding text pieces as they complete.

Pieces are always valid UTF-8: bytes of a character split across tokens are held back until it is whole.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .sampling import sample_logits
from .state import State

if TYPE_CHECKING:
    from .model import Model


def generate(
    model: "Model",
    prompt: str | Sequence[int],
    *,
    max_tokens: int = 100,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 0,
    seed: int | None = None,
    state: State | None = None,
) -> Iterator[str]:
    """Yield the generated text piece by piece. `state` (if given) is not modified.

    Stops after max_tokens, or at end-of-text (id 0) for World and GPT-NeoX vocabularies.
    """
    tokenizer = model.tokenizer
    # Id 0 is the end-of-text token of World and NeoX vocabularies; in a byte vocabulary it is just NUL.
    stop_token = 0 if tokenizer is not None and tokenizer.name != "bytes" else None
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids")
        ids = tokenizer.encode(prompt)
    else:
        ids = list(prompt)
    if not ids:
        raise ValueError("the prompt is empty")
    rng = np.random.default_rng(seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    logits, state = model.forward(ids, state)
    for _ in range(max_tokens):
        token = sample_logits(logits, rng, temperature=temperature, top_p=top_p, top_k=top_k)
        if token == stop_token:
            break
        text = decoder.decode(tokenizer.decode_bytes([token])) if tokenizer is not None else f"[{token}]"
        if text:
            yield text
        logits, state = model.forward([token], state, out=state)
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
