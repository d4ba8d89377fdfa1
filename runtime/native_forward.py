"""Hand a loaded model's weights to the C forward pass (kernels.model_native): which array fills
which field of the C structs, per version. The arrays stay where the loader put them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ..kernels import ThreadPool
from ..kernels.model_native import ModelDims, NativeModel
from ..quant.spec import ModelSpec
from . import rwkv4, rwkv5, rwkv6, rwkv7
from .weights import Embedding, Linear

_FIELDS: dict[str, Callable[..., dict[str, object]]] = {
    "4": rwkv4.native_fields,
    "5.0": rwkv5.native_fields,
    "5.1": rwkv5.native_fields,
    "5.2": rwkv5.native_fields,
    "6": rwkv6.native_fields,
    "7": rwkv7.native_fields,
}


class _Block(Protocol):
    ln1: tuple[np.ndarray, np.ndarray]
    ln2: tuple[np.ndarray, np.ndarray]
    mix: object


def dims_of(spec: ModelSpec) -> ModelDims:
    lora = {"6": ("mix", "decay"), "7": ("w", "a", "v", "g")}.get(spec.version, ())
    return ModelDims(
        version=int(spec.version.split(".")[0]),
        n_vocab=spec.n_vocab,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_ffn=spec.n_ffn,
        n_head=spec.n_head,
        head_size=spec.head_size,
        lora=tuple(spec.lora[name] for name in lora),
        layer_norm_eps=spec.layer_norm_eps,
        group_norm_eps=spec.group_norm_eps,
        rescale_every=spec.rescale_every,
    )


def layer_fields(version: str, block: _Block) -> dict[str, object]:
    """A block's arrays by rke_rwkv{4,5,6,7}_layer field name (csrc/rke_model.h)."""
    layer = _FIELDS[version](block.mix)
    layer.update({"ln1_w": block.ln1[0], "ln1_b": block.ln1[1], "ln2_w": block.ln2[0], "ln2_b": block.ln2[1]})
    # Vectors are views of the file where they can be; C wants them contiguous (no-op copies).
    return {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in layer.items()}


def build(
    spec: ModelSpec,
    emb: Embedding,
    ln_out: tuple[np.ndarray, np.ndarray],
    head: Linear,
    blocks: Sequence[_Block],
    backend: str,
    pool: ThreadPool | None,
) -> NativeModel:
    """The C model for `backend` ('avxvnni', 'avx2' or 'scalar'); ValueError if an array does not fit."""
    layers = [layer_fields(spec.version, block) for block in blocks]
    return NativeModel(
        dims_of(spec),
        emb=emb.matrix,
        emb_round=emb.fold_dtype,
        ln0=emb.ln0,
        ln_out=ln_out,
        head=head.matrix,
        layers=layers,
        backend=backend,
        pool=pool,
    )
