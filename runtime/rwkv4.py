"""RWKV-4 layer math in numpy float32 for T tokens, and the receptance-gated ChannelMix of v4, v5 and v6.

v4/v5 checkpoints store time_mix mu with mix = mu*x + (1-mu)*x_prev; it is loaded as m = 1 - mu so every
version shares the v6/v7 form x + (x_prev - x)*m (docs/rwkv-math.md §0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.spec import ModelSpec
from .elementwise import relu_squared, sigmoid, token_shift
from .weights import Linear, TensorSet


@dataclass(frozen=True)
class ChannelMixR:
    m_k: np.ndarray  # (C,) token-shift mixes in the x + (x_prev - x)*m form
    m_r: np.ndarray  # (C,)
    key: Linear  # (F, C)
    value: Linear  # (C, F)
    receptance: Linear  # (C, C)


def load_channel_mix(ts: TensorSet, spec: ModelSpec, i: int, mix_is_mu: bool) -> ChannelMixR:
    C, F = spec.n_embd, spec.n_ffn
    p = f"blocks.{i}.ffn."
    names = ("time_mix_k", "time_mix_r") if mix_is_mu else ("time_maa_k", "time_maa_r")
    m_k, m_r = (ts.array(p + n, (C,)) for n in names)
    if mix_is_mu:
        m_k, m_r = 1 - m_k, 1 - m_r
    return ChannelMixR(
        m_k, m_r,
        key=ts.linear(p + "key.weight", F, C),
        value=ts.linear(p + "value.weight", C, F),
        receptance=ts.linear(p + "receptance.weight", C, C),
    )


def native_channel_mix(cm: ChannelMixR) -> dict[str, object]:
    """The rke_channel_mix fields (csrc/rke_model.h) of a layer's `ffn`."""
    return {
        "ffn.m_k": cm.m_k, "ffn.m_r": cm.m_r,
        "ffn.key": cm.key.matrix, "ffn.value": cm.value.matrix, "ffn.receptance": cm.receptance.matrix,
    }


def channel_mix(cm: ChannelMixR, x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
    """x: (T, C) post-LN input; x_prev (C,) updated in place. Returns (T, C)."""
    xx = token_shift(x, x_prev)
    r = sigmoid(cm.receptance(x + xx * cm.m_r))
    return r * cm.value(relu_squared(cm.key(x + xx * cm.m_k)))


@dataclass(frozen=True)
class Layer4:
    m_k: np.ndarray  # (C,)
    m_v: np.ndarray  # (C,)
    m_r: np.ndarray  # (C,)
    w: np.ndarray  # (C,) log-decay per token, -exp(time_decay)
    u: np.ndarray  # (C,) log-bonus of the current token, time_first
    key: Linear
    value: Linear
    receptance: Linear
    output: Linear
    ffn: ChannelMixR


def load_layer(ts: TensorSet, spec: ModelSpec, i: int) -> Layer4:
    C = spec.n_embd
    p = f"blocks.{i}.att."
    mu = {n: ts.array(p + "time_mix_" + n, (C,)) for n in ("k", "v", "r")}
    return Layer4(
        m_k=1 - mu["k"], m_v=1 - mu["v"], m_r=1 - mu["r"],
        w=-np.exp(ts.array(p + "time_decay", (C,))),
        u=ts.array(p + "time_first", (C,)),
        key=ts.linear(p + "key.weight", C, C),
        value=ts.linear(p + "value.weight", C, C),
        receptance=ts.linear(p + "receptance.weight", C, C),
        output=ts.linear(p + "output.weight", C, C),
        ffn=load_channel_mix(ts, spec, i, mix_is_mu=True),
    )


def time_mix(
    lw: Layer4,
    x: np.ndarray,  # (T, C) post-LN input
    x_prev: np.ndarray,  # (C,) updated in place
    aa: np.ndarray,  # (C,) state, updated in place
    bb: np.ndarray,  # (C,)
    pp: np.ndarray,  # (C,)
) -> np.ndarray:
    xx = token_shift(x, x_prev)
    r = sigmoid(lw.receptance(x + xx * lw.m_r))
    k = lw.key(x + xx * lw.m_k)
    v = lw.value(x + xx * lw.m_v)
    y = np.empty_like(k)  # (T, C)
    for t in range(len(k)):
        # Weighted average of past values with a running max, so no exponential overflows (§4.3).
        kt, vt = k[t], v[t]
        ww = lw.u + kt
        q = np.maximum(pp, ww)
        e1, e2 = np.exp(pp - q), np.exp(ww - q)
        y[t] = (e1 * aa + e2 * vt) / (e1 * bb + e2)
        ww = pp + lw.w
        q = np.maximum(ww, kt)
        e1, e2 = np.exp(ww - q), np.exp(kt - q)
        aa[:] = e1 * aa + e2 * vt
        bb[:] = e1 * bb + e2
        pp[:] = q
    return lw.output(r * y)


def native_fields(lw: Layer4) -> dict[str, object]:
    """The rke_rwkv4_layer fields (csrc/rke_model.h) but ln1/ln2."""
    return {
        "m_k": lw.m_k, "m_v": lw.m_v, "m_r": lw.m_r, "w": lw.w, "u": lw.u,
        "key": lw.key.matrix, "value": lw.value.matrix, "receptance": lw.receptance.matrix,
        "output": lw.output.matrix, **native_channel_mix(lw.ffn),
    }
