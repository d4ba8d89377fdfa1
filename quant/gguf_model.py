"""A GGUF file as a model checkpoint: its metadata checked against its tensors, tensors in official names.

The metadata keys we write and read are listed in docs/format.md. Files written by llama.cpp (rwkv6,
rwkv7) carry no `rwkv_edge.*` keys; everything needed is then derived from llama.cpp's own keys.
"""

from __future__ import annotations

from typing import Any

from .checkpoint import Checkpoint
from .errors import ModelFileError
from .ggml_types import GGMLType
from .gguf_layout import ARCHITECTURES, from_gguf
from .gguf_reader import read_gguf
from .spec import OFFICIAL_GROUP_NORM_EPS, detect_spec

FORMAT_VERSION = 1
_VERSIONS = {"rwkv4": "4", "rwkv6": "6", "rwkv7": "7"}
_FOLD = {"f16": GGMLType.F16, "bf16": GGMLType.BF16}


def read_gguf_model(path: str, *, group_norm_eps: float | None = None) -> Checkpoint:
    gguf = read_gguf(path)
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES.values():
        raise ModelFileError(path, f"GGUF architecture {arch!r} is not an RWKV model this package runs")
    fmt = meta.get("rwkv_edge.format_version", FORMAT_VERSION)
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise ModelFileError(path, f"written by a newer rwkv-edge (file format {fmt}, this one reads {FORMAT_VERSION})")
    version = meta.get("rwkv_edge.version", _VERSIONS.get(arch))
    if ARCHITECTURES.get(str(version)) != arch:
        raise ModelFileError(path, f"rwkv_edge.version {version!r} does not fit architecture {arch}")
    n_layer = _int(meta, f"{arch}.block_count", path)
    head_size = _int(meta, f"{arch}.wkv.head_size", path) if arch != "rwkv4" else 1
    if n_layer <= 0 or n_layer > 10_000 or head_size <= 0:
        raise ModelFileError(path, f"absurd {arch}.block_count {n_layer} or head size {head_size}")
    tensors = from_gguf(gguf.tensors, arch, version, n_layer, head_size, path)
    eps = meta.get("rwkv_edge.group_norm_epsilon", OFFICIAL_GROUP_NORM_EPS)
    rescale = int(meta.get(f"{arch}.rescale_every_n_layers", 0) or 0)
    spec = detect_spec(tensors, path, group_norm_eps=group_norm_eps if group_norm_eps is not None else eps,
                       rescale_every=rescale)
    _check_metadata(meta, arch, spec, path)
    fold = _FOLD.get(str(meta.get("rwkv_edge.emb_fold_dtype", "")))
    return Checkpoint(path, "gguf", tensors, spec, dict(meta), fold)


def _int(meta: dict[str, Any], key: str, path: str) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFileError(path, f"metadata '{key}' is missing or not an integer")
    return value


def _check_metadata(meta: dict[str, Any], arch: str, spec: Any, path: str) -> None:
    """Every shape the metadata states must agree with the tensors."""
    checks = {
        f"{arch}.embedding_length": spec.n_embd,
        f"{arch}.block_count": spec.n_layer,
        f"{arch}.feed_forward_length": spec.n_ffn,
        f"{arch}.vocab_size": spec.n_vocab,
        f"{arch}.wkv.head_size": spec.head_size if arch != "rwkv4" else None,
        f"{arch}.time_mix_extra_dim": spec.lora.get("mix"),
        f"{arch}.time_decay_extra_dim": spec.lora.get("decay"),
        f"{arch}.attention.decay_lora_rank": spec.lora.get("w"),
        f"{arch}.attention.iclr_lora_rank": spec.lora.get("a"),
        f"{arch}.attention.value_residual_mix_lora_rank": spec.lora.get("v") if spec.n_layer > 1 else None,
        f"{arch}.attention.gate_lora_rank": spec.lora.get("g"),
    }
    for key, actual in checks.items():
        if key in meta and actual is not None and meta[key] != actual:
            raise ModelFileError(path, f"metadata {key} = {meta[key]} contradicts the tensors ({actual})")
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != spec.n_vocab:
        raise ModelFileError(path, f"{len(tokens)} tokens in the vocabulary but {spec.n_vocab} embedding rows")
