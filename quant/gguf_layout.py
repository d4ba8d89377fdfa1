"""How official RWKV tensors are named and shaped inside GGUF, in both directions.

rwkv6 and rwkv7 follow llama.cpp exactly (names, shapes, the fused token-shift mixes, transposed LoRA
matrices, v7's dummy layer-0 value-residual tensors), so llama.cpp runs our files and we run theirs.
rwkv4 and rwkv5 have no llama.cpp architecture; they extend the same naming style. docs/format.md lists it all.

Shapes here are numpy order (GGUF stores them reversed, innermost first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .errors import ModelFileError
from .ggml_types import GGMLType, RawTensor
from .spec import ModelSpec

ARCHITECTURES = {"4": "rwkv4", "5.0": "rwkv5", "5.1": "rwkv5", "5.2": "rwkv5", "6": "rwkv6", "7": "rwkv7"}

# Renamed one to one, same values and shapes.
_COMMON = {
    "emb.weight": "token_embd.weight",
    "blocks.0.ln0.weight": "token_embd_norm.weight",
    "blocks.0.ln0.bias": "token_embd_norm.bias",
    "ln_out.weight": "output_norm.weight",
    "ln_out.bias": "output_norm.bias",
    "head.weight": "output.weight",
}
_LAYER = {
    "ln1.weight": "attn_norm.weight",
    "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight",
    "ln2.bias": "attn_norm_2.bias",
    "att.key.weight": "time_mix_key.weight",
    "att.value.weight": "time_mix_value.weight",
    "att.receptance.weight": "time_mix_receptance.weight",
    "att.gate.weight": "time_mix_gate.weight",
    "att.output.weight": "time_mix_output.weight",
    "att.ln_x.weight": "time_mix_ln.weight",
    "att.ln_x.bias": "time_mix_ln.bias",
    "ffn.key.weight": "channel_mix_key.weight",
    "ffn.value.weight": "channel_mix_value.weight",
    "ffn.receptance.weight": "channel_mix_receptance.weight",
}
# Vectors stored squeezed to (C,) or kept with their official shape, per version: official suffix -> GGUF.
_VECTORS = {
    "4": {
        "att.time_mix_k": "time_mix_mu_k.weight",
        "att.time_mix_v": "time_mix_mu_v.weight",
        "att.time_mix_r": "time_mix_mu_r.weight",
        "att.time_decay": "time_mix_decay.weight",
        "att.time_first": "time_mix_first.weight",
        "ffn.time_mix_k": "channel_mix_mu_k.weight",
        "ffn.time_mix_r": "channel_mix_mu_r.weight",
    },
    "5": {
        "att.time_mix_k": "time_mix_mu_k.weight",
        "att.time_mix_v": "time_mix_mu_v.weight",
        "att.time_mix_r": "time_mix_mu_r.weight",
        "att.time_mix_g": "time_mix_mu_g.weight",
        "att.time_decay": "time_mix_decay.weight",
        "att.time_faaaa": "time_mix_first.weight",
        "ffn.time_mix_k": "channel_mix_mu_k.weight",
        "ffn.time_mix_r": "channel_mix_mu_r.weight",
    },
    "6": {
        "att.time_maa_x": "time_mix_lerp_x.weight",
        "att.time_decay": "time_mix_decay.weight",
        "att.time_faaaa": "time_mix_first.weight",
        "ffn.time_maa_k": "channel_mix_lerp_k.weight",
        "ffn.time_maa_r": "channel_mix_lerp_r.weight",
    },
    "7": {
        "att.w0": "time_mix_w0.weight",
        "att.a0": "time_mix_a0.weight",
        "att.v0": "time_mix_v0.weight",
        "att.k_k": "time_mix_k_k.weight",
        "att.k_a": "time_mix_k_a.weight",
        "ffn.x_k": "channel_mix_lerp_k.weight",
    },
}
# LoRA matrices: official [in, out] rows-times-matrix; GGUF keeps them [out, in] like every other matrix.
_LORAS = {
    "6": {
        "att.time_decay_w1": "time_mix_decay_w1.weight",
        "att.time_decay_w2": "time_mix_decay_w2.weight",
        "att.time_maa_w1": "time_mix_w1.weight",
    },
    "7": {f"att.{n}{i}": f"time_mix_{n}{i}.weight" for n in "wavg" for i in "12"},
}
# Token-shift mixes stacked into one tensor of shape (n, 1, 1, C), in llama.cpp's order.
_FUSED = {
    "6": ("time_mix_lerp_fused.weight", ["att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r",
                                          "att.time_maa_g"]),
    "7": ("time_mix_lerp_fused.weight", ["att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g"]),
}


def _family(version: str) -> str:
    return version.split(".")[0]


def _f32(raw: RawTensor) -> np.ndarray:
    return np.ascontiguousarray(raw.to_f32(), dtype=np.float32)


def _gguf_vector_shape(version: str, suffix: str, spec: ModelSpec) -> tuple[int, ...]:
    """Vectors are stored flat (C,), except per-head decays and bonuses, which keep their heads axis."""
    H, N = spec.n_head, spec.head_size
    if suffix in ("att.time_decay", "att.time_faaaa") and version in ("5.0", "5.1"):
        return (H,)
    if suffix in ("att.time_decay", "att.time_faaaa") and version == "5.2":
        return (H, N)
    if suffix == "att.time_faaaa":  # v6, llama.cpp's time_mix_first {head_size, n_head}
        return (H, N)
    return (spec.n_embd,)


def to_gguf(tensors: dict[str, RawTensor], spec: ModelSpec, path: str) -> Iterator[tuple[str, str, RawTensor]]:
    """Yield (gguf name, official name it came from, tensor in GGUF layout) for every tensor the model uses.

    Renamed tensors keep their storage (zero copy); reshaped or transposed ones become float32 copies
    (they are all small). v5.0/5.1 `time_first` (a log) is stored as the bonus itself, like `time_faaaa`.
    """
    version, family = spec.version, _family(spec.version)
    C = spec.n_embd

    def get(name: str) -> RawTensor:
        if name not in tensors:
            raise ModelFileError(path, f"missing tensor '{name}'")
        return tensors[name]

    for official, gguf_name in _COMMON.items():
        yield gguf_name, official, get(official)
    for i in range(spec.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        for suffix, gguf_name in _LAYER.items():
            if p + suffix in tensors:
                yield b + gguf_name, p + suffix, tensors[p + suffix]
        for suffix, gguf_name in _VECTORS[family].items():
            name = p + suffix
            if family == "7" and suffix == "att.v0" and i == 0:
                continue
            if family == "5" and suffix == "att.time_faaaa" and name not in tensors:
                # 5.0/5.1 checkpoints carry log(u); GGUF holds u itself (float64 exp, then float32).
                u = np.exp(_f32(get(p + "att.time_first")).astype(np.float64)).astype(np.float32)
                shape = _gguf_vector_shape(version, suffix, spec)
                yield b + gguf_name, p + "att.time_first", RawTensor.from_array(u.reshape(shape))
                continue
            if family == "5" and suffix == "att.time_mix_g" and version == "5.0":
                continue
            shape = _gguf_vector_shape(version, suffix, spec)
            yield b + gguf_name, name, RawTensor.from_array(_f32(get(name)).reshape(shape))
        for suffix, gguf_name in _LORAS.get(family, {}).items():
            name = p + suffix
            if family == "7" and suffix[4] == "v" and i == 0:
                continue
            yield b + gguf_name, name, RawTensor.from_array(np.ascontiguousarray(_f32(get(name)).T))
        if family == "6":
            w2 = _f32(get(p + "att.time_maa_w2"))  # (5, D, C) -> (5, C, D)
            yield b + "time_mix_w2.weight", p + "att.time_maa_w2", RawTensor.from_array(
                np.ascontiguousarray(w2.transpose(0, 2, 1)))
        if family == "7":
            r_k = _f32(get(p + "att.r_k")).reshape(C)
            yield b + "time_mix_r_k.weight", p + "att.r_k", RawTensor.from_array(r_k)
            if i == 0:
                # llama.cpp wants layer-0 value-residual tensors of the iclr rank; they are never used.
                for n in ("0", "1", "2"):
                    a = p + "att.a" + n
                    arr = _f32(get(a)) if n == "0" else np.ascontiguousarray(_f32(get(a)).T)
                    yield b + f"time_mix_v{n}.weight", a, RawTensor.from_array(arr.reshape(-1) if n == "0" else arr)
        if family in _FUSED:
            gguf_name, parts = _FUSED[family]
            fused = np.stack([_f32(get(p + s)).reshape(1, 1, C) for s in parts])  # (n, 1, 1, C)
            yield b + gguf_name, p + parts[0], RawTensor.from_array(fused)


def from_gguf(tensors: dict[str, RawTensor], arch: str, version: str, n_layer: int, head_size: int,
              path: str) -> dict[str, RawTensor]:
    """GGUF names and layout back to official names, shapes and semantics (the inverse of `to_gguf`)."""
    family = _family(version)
    out: dict[str, RawTensor] = {}
    # llama.cpp's placeholders for layer 0's value-residual mix: present, never used.
    used = {f"blk.0.time_mix_v{n}.weight" for n in "012"} if family == "7" else set()

    def get(name: str) -> RawTensor:
        if name not in tensors:
            raise ModelFileError(path, f"{arch} file is missing tensor '{name}'")
        used.add(name)
        return tensors[name]

    def put(name: str, raw: RawTensor, transform: Callable[[np.ndarray], np.ndarray] | None = None,
            keep_f16: bool = False) -> None:
        if transform is None:
            out[name] = raw
            return
        try:
            # A view of the mapped data, transposed or reshaped: no copy at load (LoRA matrices are
            # megabytes per layer), whatever layout the consumer then prefers. With keep_f16 (the
            # LoRAs, which the runtime computes with as stored) F16 stays F16; the rest is decoded.
            out[name] = RawTensor.from_array(transform(raw.typed_floats() if keep_f16 else _f32(raw)))
        except ValueError:
            raise ModelFileError(path, f"tensor for '{name}' has shape {list(raw.shape)}, which does not fit "
                                       f"head size {head_size}") from None

    for official, gguf_name in _COMMON.items():
        put(official, get(gguf_name))
    for i in range(n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        for suffix, gguf_name in _LAYER.items():
            if b + gguf_name in tensors:
                put(p + suffix, get(b + gguf_name))
        for suffix, gguf_name in _VECTORS[family].items():
            if b + gguf_name not in tensors:
                if (family == "7" and suffix == "att.v0" and i == 0) or (family == "5" and suffix == "att.time_mix_g"):
                    continue
            raw = get(b + gguf_name)
            if suffix in ("att.time_decay", "att.time_faaaa", "att.time_first") and family in ("4", "5"):
                put(p + suffix, raw, lambda a: a)  # official shapes: v4 (C,), v5 (H,) or (H, N)
            elif family == "6" and suffix == "att.time_faaaa":
                put(p + suffix, raw, lambda a: a.reshape(-1, head_size))
            else:
                put(p + suffix, raw, lambda a: a.reshape(1, 1, -1))
        for suffix, gguf_name in _LORAS.get(family, {}).items():
            if family == "7" and suffix[4] == "v" and i == 0:
                continue
            put(p + suffix, get(b + gguf_name), lambda a: a.T, keep_f16=True)
        if family == "6":
            put(p + "att.time_maa_w2", get(b + "time_mix_w2.weight"), lambda a: a.transpose(0, 2, 1))
        if family == "7":
            put(p + "att.r_k", get(b + "time_mix_r_k.weight"), lambda a: a.reshape(-1, head_size))
        if family in _FUSED:
            gguf_name, parts = _FUSED[family]
            fused = _f32(get(b + gguf_name))
            if fused.size % len(parts):
                raise ModelFileError(path, f"tensor '{b + gguf_name}' has shape {list(fused.shape)}, not {len(parts)} mixes")
            fused = fused.reshape(len(parts), -1)
            for k, s in enumerate(parts):
                out[p + s] = RawTensor.from_array(np.ascontiguousarray(fused[k].reshape(1, 1, -1)))
    unused = sorted(set(tensors) - used)
    if unused:
        raise ModelFileError(path, f"tensor '{unused[0]}' is not part of a {n_layer}-layer {arch} model "
                                   f"({len(unused)} unused; does block_count contradict the tensors?)")
    return out


_LORA_SUFFIXES = tuple(s for family in _LORAS.values() for s in family)


def storage_type_of(official: str) -> str:
    """'matrix' for the large Linear weights a quantizer may touch, 'emb', 'head', 'lora' for the 2-D
    LoRA matrices (v6, v7), else 'small'."""
    if official == "emb.weight":
        return "emb"
    if official == "head.weight":
        return "head"
    for suffix in ("att.key.weight", "att.value.weight", "att.receptance.weight", "att.gate.weight",
                   "att.output.weight", "ffn.key.weight", "ffn.value.weight", "ffn.receptance.weight"):
        if official.endswith(suffix):
            return "matrix"
    if official.endswith(_LORA_SUFFIXES):
        return "lora"
    return "small"


def is_float(qtype: GGMLType) -> bool:
    return qtype in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
