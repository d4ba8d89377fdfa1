"""The RWKV World tokenizer: greedy longest match over UTF-8 bytes against a byte-string vocab.

Builds from a `rwkv_vocab_v20230424.txt`-format file (parsed by quant.vocab_file) or from the
token list directly (as a GGUF file carries it). Gives the reference TRIE_TOKENIZER's ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property

from ..quant.errors import ModelFileError
from ..quant.vocab_file import parse_world_vocab

# Longest-match candidates are grouped by this many leading bytes; 3 keeps most groups small.
_PREFIX = 3


class WorldTokenizer:
    """Greedy longest-match byte tokenizer; `tokens[i]` are the bytes of id `i`.

    Id 0 is end-of-text: whatever `tokens[0]` holds, it is never matched and decodes to no bytes.
    Empty entries are unused ids (GGUF padding rows): never produced, decoded as no bytes. When two
    ids hold the same bytes the higher id is produced, as in the reference tokenizer.
    """

    name = "world"

    def __init__(self, tokens: Sequence[bytes]) -> None:
        if len(tokens) == 0:
            raise ValueError("a World vocabulary needs at least id 0 (end of text)")
        table = [b""]  # id -> bytes
        for i, token in enumerate(tokens[1:], start=1):
            if not isinstance(token, bytes):
                raise TypeError(f"token {i} is {type(token).__name__}, expected bytes")
            table.append(token)
        singles = {t for t in table if len(t) == 1}
        missing = [b for b in range(256) if bytes((b,)) not in singles]
        if missing:
            raise ValueError(
                f"vocabulary has no single-byte token for 0x{missing[0]:02x} "
                f"({len(missing)} bytes missing), so some input could not be encoded"
            )
        self._tokens = table
        self.vocab_size = len(table)

    @classmethod
    def from_vocab_file(
        cls, path: str | os.PathLike[str], n_vocab: int | None = None
    ) -> WorldTokenizer:
        """Read a `rwkv_vocab_v20230424.txt`-style file.

        `n_vocab` pads the vocabulary with unused ids up to the model's embedding size (65536 for
        the World models, whose file defines ids 1..65529); by default vocab_size is last id + 1.
        """
        with open(path, "rb") as f:
            data = f.read()
        return cls.from_vocab_bytes(data, path, n_vocab)

    @classmethod
    def from_vocab_bytes(
        cls, data: bytes, source: str | os.PathLike[str], n_vocab: int | None = None
    ) -> WorldTokenizer:
        """Parse the contents of a vocab file; `source` names it in errors."""
        tokens = parse_world_vocab(data, source)
        if n_vocab is not None:
            if n_vocab < len(tokens):
                raise ModelFileError(
                    source, f"vocabulary has {len(tokens)} ids, more than n_vocab={n_vocab}"
                )
            tokens.extend([b""] * (n_vocab - len(tokens)))
        try:
            return cls(tokens)
        except ValueError as err:
            raise ModelFileError(source, str(err)) from err

    @cached_property
    def _match_tables(self) -> tuple[dict[bytes, int], dict[bytes, tuple[int, ...]]]:
        """(bytes -> id, first-3-bytes -> candidate lengths longest first), built on first encode.

        Candidates for a prefix are the lengths >= 3 of tokens starting with it, then 2 and 1;
        trying them longest first, one dict lookup each, is the greedy longest match. Measured on
        the 35 kB GPL text: 12 ms and 6 MB, against 13 ms and 29 MB for a dict-of-dicts trie walk.
        """
        ids = {t: i for i, t in enumerate(self._tokens) if t}
        by_prefix: dict[bytes, set[int]] = {}
        for token in ids:
            if len(token) >= _PREFIX:
                by_prefix.setdefault(token[:_PREFIX], set()).add(len(token))
        lengths = {p: (*sorted(s, reverse=True), 2, 1) for p, s in by_prefix.items()}
        return ids, lengths

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes | bytearray | memoryview) -> list[int]:
        """Ids for arbitrary bytes (need not be valid UTF-8); never fails, every byte is a token."""
        data = bytes(data)
        ids, lengths = self._match_tables
        lookup = ids.get
        short = (2, 1)
        out: list[int] = []
        pos, n = 0, len(data)
        while pos < n:
            for length in lengths.get(data[pos : pos + _PREFIX], short):
                if pos + length <= n:
                    found = lookup(data[pos : pos + length])
                    if found is not None:
                        out.append(found)
                        break
            # Length 1 is the last candidate and always found (__init__ checked every byte).
            pos += length
        return out

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        table = self._tokens
        if len(ids) and not (0 <= min(ids) and max(ids) < len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise ValueError(f"token id {bad} is outside the vocabulary (size {len(table)})")
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
