"""The tokenizer interface, the byte and GPT-NeoX tokenizers, and picking one for a model.

World models (vocab 65536) use `WorldTokenizer`; Pile models (vocab 50277) the GPT-NeoX-20B BPE
through Hugging Face `tokenizers`; byte-level toy models (vocab 256) `ByteTokenizer`. The vocab
files ship as package data in `quant/vocab`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..quant.errors import ModelFileError
from ..quant.gguf_vocab import KIND_KEY, token_bytes_from_metadata
from .world_tokenizer import WorldTokenizer

if TYPE_CHECKING:
    import tokenizers

_QUANT_PACKAGE = __name__.rsplit(".", 2)[0] + ".quant"
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"
NEOX_TOKENIZER_FILE = "20B_tokenizer.json"
WORLD_N_VOCAB = 65536  # World models' embedding rows; the file defines ids 1..65529
NEOX_N_VOCAB = 50277


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. `decode_bytes` is exact; `decode` replaces invalid UTF-8 with U+FFFD."""

    @property
    def name(self) -> str:
        """The family: "bytes", "world" or "neox" (the names `load_tokenizer` accepts)."""
        ...

    @property
    def vocab_size(self) -> int:
        """Ids are 0 <= id < vocab_size; decoding anything else raises ValueError."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The exact bytes, which may end inside a UTF-8 character (streaming holds those back)."""
        ...


class ByteTokenizer:
    """One token per byte of the UTF-8 text: id = byte value."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_bytes(self, data: bytes | bytearray | memoryview) -> list[int]:
        return list(bytes(data))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        if len(ids) and not (0 <= min(ids) and max(ids) < 256):
            bad = next(i for i in ids if not 0 <= i < 256)
            raise ValueError(f"token id {bad} is outside the vocabulary (size 256)")
        return bytes(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class NeoXTokenizer:
    """A byte-level BPE `tokenizer.json` (GPT-NeoX-20B for RWKV Pile models) run by HF `tokenizers`.

    Special added tokens (`<|endoftext|>`, `<|padding|>`) decode to no bytes, as HF's default decode
    skips them. Exact bytes come from the ByteLevel alphabet, not from HF's lossy string decode.
    """

    name = "neox"

    def __init__(self, hf: tokenizers.Tokenizer, source: str | os.PathLike[str]) -> None:
        import tokenizers  # deferred: costs 0.2 s at import and World-only users never need it

        if not isinstance(hf.decoder, tokenizers.decoders.ByteLevel):
            kind = type(hf.decoder).__name__ if hf.decoder is not None else "none"
            problem = f"tokenizer decoder is {kind}; only ByteLevel is supported"
            raise ModelFileError(source, problem)
        # A truncating/padding config from the file would silently change prompts.
        hf.no_truncation()
        hf.no_padding()
        self._hf = hf
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self._tokens = _byte_level_tokens(hf, self.vocab_size)  # id -> bytes

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> NeoXTokenizer:
        with open(path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            problem = f"tokenizer file is not UTF-8 text (byte {err.start})"
            raise ModelFileError(path, problem) from None
        return cls.from_str(text, path)

    @classmethod
    def from_str(cls, json_text: str, source: str | os.PathLike[str] = "<str>") -> NeoXTokenizer:
        """Build from the text of a `tokenizer.json`; `source` names it in errors."""
        import tokenizers

        try:
            hf = tokenizers.Tokenizer.from_str(json_text)
        except Exception as err:  # tokenizers raises bare Exception for every parse error
            problem = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelFileError(source, f"not a tokenizers JSON file: {problem}") from None
        return cls(hf, source)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._hf.encode(text).ids
        return ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        table = self._tokens
        if len(ids) and not (0 <= min(ids) and max(ids) < len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise ValueError(f"token id {bad} is outside the vocabulary (size {len(table)})")
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's ByteLevel alphabet, char -> byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes become U+0100, U+0101, ... in
    byte order, so every token string is printable.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = {chr(b): b for b in printable}
    others = [b for b in range(256) if chr(b) not in alphabet]
    alphabet.update({chr(0x100 + k): b for k, b in enumerate(others)})
    return alphabet


def _byte_level_tokens(hf: tokenizers.Tokenizer, vocab_size: int) -> list[bytes]:
    """id -> exact bytes. Like HF's ByteLevel decoder, a token with any char outside the alphabet
    (the space-run added tokens) is taken as its own UTF-8 text."""
    alphabet = _byte_level_alphabet()
    special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    table: list[bytes] = []
    for i in range(vocab_size):
        text = hf.id_to_token(i)
        if text is None or i in special:
            table.append(b"")
        elif all(c in alphabet for c in text):
            table.append(bytes([alphabet[c] for c in text]))
        else:
            table.append(text.encode("utf-8"))
    return table


def _bundled(file_name: str) -> bytes:
    return (resources.files(_QUANT_PACKAGE) / "vocab" / file_name).read_bytes()


def world_tokenizer() -> WorldTokenizer:
    """The World tokenizer from the bundled vocab file, vocab_size 65536."""
    data = _bundled(WORLD_VOCAB_FILE)
    return WorldTokenizer.from_vocab_bytes(data, WORLD_VOCAB_FILE, WORLD_N_VOCAB)


def neox_tokenizer() -> NeoXTokenizer:
    """The GPT-NeoX-20B tokenizer from the bundled `20B_tokenizer.json`, vocab_size 50277."""
    text = _bundled(NEOX_TOKENIZER_FILE).decode("utf-8")
    return NeoXTokenizer.from_str(text, NEOX_TOKENIZER_FILE)


def tokenizer_for_vocab(n_vocab: int) -> Tokenizer | None:
    """The tokenizer RWKV models with this embedding size use, or None if none is standard."""
    if n_vocab == WORLD_N_VOCAB:
        return world_tokenizer()
    if n_vocab == NEOX_N_VOCAB:
        return neox_tokenizer()
    if n_vocab == ByteTokenizer.vocab_size:
        return ByteTokenizer()
    return None


def load_tokenizer(spec: str) -> Tokenizer:
    """`spec` is "world", "neox", "bytes", or a path to a World vocab .txt or tokenizer .json."""
    if spec == "world":
        return world_tokenizer()
    if spec == "neox":
        return neox_tokenizer()
    if spec == "bytes":
        return ByteTokenizer()
    suffix = os.path.splitext(spec)[1].lower()
    if suffix == ".txt":
        return WorldTokenizer.from_vocab_file(spec)
    if suffix == ".json":
        return NeoXTokenizer.from_file(spec)
    raise ValueError(
        f"unknown tokenizer {spec!r}: expected world, neox, bytes, or a path to a .txt World vocab "
        "or a .json tokenizer"
    )


def tokenizer_from_gguf(metadata: Mapping[str, Any], n_vocab: int) -> Tokenizer | None:
    """The tokenizer a GGUF file carries (docs/format.md), or None for a file without one."""
    kind = metadata.get(KIND_KEY)
    model = metadata.get("tokenizer.ggml.model")
    if kind == "bytes":
        return ByteTokenizer()
    if "tokenizer.huggingface.json" in metadata:
        return NeoXTokenizer.from_str(str(metadata["tokenizer.huggingface.json"]), "tokenizer.huggingface.json")
    if model == "rwkv" and "tokenizer.ggml.tokens" in metadata:
        tokens = token_bytes_from_metadata(dict(metadata))
        return WorldTokenizer(tokens + [b""] * max(0, n_vocab - len(tokens)))
    return None
