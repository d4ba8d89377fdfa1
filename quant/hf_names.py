"""Rename Hugging Face RWKV checkpoints to the official BlinkDL tensor names and shapes.

Two layouts are understood: `rwkv.*`, of transformers' `RwkvForCausalLM` (RWKV-4) and of the
RWKV/*-HF remote-code repos (RWKV-5, RWKV-6 Finch), which is a plain renaming; and fla-hub's
RWKV-7 (`model.layers.i.attn.*`), whose LoRA modules are split back into official w0/w1/w2 tensors.
Tensors are the F32/F16/BF16 RawTensors the `.pth` and safetensors readers return.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ModelFileError
from .ggml_types import RawTensor

PathArg = str | os.PathLike[str]

# transformers / RWKV-HF sub-module name -> official one, for `rwkv.blocks.i.<part>.<name>`
_RWKV_HF_PARTS = {"attention": "att", "feed_forward": "ffn"}
_RWKV_HF_ATT = {
    "time_mix_key": "time_mix_k",
    "time_mix_value": "time_mix_v",
    "time_mix_receptance": "time_mix_r",
    "time_mix_gate": "time_mix_g",
    **{
        name: name
        for name in (
            "time_decay", "time_first", "time_faaaa", "time_state",
            "time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
            "time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2",
            "key.weight", "value.weight", "receptance.weight", "gate.weight", "output.weight",
            "ln_x.weight", "ln_x.bias",
        )
    },
}  # fmt: skip
_RWKV_HF_FFN = {
    "time_mix_key": "time_mix_k",
    "time_mix_receptance": "time_mix_r",
    **{
        name: name
        for name in ("time_maa_k", "time_maa_r", "key.weight", "receptance.weight", "value.weight")
    },
}
_RWKV_HF_BLOCK = re.compile(r"rwkv\.blocks\.(\d+)\.(pre_ln|ln1|ln2|attention|feed_forward)\.(.+)")

# fla-hub RWKV-7 names
_FLA_BLOCK = re.compile(r"model\.layers\.(\d+)\.(pre_norm|attn_norm|ffn_norm|attn|ffn)\.(.+)")
_FLA_NORMS = {"pre_norm": "ln0", "attn_norm": "ln1", "ffn_norm": "ln2"}
_FLA_PROJ = {"r_proj": "receptance", "k_proj": "key", "v_proj": "value", "o_proj": "output"}
_FLA_LORA = re.compile(r"([wavg])_lora\.lora\.(0\.weight|2\.weight|2\.bias)")
_FLA_MIX_ORDER = "rwkvag"  # row order of the fused `x_x` of older fla checkpoints


def hf_to_official(
    tensors: Mapping[str, RawTensor],
    path: PathArg,
    config: Mapping[str, Any] | None = None,
) -> dict[str, RawTensor]:
    """The checkpoint under official names and shapes; official checkpoints come back unchanged.

    `config` is the repo's `config.json`, if one is at hand; it is only consulted for a head tied
    to the embedding (`tie_word_embeddings`), which RWKV repos do not normally use.
    """
    if "emb.weight" in tensors:
        return dict(tensors)
    empty = [name for name, tensor in tensors.items() if 0 in tensor.shape]
    if empty:
        raise ModelFileError(path, f"tensor '{empty[0]}' is empty")
    if "rwkv.embeddings.weight" in tensors:
        official = _from_rwkv_hf(tensors, path)
    elif "model.embeddings.weight" in tensors:
        official = _from_fla(tensors, path)
    else:
        raise ModelFileError(
            path,
            "unknown tensor layout: no emb.weight (official), rwkv.embeddings.weight "
            "(transformers / RWKV-HF) or model.embeddings.weight (fla-hub RWKV-7)",
        )
    if "head.weight" not in official:
        if not (config and config.get("tie_word_embeddings")):
            raise ModelFileError(path, "no output head (head.weight or lm_head.weight)")
        official["head.weight"] = official["emb.weight"]
    return official


def _from_rwkv_hf(tensors: Mapping[str, RawTensor], path: PathArg) -> dict[str, RawTensor]:
    official: dict[str, RawTensor] = {}
    for name, tensor in tensors.items():
        _add(official, {_rwkv_hf_name(name, path): tensor}, path)
    if any(".att.time_maa_" in name for name in official):
        # RWKV-6 keeps the base decay as [1, 1, C]; accept it in any shape of C elements.
        for name in [n for n in official if n.endswith(".att.time_decay")]:
            official[name] = _reshaped(official[name], (1, 1, -1))
    return official


def _rwkv_hf_name(name: str, path: PathArg) -> str:
    top = {"rwkv.embeddings.weight": "emb.weight", "head.weight": "head.weight"}
    top.update({f"rwkv.ln_out.{p}": f"ln_out.{p}" for p in ("weight", "bias")})
    if name in top:
        return top[name]
    match = _RWKV_HF_BLOCK.fullmatch(name)
    if match:
        layer, part, rest = match.groups()
        if part in ("pre_ln", "ln1", "ln2") and rest in ("weight", "bias"):
            return f"blocks.{layer}.{'ln0' if part == 'pre_ln' else part}.{rest}"
        renames = _RWKV_HF_ATT if part == "attention" else _RWKV_HF_FFN
        if rest in renames:
            return f"blocks.{layer}.{_RWKV_HF_PARTS[part]}.{renames[rest]}"
    raise ModelFileError(path, f"unexpected tensor '{name}' in a transformers / RWKV-HF checkpoint")


def _from_fla(tensors: Mapping[str, RawTensor], path: PathArg) -> dict[str, RawTensor]:
    official: dict[str, RawTensor] = {}
    for name, tensor in tensors.items():
        _add(official, _fla_tensors(name, tensor, path), path)
    return official


def _add(official: dict[str, RawTensor], new: dict[str, RawTensor], path: PathArg) -> None:
    for name, tensor in new.items():
        if name in official:
            raise ModelFileError(path, f"two tensors map to '{name}' (e.g. both x_x and x_r)")
        official[name] = tensor


def _fla_tensors(name: str, tensor: RawTensor, path: PathArg) -> dict[str, RawTensor]:
    """The official tensor(s) one fla-hub tensor becomes (the fused `x_x` becomes six)."""
    top = {"model.embeddings.weight": "emb.weight", "lm_head.weight": "head.weight"}
    top.update({f"model.norm.{p}": f"ln_out.{p}" for p in ("weight", "bias")})
    if name in top:
        return {top[name]: tensor}
    match = _FLA_BLOCK.fullmatch(name)
    if match:
        layer, part, rest = match.groups()
        prefix = f"blocks.{layer}"
        if part in _FLA_NORMS and rest in ("weight", "bias"):
            return {f"{prefix}.{_FLA_NORMS[part]}.{rest}": tensor}
        if part == "ffn" and rest == "x_k":
            return {f"{prefix}.ffn.x_k": _reshaped(tensor, (1, 1, -1))}
        if part == "ffn" and rest in ("key.weight", "value.weight"):
            return {f"{prefix}.ffn.{rest}": tensor}
        if part == "attn":
            renamed = _fla_attention(rest, tensor, path, name)
            if renamed is not None:
                return {f"{prefix}.att.{n}": t for n, t in renamed.items()}
    raise ModelFileError(path, f"unexpected tensor '{name}' in an fla-hub RWKV-7 checkpoint")


def _fla_attention(
    rest: str, tensor: RawTensor, path: PathArg, name: str
) -> dict[str, RawTensor] | None:
    """Official `att.*` tensors for fla's `attn.<rest>`, or None if `rest` is not an fla name."""
    mix = len(rest) == 3 and rest[:2] == "x_" and rest[2] in _FLA_MIX_ORDER
    if mix or rest in ("k_k", "k_a"):
        return {rest: _reshaped(tensor, (1, 1, -1))}
    if rest == "r_k":
        return {rest: tensor}
    if rest == "x_x":
        if tensor.shape[:1] != (len(_FLA_MIX_ORDER),):
            raise ModelFileError(path, f"'{name}' has shape {tensor.shape}, expected (6, C)")
        rows = tensor.data.reshape(len(_FLA_MIX_ORDER), -1)  # (6, C), a view
        return {
            f"x_{m}": _wrap(tensor, r.reshape(1, 1, -1))
            for m, r in zip(_FLA_MIX_ORDER, rows, strict=True)
        }
    proj, _, suffix = rest.partition(".")
    if proj in _FLA_PROJ and suffix == "weight":
        return {f"{_FLA_PROJ[proj]}.weight": tensor}
    if rest in ("g_norm.weight", "g_norm.bias"):
        return {f"ln_x.{rest.rsplit('.', 1)[1]}": tensor}
    lora = _FLA_LORA.fullmatch(rest)
    if lora is None:
        return None
    which, piece = lora.groups()
    if piece == "2.bias":
        # fla's gate LoRA has no bias and RWKV-7 has no g0: refuse one rather than drop it
        if which == "g":
            return None
        return {f"{which}0": _reshaped(tensor, (1, 1, -1))}
    # nn.Linear keeps [out, in]; official LoRA matrices are applied as x @ A, so they are [in, out]
    if len(tensor.shape) != 2:
        raise ModelFileError(path, f"'{name}' has shape {tensor.shape}, expected a matrix")
    return {f"{which}{'1' if piece == '0.weight' else '2'}": _transposed(tensor)}


def _wrap(tensor: RawTensor, data: np.ndarray) -> RawTensor:
    return RawTensor(tensor.qtype, tuple(data.shape), data)


def _reshaped(tensor: RawTensor, shape: tuple[int, ...]) -> RawTensor:
    return _wrap(tensor, tensor.data.reshape(shape))


def _transposed(tensor: RawTensor) -> RawTensor:
    # LoRA matrices are small; the copy keeps every RawTensor row-major, in its own (exact) type.
    return _wrap(tensor, np.ascontiguousarray(tensor.data.T))
