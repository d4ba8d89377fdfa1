"""Turning generated token bytes into text pieces that are whole UTF-8 characters and never part of a stop string.

Two things are held back: the bytes of a character split over tokens (until it is complete), and text that
might be the start of a stop string (until the next tokens decide). A stop string ends the stream; it and
everything after it are never emitted.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """feed(bytes) -> text safe to show now; `stopped` once a stop string appeared; finish() -> the rest."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError("stop strings must be non-empty strings")
        self.stop = tuple(stop)
        self.stopped = False
        # errors="replace": bytes that can never become a character show as U+FFFD instead of blocking.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text that may be the start of a stop string

    def feed(self, data: bytes) -> str:
        """Take the next token's bytes; return the text that can be shown now ("" if none)."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.decode(data))

    def finish(self) -> str:
        """No more tokens: the held-back text (an unfinished character becomes U+FFFD), unless stopped."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            return text[:cut]
        return text

    def _release(self, text: str) -> str:
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_stop_len(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest end of `text` that is the beginning of some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest
