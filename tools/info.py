"""`rwkv-edge info`: what a model file holds: version, shapes, parameters, storage types, state size."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from .. import kernels
from ..quant.checkpoint import open_checkpoint
from ..quant.ggml_types import tensor_nbytes
from ..quant.gguf_layout import storage_type_of
from ..quant.gguf_reader import GGUFStrings
from ..quant.spec import ModelSpec
from .default_model import default_model_path

HELP = "show a model file's version, shapes, parameter count, types and state size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model file (default: the embedded tiny model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe(path: str) -> dict[str, object]:
    ckpt = open_checkpoint(path)
    spec: ModelSpec = ckpt.spec
    n_params = sum(int(_numel(t.shape)) for t in ckpt.tensors.values())
    types = Counter(t.qtype.name for t in ckpt.tensors.values())
    type_params: Counter[str] = Counter()
    matrix_bits = matrix_params = 0
    for name, t in ckpt.tensors.items():
        type_params[t.qtype.name] += _numel(t.shape)
        if storage_type_of(name) == "matrix":
            matrix_bits += 8 * tensor_nbytes(t.qtype, t.shape)
            matrix_params += _numel(t.shape)
    meta = ckpt.metadata if ckpt.kind == "gguf" else {}
    return {
        "file": path,
        "file_bytes": os.path.getsize(path),
        "format": ckpt.kind,
        "version": spec.version,
        "n_vocab": spec.n_vocab,
        "n_embd": spec.n_embd,
        "n_layer": spec.n_layer,
        "n_ffn": spec.n_ffn,
        "n_head": spec.n_head,
        "head_size": spec.head_size,
        "lora_ranks": spec.lora,
        "group_norm_eps": spec.group_norm_eps if spec.version != "4" else None,
        "n_params": n_params,
        "n_tensors": len(ckpt.tensors),
        "tensor_types": dict(types),
        "params_by_type": dict(type_params),
        "matrix_bits_per_weight": round(matrix_bits / max(matrix_params, 1), 4),
        "state_bytes": spec.state_nbytes,
        "rescale_every": spec.rescale_every,
        "tokenizer": meta.get("rwkv_edge.tokenizer", meta.get("tokenizer.ggml.model")) if meta else None,
        # long string arrays are read in place (GGUFStrings): listed here, as JSON needs
        "gguf_metadata": {k: list(v) if isinstance(v, GGUFStrings) else v
                          for k, v in meta.items() if not k.startswith("tokenizer.")},
        "kernels": {"backend": kernels.backend, "features": sorted(kernels.features),
                    "threads": kernels.default_threads()},
    }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run(args: argparse.Namespace) -> int:
    d = describe(args.model or default_model_path())
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"file          {d['file']} ({d['file_bytes']:,} bytes, {d['format']})")
    print(f"architecture  RWKV-{d['version']}")
    print(f"shape         {d['n_layer']} layers, n_embd {d['n_embd']}, ffn {d['n_ffn']}, vocab {d['n_vocab']}")
    if d["version"] != "4":
        print(f"heads         {d['n_head']} x {d['head_size']}, GroupNorm eps {d['group_norm_eps']:g}")
    if d["lora_ranks"]:
        print("LoRA ranks    " + ", ".join(f"{k} {v}" for k, v in d["lora_ranks"].items()))
    print(f"parameters    {d['n_params']:,} in {d['n_tensors']} tensors")
    by_type = d["params_by_type"]
    print("types         " + ", ".join(f"{k} {by_type[k]:,} params ({n} tensors)" for k, n in d["tensor_types"].items()))
    print(f"matrices      {d['matrix_bits_per_weight']:.2f} bits per weight")
    print(f"state         {d['state_bytes']:,} bytes per session")
    if d["tokenizer"]:
        print(f"tokenizer     {d['tokenizer']}")
    k = d["kernels"]
    print(f"kernels       {k['backend']} ({', '.join(k['features']) or 'no SIMD'}), {k['threads']} threads")
    return 0
