"""runtime/tokenizer.py and world_tokenizer.py against reference tokenizers and published vectors.

Truth: the rwkv pip package's TRIE_TOKENIZER (with the vocab file shipped inside that package), HF
`tokenizers` on 20B_tokenizer.json, and the test vectors printed in rwkv-math.md section 13.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
import rwkv
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

from rwkv_edge.quant.errors import ModelFileError
from rwkv_edge.runtime.tokenizer import (
    ByteTokenizer,
    NeoXTokenizer,
    Tokenizer,
    _byte_level_alphabet,
    load_tokenizer,
    tokenizer_for_vocab,
)
from rwkv_edge.runtime.world_tokenizer import WorldTokenizer

REPO = Path(__file__).parent.parent
GPL3 = REPO / "tests" / "fixtures" / "text-gpl3.txt"
WORLD_VOCAB = REPO / "quant" / "vocab" / "rwkv_vocab_v20230424.txt"
NEOX_JSON = REPO / "quant" / "vocab" / "20B_tokenizer.json"
REFERENCE_VOCAB = Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"

MIXED_TEXTS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.\n\nUser: hi\n\nAssistant:",
    "中华人民共和国，简称中国，是位于东亚的社会主义国家。",
    "日本語のテキスト：ひらがな、カタカナ、漢字。ｶﾀｶﾅ半角",
    "emoji 😀🎉👨‍👩‍👧‍👦🏳️‍🌈 flags 🇯🇵 skin 👍🏽",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != 0: pass\r\n",
    "control \x00\x01\x02\x07\x1b[0m\x7f\x0b\x0c\x1c\x85\u2028 end",
    "<|endoftext|>hello<|endoftext|><|padding|>",
    "I'll 'd test блабла 以下は、]) -> <|endoftext|><|padding|> int",
    " " * 300 + "x" + "-" * 200 + "\n" * 50,
    "Ünïcödé Ελληνικά العربية עברית हिन्दी ไทย 한국어 combining e\u0301",
]

INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff\x00abc",
    b"\xe4\xbd",  # truncated 3-byte character
    b"abc\xe4",
    b"\x80\x81\xbf",  # lone continuation bytes
    b"\xc0\xaf",  # overlong '/'
    b"\xed\xa0\x80",  # UTF-8-encoded surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    "中文".encode()[1:] + "😀".encode()[:3],
]


@pytest.fixture(scope="module")
def reference() -> TRIE_TOKENIZER:
    return TRIE_TOKENIZER(str(REFERENCE_VOCAB))


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    tok = load_tokenizer("world")
    assert isinstance(tok, WorldTokenizer)
    return tok


@pytest.fixture(scope="module")
def hf_neox() -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(NEOX_JSON))


@pytest.fixture(scope="module")
def neox() -> NeoXTokenizer:
    tok = load_tokenizer("neox")
    assert isinstance(tok, NeoXTokenizer)
    return tok


# --------------------------------------------------------------------------------------------------
# World: published vectors and the reference tokenizer


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        (
            "I'll 'd test блабла 以下は、]) -> <|endoftext|><|padding|> int",
            [74, 5229, 274, 101, 32223, 5092, 27980, 2795, 27980, 33, 10399, 10258, 10139, 10079,
             1682, 3463, 295, 125, 25258, 7588, 2318, 125, 790, 125, 49520, 125, 63, 21888],
        ),
        (
            "The Eiffel tower is in the city of",
            [6699, 304, 25740, 109, 39990, 4600, 4596, 22590, 30449, 4706],
        ),
        ("Hello world", [33155, 40213]),
        ("\n\nUser: hi", [261, 24281, 59, 4571]),
        ("\nIn a shocking finding", [11, 1136, 332, 57212, 51746]),
    ],
)
def test_world_published_vectors(world: WorldTokenizer, text: str, ids: list[int]) -> None:
    assert world.encode(text) == ids
    assert world.decode(ids) == text


def test_world_vocab_parse_matches_reference(
    world: WorldTokenizer, reference: TRIE_TOKENIZER
) -> None:
    assert len(reference.idx2token) == 65529
    assert world.decode_bytes([0]) == b""
    for i, token in reference.idx2token.items():
        assert world.decode_bytes([i]) == token, i


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_world_matches_reference_on_mixed_text(
    world: WorldTokenizer, reference: TRIE_TOKENIZER, text: str
) -> None:
    ids = world.encode(text)
    assert ids == reference.encode(text)
    assert world.decode(ids) == text
    assert world.decode_bytes(ids) == text.encode("utf-8")


def test_world_endoftext_is_plain_text(world: WorldTokenizer) -> None:
    assert 0 not in world.encode("<|endoftext|>")


def test_world_long_text_matches_reference(
    world: WorldTokenizer, reference: TRIE_TOKENIZER
) -> None:
    text = GPL3.read_text(encoding="utf-8")
    assert len(text.encode()) > 30_000
    ids = world.encode(text)
    assert ids == reference.encode(text)
    assert world.decode(ids) == text


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_world_invalid_utf8_bytes(
    world: WorldTokenizer, reference: TRIE_TOKENIZER, data: bytes
) -> None:
    ids = world.encode_bytes(data)
    assert ids == reference.encodeBytes(data)
    assert world.decode_bytes(ids) == data
    assert world.decode(ids) == data.decode("utf-8", errors="replace")
    assert "\ufffd" in world.decode(ids)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_world_random_unicode(world: WorldTokenizer, reference: TRIE_TOKENIZER, text: str) -> None:
    ids = world.encode(text)
    assert ids == reference.encode(text)
    assert world.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_world_random_bytes(world: WorldTokenizer, reference: TRIE_TOKENIZER, data: bytes) -> None:
    ids = world.encode_bytes(data)
    assert ids == reference.encodeBytes(data)
    assert world.decode_bytes(ids) == data


def test_world_partial_utf8_tokens_decode_exactly(world: WorldTokenizer) -> None:
    # ids 1..256 are the single bytes; 0xe4 alone is half a character.
    assert world.decode_bytes([0xE4 + 1]) == b"\xe4"
    assert world.decode([0xE4 + 1]) == "\ufffd"
    ids = world.encode_bytes("😀".encode()[:2])
    assert world.decode_bytes(ids) == b"\xf0\x9f"


def test_world_special_and_bad_ids(world: WorldTokenizer) -> None:
    assert world.vocab_size == 65536
    assert world.decode_bytes([0, 65529, 0]) == b" " * 128
    assert world.decode_bytes(list(range(65530, 65536))) == b""
    for bad in (65536, -1, 10**9):
        with pytest.raises(ValueError, match=str(bad)):
            world.decode_bytes([33, bad])
    assert world.decode_bytes([]) == b""


# --------------------------------------------------------------------------------------------------
# World: building from a token list and reading vocab files


def test_world_from_token_list(reference: TRIE_TOKENIZER) -> None:
    # The GGUF shape: "<s>" at id 0 and unused padding rows, given as empty bytes.
    tokens = [b"<s>"] + [reference.idx2token[i] for i in range(1, 65530)] + [b""] * 6
    tok = WorldTokenizer(tokens)
    assert tok.vocab_size == 65536
    text = "<s> Hello 世界 😀 " + GPL3.read_text(encoding="utf-8")[:2000]
    assert tok.encode(text) == reference.encode(text)
    assert tok.decode_bytes([0, 65535]) == b""


def test_world_small_token_list_greedy() -> None:
    ab, abcd, abcde, bcd = 257, 258, 259, 260
    tokens = [b""] + [bytes((b,)) for b in range(256)] + [b"ab", b"abcd", b"abcde", b"bcd"]
    tok = WorldTokenizer(tokens)
    assert tok.encode("abcdeabcabx") == [abcde, ab, ord("c") + 1, ab, ord("x") + 1]
    assert tok.encode("abcdx") == [abcd, ord("x") + 1]
    assert tok.encode("abcdabcde") == [abcd, abcde]
    assert tok.encode("bcdab") == [bcd, ab]
    assert tok.encode("abc") == [ab, ord("c") + 1]


def test_world_duplicate_tokens_take_the_higher_id() -> None:
    tokens = [b""] + [bytes((b,)) for b in range(256)] + [b"xy", b"xy"]
    assert WorldTokenizer(tokens).encode("xy") == [258]


def test_world_token_list_without_all_bytes() -> None:
    tokens = [b""] + [bytes((b,)) for b in range(255)]
    with pytest.raises(ValueError, match="0xff"):
        WorldTokenizer(tokens)
    with pytest.raises(TypeError, match="token 3"):
        WorldTokenizer([b"", b"a", b"b", "c"])  # type: ignore[list-item]


def _vocab_file(tmp_path: Path, extra_lines: list[str]) -> Path:
    lines = [f"{b + 1} {bytes((b,))!r} 1" for b in range(256)] + extra_lines
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_world_vocab_file_literals(tmp_path: Path) -> None:
    path = _vocab_file(
        tmp_path,
        ["257 'ab' 2", "258 \"it's\" 4", "259 '\\n\\n' 2", "260 b'\\xe4\\xbd' 2", "261 '中' 3"],
    )
    tok = WorldTokenizer.from_vocab_file(path)
    assert tok.vocab_size == 262
    assert [tok.decode_bytes([i]) for i in range(257, 262)] == [
        b"ab", b"it's", b"\n\n", b"\xe4\xbd", "中".encode()]
    assert tok.encode("it's\n\n中") == [258, 259, 261]
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert WorldTokenizer.from_vocab_file(crlf).encode("it's\n\n中") == [258, 259, 261]
    assert isinstance(load_tokenizer(str(path)), WorldTokenizer)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("257 'ab' 3", "line 257: token is 2 bytes but the line says 3"),
        ("258 'ab' 2", "line 257: id 258, expected 257"),
        ("257 'ab'", "line 257: expected"),
        ("x 'ab' 2", "decimal"),
        ("257 __import__('os').system('false') 1", "not a literal"),
        ("257 12 2", "literal is int"),
        ("257 'ab 2", "not a literal"),
        ("257 '\\ud800' 3", "surrogate"),
        ("257 " + "(" * 5000 + " 1", "not a literal"),
    ],
)
def test_world_bad_vocab_file(tmp_path: Path, line: str, problem: str) -> None:
    path = _vocab_file(tmp_path, [line])
    with pytest.raises(ModelFileError, match=problem) as err:
        WorldTokenizer.from_vocab_file(path)
    assert str(path) in str(err.value)


def test_world_bad_vocab_files(tmp_path: Path) -> None:
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"1 '\xff' 1\n")
    with pytest.raises(ModelFileError, match="not UTF-8"):
        WorldTokenizer.from_vocab_file(binary)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n")
    with pytest.raises(ModelFileError, match="no tokens"):
        WorldTokenizer.from_vocab_file(empty)
    few = tmp_path / "few.txt"
    few.write_text("1 'a' 1\n2 'b' 1\n", encoding="utf-8")
    with pytest.raises(ModelFileError, match="no single-byte token for 0x00"):
        WorldTokenizer.from_vocab_file(few)
    with pytest.raises(ModelFileError, match="more than n_vocab=1000"):
        WorldTokenizer.from_vocab_file(WORLD_VOCAB, n_vocab=1000)
    with pytest.raises(FileNotFoundError):
        WorldTokenizer.from_vocab_file(tmp_path / "missing.txt")


# --------------------------------------------------------------------------------------------------
# GPT-NeoX-20B


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [12092, 1533]),
        (
            "The Eiffel tower is in the city of",
            [510, 444, 1648, 293, 15469, 310, 275, 253, 2846, 273],
        ),
        (
            "\nIn a shocking finding, scientist discovered a herd of dragons",
            [187, 688, 247, 29103, 4560, 13, 20687, 6888, 247, 33361, 273, 41705],
        ),
        ("    x = 1  # two spaces", [50274, 89, 426, 337, 50276, 4, 767, 8470]),
        ("<|endoftext|>hi", [0, 5801]),
    ],
)
def test_neox_published_vectors(neox: NeoXTokenizer, text: str, ids: list[int]) -> None:
    assert neox.encode(text) == ids
    assert neox.decode(ids) == text.replace("<|endoftext|>", "")


def test_neox_special_tokens_decode_to_nothing(
    neox: NeoXTokenizer, hf_neox: tokenizers.Tokenizer
) -> None:
    assert neox.vocab_size == 50277
    assert neox.decode_bytes([0, 1]) == b""
    assert neox.decode([0, 5801, 1]) == hf_neox.decode([0, 5801, 1]) == "hi"


def test_neox_every_id_decodes_like_hf(neox: NeoXTokenizer, hf_neox: tokenizers.Tokenizer) -> None:
    for i in range(neox.vocab_size):
        assert neox.decode([i]) == hf_neox.decode([i]), i


def test_neox_byte_alphabet_is_hf(neox: NeoXTokenizer) -> None:
    alphabet = _byte_level_alphabet()
    assert set(alphabet) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert sorted(alphabet.values()) == list(range(256))
    # Every byte that valid UTF-8 can hold (all but C0 C1 F5..FF), mapped by HF's own pre-tokenizer.
    chars = [chr(c) for c in range(0x800)]
    for lead in range(0xE0, 0xF0):
        chars.append(bytes((lead, 0xA0 if lead == 0xE0 else 0x80, 0x80)).decode())
    for lead in range(0xF0, 0xF5):
        chars.append(bytes((lead, 0x90 if lead == 0xF0 else 0x80, 0x80, 0x80)).decode())
    text = "".join(chars)
    pre = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    mapped = "".join(piece for piece, _ in pre.pre_tokenize_str(text))
    data = text.encode("utf-8")
    assert len(mapped) == len(data) and len(set(data)) == 256 - 13
    assert [alphabet[c] for c in mapped] == list(data)
    vocab = tokenizers.Tokenizer.from_file(str(NEOX_JSON)).get_vocab()
    ids = [vocab["Ġ"], vocab["Ċ"], vocab["Ã"], vocab["©"]]
    assert neox.decode_bytes(ids) == b" \n\xc3\xa9"
    assert neox.decode(ids) == " \né"


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_neox_bytes_round_trip_with_partial_utf8_ids(neox: NeoXTokenizer, text: str) -> None:
    normal = unicodedata.normalize("NFC", text)
    ids = neox.encode(text)
    pieces = [neox.decode_bytes([i]) for i in ids]
    expected = normal.replace("<|endoftext|>", "").replace("<|padding|>", "")
    assert b"".join(pieces) == expected.encode()
    assert neox.decode_bytes(ids) == b"".join(pieces)


def test_neox_has_partial_utf8_ids(neox: NeoXTokenizer) -> None:
    ids = neox.encode("emoji 😀🎉 and 中华人民共和国")
    pieces = [neox.decode_bytes([i]) for i in ids]
    partial = [p for p in pieces if p.decode("utf-8", "replace") != p.decode("utf-8", "ignore")]
    assert partial, "expected some ids that are a fraction of a UTF-8 character"
    assert b"".join(pieces) == "emoji 😀🎉 and 中华人民共和国".encode()


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 50276), max_size=40))
def test_neox_random_ids_decode_like_hf(
    neox: NeoXTokenizer, hf_neox: tokenizers.Tokenizer, ids: list[int]
) -> None:
    assert neox.decode(ids) == hf_neox.decode(ids)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=100))
def test_neox_random_unicode(neox: NeoXTokenizer, hf_neox: tokenizers.Tokenizer, text: str) -> None:
    ids = neox.encode(text)
    assert ids == hf_neox.encode(text).ids
    special = ("<|endoftext|>", "<|padding|>")
    expected = unicodedata.normalize("NFC", text)
    if not any(s in expected for s in special):
        assert neox.decode_bytes(ids) == expected.encode()


def test_neox_bad_ids_and_files(neox: NeoXTokenizer, tmp_path: Path) -> None:
    for bad in (50277, -1):
        with pytest.raises(ValueError, match=str(bad)):
            neox.decode_bytes([5801, bad])
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a tokenizers JSON file") as err:
        NeoXTokenizer.from_file(broken)
    assert str(broken) in str(err.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"\xff"}')
    with pytest.raises(ModelFileError, match="not UTF-8"):
        NeoXTokenizer.from_file(binary)
    model = tokenizers.models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")
    wordpiece = tokenizers.Tokenizer(model)
    wordpiece.decoder = tokenizers.decoders.WordPiece()
    with pytest.raises(ModelFileError, match="decoder is WordPiece"):
        NeoXTokenizer.from_str(wordpiece.to_str(), "wp.json")


def test_neox_from_path(tmp_path: Path) -> None:
    tok = load_tokenizer(str(NEOX_JSON))
    assert isinstance(tok, NeoXTokenizer)
    assert tok.encode("Hello world") == [12092, 1533]


# --------------------------------------------------------------------------------------------------
# Bytes, the interface and the factory


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_bytes_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_bytes_invalid_utf8_and_bad_ids() -> None:
    tok = ByteTokenizer()
    for data in INVALID_UTF8:
        assert tok.decode_bytes(tok.encode_bytes(data)) == data
        assert tok.decode(tok.encode_bytes(data)) == data.decode("utf-8", errors="replace")
    for bad in (256, -1):
        with pytest.raises(ValueError, match=str(bad)):
            tok.decode_bytes([65, bad])


def test_interface(world: WorldTokenizer, neox: NeoXTokenizer) -> None:
    cases = ((world, "world", 65536), (neox, "neox", 50277), (ByteTokenizer(), "bytes", 256))
    for tok, name, size in cases:
        assert isinstance(tok, Tokenizer)
        assert tok.name == name
        assert tok.vocab_size == size
        assert load_tokenizer(name).name == name


def test_tokenizer_for_vocab() -> None:
    world = tokenizer_for_vocab(65536)
    neox = tokenizer_for_vocab(50277)
    byte = tokenizer_for_vocab(256)
    assert isinstance(world, WorldTokenizer) and world.vocab_size == 65536
    assert isinstance(neox, NeoXTokenizer) and neox.vocab_size == 50277
    assert isinstance(byte, ByteTokenizer)
    assert world.encode("Hello world") == [33155, 40213]
    assert neox.encode("Hello world") == [12092, 1533]
    for n_vocab in (0, 255, 50254, 65529, 65530, 65535, 65537, 100000):
        assert tokenizer_for_vocab(n_vocab) is None


def test_load_tokenizer_rejects_unknown_specs(tmp_path: Path) -> None:
    for spec in ("World", "gpt2", str(tmp_path / "model.gguf")):
        with pytest.raises(ValueError, match="unknown tokenizer"):
            load_tokenizer(spec)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(os.fspath(tmp_path / "missing.json"))
