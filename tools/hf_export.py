"""Write an official RWKV-6/7 checkpoint as a Hugging Face model directory, for llama.cpp's converter.

RWKV-7 takes fla-hub's `RWKV7ForCausalLM` layout (names as tests/test_hf_names.py builds them: LoRAs as
`*_lora.lora.{0,2}` Linear layers, no value-residual LoRA in layer 0), RWKV-6 the RWKV/v6-Finch-*-HF
`Rwkv6ForCausalLM` layout (transformers' `rwkv.*` names) with `rescale_every` in config.json. Everything is
float32 in model.safetensors, beside config.json and the World vocabulary file that
`convert_hf_to_gguf.py` reads; the vocabulary is padded to its 65536 rows.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

import numpy as np

from .. import quant
from ..quant.checkpoint import Checkpoint, open_checkpoint
from ..quant.spec import ModelSpec

N_WORLD = 65536  # convert_hf_to_gguf.py always writes the full World vocabulary
VOCAB_FILE = "rwkv_vocab_v20230424.txt"
Layout = tuple[dict[str, np.ndarray], dict[str, Any]]  # tensors by HF name, config.json


def write_safetensors(tensors: dict[str, np.ndarray], path: str) -> None:
    """float32 tensors in the safetensors format: header length (u64), JSON header padded to 8, raw data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + 4 * a.size]}
        offset += 4 * a.size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def padded_f32(ckpt: Checkpoint, n_vocab: int) -> dict[str, np.ndarray]:
    """The checkpoint in float32 with emb and head padded to n_vocab rows. The extra head rows are random,
    so the extra logits are not trivially equal; the extra embedding rows are never looked up."""
    sd = {name: np.asarray(raw.to_f32(), dtype=np.float32) for name, raw in ckpt.tensors.items()}
    rng = np.random.default_rng(0)
    for name in ("emb.weight", "head.weight"):
        a = sd[name]  # (V, C)
        extra = rng.standard_normal((n_vocab - a.shape[0], a.shape[1])).astype(np.float32) * a.std()
        sd[name] = np.concatenate([a, extra])  # (n_vocab, C)
    return sd


def fla_v7(sd: dict[str, np.ndarray], spec: ModelSpec, n_vocab: int) -> Layout:
    C = spec.n_embd
    hf = {"model.embeddings.weight": sd["emb.weight"], "model.norm.weight": sd["ln_out.weight"],
          "model.norm.bias": sd["ln_out.bias"], "lm_head.weight": sd["head.weight"],
          "model.layers.0.pre_norm.weight": sd["blocks.0.ln0.weight"],
          "model.layers.0.pre_norm.bias": sd["blocks.0.ln0.bias"]}
    for i in range(spec.n_layer):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in (("ln1", "attn_norm"), ("ln2", "ffn_norm"), ("att.ln_x", "attn.g_norm")):
            hf[h + b + ".weight"], hf[h + b + ".bias"] = sd[o + a + ".weight"], sd[o + a + ".bias"]
        for a, b in (("receptance", "r_proj"), ("key", "k_proj"), ("value", "v_proj"), ("output", "o_proj")):
            hf[h + f"attn.{b}.weight"] = sd[o + f"att.{a}.weight"]
        for m in "rwkvag":
            hf[h + f"attn.x_{m}"] = sd[o + f"att.x_{m}"].reshape(1, 1, C)
        for n in ("k_k", "k_a"):
            hf[h + f"attn.{n}"] = sd[o + f"att.{n}"].reshape(C)
        hf[h + "attn.r_k"] = sd[o + "att.r_k"]  # (H, N)
        for m in "wavg":
            if m == "v" and i == 0:
                continue
            # official x @ m1 (C, D) then @ m2 (D, C); fla's Linear layers store the transposes
            hf[h + f"attn.{m}_lora.lora.0.weight"] = np.ascontiguousarray(sd[o + f"att.{m}1"].T)  # (D, C)
            hf[h + f"attn.{m}_lora.lora.2.weight"] = np.ascontiguousarray(sd[o + f"att.{m}2"].T)  # (C, D)
            if m != "g":
                hf[h + f"attn.{m}_lora.lora.2.bias"] = sd[o + f"att.{m}0"].reshape(C)
        hf[h + "ffn.x_k"] = sd[o + "ffn.x_k"].reshape(C)
        hf[h + "ffn.key.weight"] = sd[o + "ffn.key.weight"]
        hf[h + "ffn.value.weight"] = sd[o + "ffn.value.weight"]
    lora = spec.lora
    config = {"architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7", "hidden_size": C,
              "head_dim": spec.head_size, "num_hidden_layers": spec.n_layer, "intermediate_size": spec.n_ffn,
              "vocab_size": n_vocab, "norm_eps": spec.layer_norm_eps, "decay_low_rank_dim": lora["w"],
              "a_low_rank_dim": lora["a"], "v_low_rank_dim": lora["v"], "gate_low_rank_dim": lora["g"],
              "tie_word_embeddings": False, "torch_dtype": "float32"}
    return hf, config


def rwkv_hf_v6(sd: dict[str, np.ndarray], spec: ModelSpec, n_vocab: int, rescale_every: int) -> Layout:
    parts = {"att": "attention", "ffn": "feed_forward", "ln0": "pre_ln"}
    hf = {}
    for name, a in sd.items():
        if name == "head.weight":
            hf[name] = a
            continue
        p = name.split(".")
        if p[0] == "emb":
            p[0] = "embeddings"
        if p[0] == "blocks":
            p[2] = parts.get(p[2], p[2])
        hf["rwkv." + ".".join(p)] = a
    config = {"architectures": ["Rwkv6ForCausalLM"], "model_type": "rwkv6", "hidden_size": spec.n_embd,
              "attention_hidden_size": spec.n_att, "head_size": spec.head_size, "head_size_divisor": 8,
              "num_hidden_layers": spec.n_layer, "intermediate_size": spec.n_ffn, "vocab_size": n_vocab,
              "layer_norm_epsilon": spec.layer_norm_eps, "rescale_every": rescale_every,
              "tie_word_embeddings": False, "torch_dtype": "float32"}
    return hf, config


def write_hf_dir(pth: str, out_dir: str, *, rescale_every: int = 6) -> None:
    """The official checkpoint `pth` as a Hugging Face model directory `out_dir`."""
    ckpt = open_checkpoint(pth)
    sd = padded_f32(ckpt, N_WORLD)
    if ckpt.spec.version == "7":
        tensors, config = fla_v7(sd, ckpt.spec, N_WORLD)
    elif ckpt.spec.version == "6":
        tensors, config = rwkv_hf_v6(sd, ckpt.spec, N_WORLD, rescale_every)
    else:
        raise ValueError(f"{pth}: llama.cpp converts RWKV-6 and RWKV-7 only, not RWKV-{ckpt.spec.version}")
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(tensors, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    vocab = resources.files(quant) / "vocab" / VOCAB_FILE
    with open(os.path.join(out_dir, VOCAB_FILE), "wb") as f:
        f.write(vocab.read_bytes())
