"""RWKV-6 ("Finch", x060) TimeMix in numpy float32 for T tokens: data-dependent token shift and decay.

The five LoRA chunks come in the order w, k, v, r, g (docs/rwkv-math.md §6.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.spec import ModelSpec
from .elementwise import silu, token_shift
from .norms import group_norm
from .rwkv4 import ChannelMixR, load_channel_mix, native_channel_mix
from .rwkv5 import wkv5
from .weights import Linear, TensorSet, lora_matrix


@dataclass(frozen=True)
class Layer6:
    maa_x: np.ndarray  # (C,)
    maa_wkvrg: np.ndarray  # (5, C) base mixes in LoRA chunk order w, k, v, r, g
    maa_w1: Linear  # C -> 5 * D_mix, as stored (TensorSet.lora_linear)
    maa_w2: np.ndarray  # (5, D_mix, C) as TensorSet.lora lays it out
    decay: np.ndarray  # (C,) time_decay, raw
    decay_w1: Linear  # C -> D_decay
    decay_w2: Linear  # D_decay -> C
    u: np.ndarray  # (C,) time_faaaa
    key: Linear
    value: Linear
    receptance: Linear
    gate: Linear
    output: Linear
    ln_x_w: np.ndarray  # (C,)
    ln_x_b: np.ndarray  # (C,)
    ffn: ChannelMixR


def load_layer(ts: TensorSet, spec: ModelSpec, i: int) -> Layer6:
    C, H, N = spec.n_embd, spec.n_head, spec.head_size
    D_mix, D_decay = spec.lora["mix"], spec.lora["decay"]
    p = f"blocks.{i}.att."
    return Layer6(
        maa_x=ts.array(p + "time_maa_x", (C,)),
        maa_wkvrg=np.stack([ts.array(p + "time_maa_" + n, (C,)) for n in "wkvrg"]),
        maa_w1=ts.lora_linear(p + "time_maa_w1", C, 5 * D_mix),
        maa_w2=ts.lora(p + "time_maa_w2", (5, D_mix, C)),
        decay=ts.array(p + "time_decay", (C,)),
        decay_w1=ts.lora_linear(p + "time_decay_w1", C, D_decay),
        decay_w2=ts.lora_linear(p + "time_decay_w2", D_decay, C),
        u=ts.array(p + "time_faaaa", (H, N)).reshape(C),
        key=ts.linear(p + "key.weight", C, C),
        value=ts.linear(p + "value.weight", C, C),
        receptance=ts.linear(p + "receptance.weight", C, C),
        gate=ts.linear(p + "gate.weight", C, C),
        output=ts.linear(p + "output.weight", C, C),
        ln_x_w=ts.array(p + "ln_x.weight", (C,)),
        ln_x_b=ts.array(p + "ln_x.bias", (C,)),
        ffn=load_channel_mix(ts, spec, i, mix_is_mu=False),
    )


def time_mix(lw: Layer6, spec: ModelSpec, x: np.ndarray, x_prev: np.ndarray, S: np.ndarray) -> np.ndarray:
    """x: (T, C) post-LN input; x_prev (C,) and S (H, N, N) updated in place. Returns (T, C)."""
    T, C = x.shape
    D_mix = spec.lora["mix"]
    xx = token_shift(x, x_prev)
    h = np.tanh(lw.maa_w1(x + xx * lw.maa_x)).reshape(T, 5, D_mix)
    lam = np.einsum("tfd,fdc->ftc", h, lw.maa_w2)  # (5, T, C) in order w, k, v, r, g
    xw, xk, xv, xr, xg = (x + xx * (lw.maa_wkvrg[f] + lam[f]) for f in range(5))
    r = lw.receptance(xr)
    k = lw.key(xk)
    v = lw.value(xv)
    g = silu(lw.gate(xg))
    w = np.exp(-np.exp(lw.decay + lw.decay_w2(np.tanh(lw.decay_w1(xw)))))  # (T, C)
    y = group_norm(wkv5(S, r, w, k, v, lw.u), spec.n_head, lw.ln_x_w, lw.ln_x_b, spec.group_norm_eps)
    return lw.output(y * g)


def native_fields(lw: Layer6) -> dict[str, object]:
    """The rke_rwkv6_layer fields (csrc/rke_model.h) but ln1/ln2."""
    return {
        "maa_x": lw.maa_x, "maa_wkvrg": lw.maa_wkvrg, "maa_w1": lw.maa_w1.matrix,
        "maa_w2": [lora_matrix(chunk) for chunk in lw.maa_w2],
        "decay": lw.decay, "decay_w1": lw.decay_w1.matrix, "decay_w2": lw.decay_w2.matrix, "u": lw.u,
        "ln_x_w": lw.ln_x_w, "ln_x_b": lw.ln_x_b,
        "key": lw.key.matrix, "value": lw.value.matrix, "receptance": lw.receptance.matrix,
        "gate": lw.gate.matrix, "output": lw.output.matrix, **native_channel_mix(lw.ffn),
    }
