"""Model version detection and hyper-parameters, read from official tensor names and shapes alone.

Versions follow the reference's naming: '4', '5.0' (rwkv.cpp calls it "5.1"), '5.1', '5.2', '6', '7'.
Nothing is assumed: widths, heads, head size and LoRA ranks all come from shapes (docs/rwkv-math.md §3).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import ModelFileError
from .ggml_types import RawTensor

# Official GroupNorm eps of every v5/v6/v7 model (the training code's ln_x on y/8 with eps 1e-5).
OFFICIAL_GROUP_NORM_EPS = 64e-5
LAYER_NORM_EPS = 1e-5

# Research variants that official releases do not use; each is refused by name.
_VARIANTS = {
    "blocks.0.pos_emb_x": "RWKV-4 learned position embedding (pos_emb)",
    "head_q.weight": "RWKV-4 head_qk",
    "blocks.0.att.tiny_q.weight": "RWKV-4 tiny attention",
    "blocks.0.tiny_q.weight": "RWKV-4 tiny attention",
    "blocks.0.ffnPre.key.weight": "RWKV-4 pre_ffn",
    "blocks.0.ffn.s_emb.weight": "RWKV-7 DeepEmbed",
    "blocks.0.ffn.s1": "RWKV-7 DeepEmbed",
    "blocks.0.att.time_maa_rkvw_w1": "RWKV-6 x060 research variant (time_maa_rkvw)",
    "blocks.0.att.gate_w1": "RWKV-6 x060 research variant (gate LoRA)",
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything the forward pass needs to know about a model's shape."""

    version: str
    n_vocab: int
    n_embd: int  # C
    n_layer: int  # L
    n_att: int  # C_att = H * N
    n_ffn: int  # F
    n_head: int  # H (1 for v4, which has no heads)
    head_size: int  # N (1 for v4)
    lora: dict[str, int] = field(default_factory=dict)  # v6: mix, decay; v7: w, a, v, g
    group_norm_eps: float = OFFICIAL_GROUP_NORM_EPS
    layer_norm_eps: float = LAYER_NORM_EPS
    # llama.cpp's v6 files divide att.output/ffn.value of layer i by 2**(i // n) and halve the residual
    # stream after every n-th layer (n = rescale_every); 0 = weights as trained.
    rescale_every: int = 0

    @property
    def state_floats_per_layer(self) -> int:
        if self.version == "4":
            return 5 * self.n_embd
        return 2 * self.n_embd + self.n_head * self.head_size * self.head_size

    @property
    def state_nbytes(self) -> int:
        return 4 * self.n_layer * self.state_floats_per_layer


def _shape(tensors: dict[str, RawTensor], name: str, path: str, rank: int | None = None) -> tuple[int, ...]:
    """The tensor's shape; with `rank`, checked to have that many axes (size-1 axes squeezed for rank 1)."""
    if name not in tensors:
        raise ModelFileError(path, f"missing tensor '{name}'")
    shape = tensors[name].shape
    if rank is not None and len(shape) != rank and not (rank == 1 and len(_squeezed(shape)) == 1):
        raise ModelFileError(path, f"tensor '{name}' has shape {list(shape)}, expected {rank} dimensions")
    return shape


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1) or (1,)


def detect_version(tensors: dict[str, RawTensor], path: str) -> str:
    for name, what in _VARIANTS.items():
        if name in tensors:
            raise ModelFileError(path, f"unsupported model variant: {what} ('{name}')")
    if "emb.weight" not in tensors or "blocks.0.ln1.weight" not in tensors:
        raise ModelFileError(path, "not an RWKV checkpoint (no 'emb.weight' / 'blocks.0.ln1.weight')")
    if "blocks.0.att.r_k" in tensors or "blocks.0.att.k_k" in tensors:
        return "7"
    if "blocks.0.att.time_maa_x" in tensors:
        return "6"
    if "blocks.0.att.ln_x.weight" in tensors:
        if "blocks.0.att.gate.weight" not in tensors:
            return "5.0"
        decay = _squeezed(_shape(tensors, "blocks.0.att.time_decay", path))
        return "5.1" if len(decay) == 1 else "5.2"
    return "4"


def _n_layer(tensors: dict[str, RawTensor], path: str) -> int:
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_layer = max(layers) + 1 if layers else 0
    if n_layer == 0 or layers != set(range(n_layer)):
        raise ModelFileError(path, f"blocks are not numbered 0..n-1 (found {sorted(layers)[:8]}...)")
    return n_layer


def detect_spec(
    tensors: dict[str, RawTensor],
    path: str | os.PathLike[str],
    *,
    group_norm_eps: float | None = None,
    rescale_every: int = 0,
) -> ModelSpec:
    """Version and hyper-parameters of a checkpoint in official names (any storage type)."""
    path = os.fspath(path)
    version = detect_version(tensors, path)
    emb = _shape(tensors, "emb.weight", path)
    if len(emb) != 2:
        raise ModelFileError(path, f"emb.weight has shape {emb}, expected [n_vocab, n_embd]")
    n_vocab, n_embd = emb
    n_layer = _n_layer(tensors, path)
    n_att = _shape(tensors, "blocks.0.att.key.weight", path, 2)[0]
    n_ffn = _shape(tensors, "blocks.0.ffn.key.weight", path, 2)[0]
    lora: dict[str, int] = {}
    if version == "4":
        n_head, head_size = 1, 1
    elif version in ("5.0", "5.1", "5.2"):
        n_head = _squeezed(_shape(tensors, "blocks.0.att.time_decay", path))[0]
        if len(_squeezed(tensors["blocks.0.att.time_decay"].shape)) > 2:
            raise ModelFileError(path, "blocks.0.att.time_decay has more than 2 dimensions")
        head_size = n_att // n_head
    elif version == "6":
        n_head = _shape(tensors, "blocks.0.att.time_faaaa", path, 2)[0]
        head_size = n_att // n_head
        lora["mix"] = _shape(tensors, "blocks.0.att.time_maa_w1", path, 2)[1] // 5
        lora["decay"] = _shape(tensors, "blocks.0.att.time_decay_w1", path, 2)[1]
    else:
        n_head, head_size = _shape(tensors, "blocks.0.att.r_k", path, 2)
        lora["w"] = _shape(tensors, "blocks.0.att.w1", path, 2)[1]
        lora["a"] = _shape(tensors, "blocks.0.att.a1", path, 2)[1]
        lora["g"] = _shape(tensors, "blocks.0.att.g1", path, 2)[1]
        lora["v"] = _shape(tensors, "blocks.1.att.v1", path, 2)[1] if n_layer > 1 else 0
    if version != "4" and (n_head <= 0 or n_head * head_size != n_att):
        raise ModelFileError(path, f"{n_att} attention channels do not split into {n_head} heads")
    if n_att != n_embd:
        raise ModelFileError(path, f"attention width {n_att} differs from n_embd {n_embd}; not supported")
    eps = OFFICIAL_GROUP_NORM_EPS if group_norm_eps is None else group_norm_eps
    return ModelSpec(
        version, n_vocab, n_embd, n_layer, n_att, n_ffn, n_head, head_size, lora, eps, LAYER_NORM_EPS, rescale_every
    )
