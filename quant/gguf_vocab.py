"""The tokenizer inside a GGUF file: what we write for each tokenizer kind, and llama.cpp's token escaping.

World vocabularies follow llama.cpp (`tokenizer.ggml.model = "rwkv"`): id 0 is "<s>" (end of text), ids
1..65529 the vocabulary file's tokens as `repr(bytes)[2:-1]` text (so `\\n`, `\\xe4`, `\\\\`), the rest
"[PAD<id>]" rows of type UNUSED. Byte-level vocabularies use the same scheme with the 256 single bytes.
GPT-NeoX vocabularies carry Hugging Face's tokenizer.json whole. `rwkv_edge.tokenizer` names the kind.
"""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType
from typing import Any

from .vocab_file import parse_world_vocab

# gguf-py's TokenType values.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5
WORLD_EOT = 261  # "\n\n": llama.cpp stops chat turns on it
KIND_KEY = "rwkv_edge.tokenizer"
_VOCAB = __name__.rsplit(".", 1)[0]


def escape_token(token: bytes) -> str:
    """llama.cpp's text for a World token: Python's bytes repr without b'...'."""
    return repr(token)[2:-1]


def unescape_token(text: str) -> bytes:
    """The inverse, as llama.cpp's llama_unescape_rwkv_token: \\t \\n \\r \\xNN, and \\c -> c otherwise."""
    raw = text.encode("utf-8")
    if b"\\" not in raw:
        return raw
    return _ESCAPE.sub(_unescape_one, raw)


# Working on the UTF-8 bytes is exact: an escaped multi-byte character keeps its continuation bytes.
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_CONTROL = MappingProxyType({b"t": b"\t", b"n": b"\n", b"r": b"\r"})


def _unescape_one(match: re.Match[bytes]) -> bytes:
    e = match.group(1)
    if len(e) == 3:
        return bytes([int(e[1:], 16)])
    return _CONTROL.get(e, e)


def world_token_bytes() -> list[bytes]:
    """The bundled World vocabulary as bytes, index = id (id 0 is end of text, b"")."""
    resource = resources.files(_VOCAB) / "vocab" / "rwkv_vocab_v20230424.txt"
    return parse_world_vocab(resource.read_bytes(), str(resource))


def tokenizer_metadata(kind: str, n_vocab: int) -> dict[str, Any]:
    """GGUF key-values for a tokenizer kind: 'world', 'bytes', 'neox' or 'none'."""
    meta: dict[str, Any] = {KIND_KEY: kind}
    if kind in ("world", "bytes"):
        if kind == "world":
            body = world_token_bytes()[1:]
            tokens, types = ["<s>"], [TOKEN_CONTROL]
        else:
            body = [bytes([b]) for b in range(256)]
            tokens, types = [], []
        if len(tokens) + len(body) > n_vocab:
            raise ValueError(f"the {kind} vocabulary has {len(tokens) + len(body)} tokens, the model only {n_vocab}")
        tokens += [escape_token(t) for t in body]
        types += [TOKEN_NORMAL] * len(body)
        pads = n_vocab - len(tokens)
        tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]  # named by id, as llama.cpp's converter does
        types += [TOKEN_UNUSED] * pads
        meta.update({
            "tokenizer.ggml.model": "rwkv",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
        })
        if kind == "world":
            meta.update({
                "tokenizer.ggml.bos_token_id": 0,
                "tokenizer.ggml.eos_token_id": 0,
                "tokenizer.ggml.eot_token_id": WORLD_EOT,
                "tokenizer.chat_template": "rwkv-world",
            })
    elif kind == "neox":
        json_text = (resources.files(_VOCAB) / "vocab" / "20B_tokenizer.json").read_text(encoding="utf-8")
        meta.update({"tokenizer.ggml.model": "none", "tokenizer.huggingface.json": json_text,
                     "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0})
    elif kind == "none":
        meta["tokenizer.ggml.model"] = "none"
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r} (world, neox, bytes or none)")
    return meta


def token_bytes_from_metadata(meta: dict[str, Any]) -> list[bytes]:
    """A "rwkv"-model token list back to bytes, index = id; control and unused rows become b""."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    return [b"" if t in (TOKEN_CONTROL, TOKEN_UNUSED) else unescape_token(s) for s, t in zip(tokens, types)]
