"""Convert any supported model file into one GGUF file: tensors in GGUF layout, quantized by policy,
metadata and tokenizer inside, written through gguf-py to a temporary file that is renamed at the end.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .blocks import quantize
from .checkpoint import Checkpoint, open_checkpoint
from .errors import ModelFileError
from .ggml_types import GGMLType, RawTensor, tensor_nbytes
from .gguf_layout import ARCHITECTURES, storage_type_of, to_gguf
from .gguf_model import FORMAT_VERSION
from .gguf_reader import GGUFStrings
from .gguf_vocab import KIND_KEY, tokenizer_metadata
from .policy import Policy
from .spec import ModelSpec

CONTEXT_LENGTH = 1048576  # RWKV has no context limit; llama.cpp's converters write this
# general.file_type values (llama.cpp's LlamaFileType) for a file whose matrices are mostly this type.
FILE_TYPES = {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q4_0: 2, GGMLType.Q4_1: 3, GGMLType.Q8_0: 7,
              GGMLType.Q5_0: 8, GGMLType.Q5_1: 9, GGMLType.IQ4_NL: 25, GGMLType.BF16: 32}
_FOLD_NAMES = {GGMLType.F16: "f16", GGMLType.BF16: "bf16"}

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, tensor name)


@dataclass(frozen=True)
class ConvertResult:
    path: str
    spec: ModelSpec
    n_bytes: int
    types: dict[str, int]  # ggml type name -> number of tensors
    quantized_bits_per_weight: float  # averaged over the big matrices


def default_tokenizer_kind(n_vocab: int) -> str:
    return {65536: "world", 50277: "neox", 256: "bytes"}.get(n_vocab, "none")


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    target: GGMLType,
    *,
    tokenizer: str | None = None,
    emb_type: GGMLType | None = None,
    head_type: GGMLType | None = None,
    progress: Progress | None = None,
) -> ConvertResult:
    src, dst = os.fspath(src), os.fspath(dst)
    check_destination(src, dst)
    return convert_checkpoint(open_checkpoint(src), dst, target, tokenizer=tokenizer, emb_type=emb_type,
                              head_type=head_type, progress=progress)


def convert_checkpoint(
    ckpt: Checkpoint,
    dst: str | os.PathLike[str],
    target: GGMLType,
    *,
    tokenizer: str | None = None,
    emb_type: GGMLType | None = None,
    head_type: GGMLType | None = None,
    progress: Progress | None = None,
    encoded: Mapping[str, tuple[GGMLType, np.ndarray]] | None = None,
) -> ConvertResult:
    """Write an opened (or generated) checkpoint as GGUF; see `convert`.

    `encoded`: tensors already quantized elsewhere (the calibrated mode), by official name: (type,
    (rows, row_nbytes) uint8 blocks of the checkpoint's tensor). They replace the policy's choice.
    """
    dst, src = os.fspath(dst), ckpt.path
    spec = ckpt.spec
    policy = Policy.for_type(target, emb_type, head_type)
    encoded = dict(encoded or {})
    plan = []
    for name, official, raw in to_gguf(ckpt.tensors, spec, src):
        qtype = policy.type_for(official, raw.shape)
        if qtype == GGMLType.F16 and storage_type_of(official) == "lora" and not _fits_f16(raw):
            qtype = GGMLType.F32  # a LoRA beyond F16's range stays exact rather than infinite
        if official in encoded and raw is ckpt.tensors.get(official):
            qtype, data = encoded.pop(official)
            if data.dtype != np.uint8 or data.nbytes != tensor_nbytes(qtype, raw.shape):
                raise ValueError(f"{official}: {data.nbytes} bytes given, a {qtype.name} tensor of shape "
                                 f"{raw.shape} has {tensor_nbytes(qtype, raw.shape)}")
            raw = RawTensor(qtype, raw.shape, data.reshape(_rows(raw.shape), -1))
        plan.append((name, raw, qtype, official))
    if encoded:
        raise ValueError(f"{next(iter(encoded))}: not a tensor stored unchanged in the GGUF layout")
    tmp = _claim_temporary(dst)
    try:
        metadata = _metadata(ckpt, target, tokenizer)
        _write(tmp, ARCHITECTURES[spec.version], metadata, plan, progress)
        os.replace(tmp, dst)
    except OSError as err:
        raise OSError(err.errno, err.strerror, dst) from None  # name the file the user asked for
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    types: dict[str, int] = {}
    q_bits = q_weights = 0
    for _, raw, qtype, official in plan:
        types[qtype.name] = types.get(qtype.name, 0) + 1
        if storage_type_of(official) == "matrix":
            n = int(np.prod(raw.shape))
            q_bits += tensor_nbytes(qtype, raw.shape) * 8
            q_weights += n
    return ConvertResult(dst, spec, os.path.getsize(dst), types, q_bits / max(q_weights, 1))


def _fits_f16(raw: RawTensor) -> bool:
    """Every value of the tensor is finite as F16 (or was not finite to begin with)."""
    a = raw.to_f32()
    with np.errstate(over="ignore"):
        return bool((np.isfinite(a.astype(np.float16)) | ~np.isfinite(a)).all())


def check_destination(src: str, dst: str) -> None:
    """Raise unless `dst` can take the output: named, not a directory, in an existing directory, not `src`.

    (Checked again when writing starts; call it first when the conversion has a long computation before.)
    """
    if not dst:
        raise ValueError("the output file name is empty")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ValueError(f"{dst}: refusing to overwrite the source file")
    if os.path.isdir(dst):
        raise IsADirectoryError(errno.EISDIR, "is a directory", dst)
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        raise FileNotFoundError(errno.ENOENT, "its directory does not exist", dst)


def _claim_temporary(dst: str) -> str:
    """Create the hidden file the output is written to before the rename, after checking the destination.

    Made with the usual 0666 & ~umask permissions (mkstemp's 0600 would survive the rename).
    """
    if not dst:
        raise ValueError("the output file name is empty")
    if os.path.isdir(dst):
        raise IsADirectoryError(errno.EISDIR, "is a directory", dst)
    out_dir = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(errno.ENOENT, "its directory does not exist", dst)
    for _ in range(100):
        tmp = os.path.join(out_dir, f".{os.path.basename(dst)}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as err:
            raise OSError(err.errno, err.strerror, dst) from None
    raise FileExistsError(errno.EEXIST, "could not create a temporary file beside it", dst)


def _metadata(ckpt: Checkpoint, target: GGMLType, tokenizer: str | None) -> dict[str, Any]:
    spec = ckpt.spec
    arch = ARCHITECTURES[spec.version]
    meta: dict[str, Any] = {
        "general.name": os.path.splitext(os.path.basename(ckpt.path))[0],
        "general.file_type": FILE_TYPES[target],
        "general.quantization_version": 2,
        f"{arch}.context_length": CONTEXT_LENGTH,
        f"{arch}.embedding_length": spec.n_embd,
        f"{arch}.block_count": spec.n_layer,
        f"{arch}.feed_forward_length": spec.n_ffn,
        f"{arch}.vocab_size": spec.n_vocab,
        f"{arch}.attention.layer_norm_epsilon": spec.layer_norm_eps,
        f"{arch}.attention.head_count": 0,  # required by llama.cpp, unused
        "rwkv_edge.format_version": FORMAT_VERSION,
        "rwkv_edge.version": spec.version,
        "rwkv_edge.group_norm_epsilon": spec.group_norm_eps,
        "rwkv_edge.emb_fold_dtype": _FOLD_NAMES.get(ckpt.emb_fold_dtype, "") if ckpt.emb_fold_dtype else "",
        "rwkv_edge.source": os.path.basename(ckpt.path),
    }
    if arch != "rwkv4":
        meta[f"{arch}.wkv.head_size"] = spec.head_size
    if arch == "rwkv6":
        meta[f"{arch}.rescale_every_n_layers"] = spec.rescale_every
        meta[f"{arch}.time_mix_extra_dim"] = spec.lora["mix"]
        meta[f"{arch}.time_decay_extra_dim"] = spec.lora["decay"]
    if arch == "rwkv7":
        meta[f"{arch}.attention.decay_lora_rank"] = spec.lora["w"]
        meta[f"{arch}.attention.iclr_lora_rank"] = spec.lora["a"]
        meta[f"{arch}.attention.value_residual_mix_lora_rank"] = spec.lora["v"] or spec.lora["a"]
        meta[f"{arch}.attention.gate_lora_rank"] = spec.lora["g"]
    meta.update(_tokenizer_keys(ckpt, tokenizer))
    return meta


def _tokenizer_keys(ckpt: Checkpoint, tokenizer: str | None) -> dict[str, Any]:
    n_vocab = ckpt.spec.n_vocab
    if tokenizer is None and ckpt.kind == "gguf":
        # Re-quantizing keeps the source file's tokenizer exactly as it was.
        return {k: v for k, v in ckpt.metadata.items() if k.startswith("tokenizer.") or k == KIND_KEY}
    if tokenizer is None:
        return tokenizer_metadata(default_tokenizer_kind(n_vocab), n_vocab)
    if tokenizer in ("world", "neox", "bytes", "none"):
        return tokenizer_metadata(tokenizer, n_vocab)
    return _tokenizer_from_file(tokenizer, n_vocab)


def _tokenizer_from_file(path: str, n_vocab: int) -> dict[str, Any]:
    """A World-format vocab .txt or a Hugging Face tokenizer.json given by path."""
    from .gguf_vocab import TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, escape_token
    from .vocab_file import parse_world_vocab

    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".json"):
        import tokenizers

        try:
            text = data.decode("utf-8")
            size = tokenizers.Tokenizer.from_str(text).get_vocab_size(with_added_tokens=True)
        except Exception as err:  # tokenizers raises its own exception type for a bad file
            raise ValueError(f"{path}: not a Hugging Face tokenizer.json ({' '.join(str(err).split())[:80]})") from None
        if size > n_vocab:
            raise ValueError(f"{path}: the tokenizer has {size} ids, the model only {n_vocab}")
        return {KIND_KEY: "hf-json", "tokenizer.ggml.model": "none", "tokenizer.huggingface.json": text}
    body = parse_world_vocab(data, path)[1:]
    if len(body) + 1 > n_vocab:
        raise ValueError(f"{path}: vocabulary has {len(body) + 1} ids, the model only {n_vocab}")
    pads = n_vocab - len(body) - 1
    pad_names = [f"[PAD{i}]" for i in range(len(body) + 1, n_vocab)]  # named by id, as llama.cpp's converter does
    return {
        KIND_KEY: "world",
        "tokenizer.ggml.model": "rwkv",
        "tokenizer.ggml.tokens": ["<s>"] + [escape_token(t) for t in body] + pad_names,
        "tokenizer.ggml.token_type": [TOKEN_CONTROL] + [TOKEN_NORMAL] * len(body) + [TOKEN_UNUSED] * pads,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
    }


def _encode(raw: RawTensor, qtype: GGMLType) -> np.ndarray:
    """The tensor's bytes in `qtype`; stored data passes through untouched when the type is unchanged."""
    if raw.qtype == qtype:
        return np.ascontiguousarray(raw.data)
    return quantize(qtype, np.ascontiguousarray(raw.to_f32(), dtype=np.float32))


def _write(path: str, arch: str, metadata: dict[str, Any], plan: list, progress: Progress | None) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for key, value in metadata.items():
        _add_key(writer, gguf, key, value)
    total = sum(tensor_nbytes(qtype, raw.shape) for _, raw, qtype, _ in plan)
    for name, raw, qtype, _ in plan:
        nbytes = tensor_nbytes(qtype, raw.shape)
        dtype = {GGMLType.F32: np.float32, GGMLType.F16: np.float16}.get(qtype, np.uint8)
        # gguf-py takes the logical shape for typed data and derives it from bytes for uint8 data.
        shape = raw.shape if dtype is not np.uint8 else (*raw.shape[:-1], nbytes // max(1, _rows(raw.shape)))
        raw_dtype = None if dtype is not np.uint8 else gguf.GGMLQuantizationType(int(qtype))
        if qtype == GGMLType.BF16:
            shape, dtype, raw_dtype = raw.shape, np.uint16, gguf.GGMLQuantizationType.BF16
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    done = 0
    for name, raw, qtype, _ in plan:
        data = _encode(raw, qtype)
        if data.nbytes != tensor_nbytes(qtype, raw.shape):
            raise ModelFileError(path, f"internal error: {name} encoded to {data.nbytes} bytes")
        writer.write_tensor_data(data)
        done += data.nbytes
        if progress is not None:
            progress(done, total, name)
    writer.close()


def _rows(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape[:-1]:
        n *= d
    return n


def _add_key(writer: Any, gguf: Any, key: str, value: Any) -> None:
    vt = gguf.GGUFValueType
    if key == "general.architecture":
        return
    if isinstance(value, GGUFStrings):  # a vocabulary read in place from a GGUF source
        value = list(value)
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float) and key.startswith("rwkv_edge."):
        writer.add_float64(key, value)  # our own keys keep the exact value (eps 64e-5 is not a float32)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_key_value(key, value, vt.STRING)  # add_string would drop an empty value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        writer.add_key_value(key, value, vt.ARRAY, sub_type=vt.STRING)
    elif isinstance(value, list) and all(isinstance(v, int) for v in value):
        writer.add_key_value(key, value, vt.ARRAY, sub_type=vt.INT32)
    else:
        raise ValueError(f"cannot write metadata {key!r} of type {type(value).__name__}")
