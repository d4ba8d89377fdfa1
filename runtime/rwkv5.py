"""RWKV-5 (5.0, 5.1, 5.2) TimeMix in numpy float32 for T tokens, and the matrix-state WKV shared with v6.

5.0 has no gate and one decay per head; 5.1 adds the gate; 5.2 has one decay per head channel.
The GroupNorm eps is the model's (official 64e-5; rwkv.cpp's v5 files 1e-5), see docs/rwkv-math.md §5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.spec import ModelSpec
from .elementwise import silu, token_shift
from .norms import group_norm
from .rwkv4 import ChannelMixR, load_channel_mix, native_channel_mix
from .weights import Linear, TensorSet


@dataclass(frozen=True)
class Layer5:
    m_k: np.ndarray  # (C,) token-shift mixes, x + (x_prev - x)*m form
    m_v: np.ndarray
    m_r: np.ndarray
    m_g: np.ndarray | None  # (C,), 5.1 and 5.2 only
    w: np.ndarray  # (C,) decay in (0, 1) per head channel, exp(-exp(time_decay))
    u: np.ndarray  # (C,) bonus of the current token
    key: Linear
    value: Linear
    receptance: Linear
    gate: Linear | None
    output: Linear
    ln_x_w: np.ndarray  # (C,)
    ln_x_b: np.ndarray  # (C,)
    ffn: ChannelMixR


def load_layer(ts: TensorSet, spec: ModelSpec, i: int) -> Layer5:
    C, H, N = spec.n_embd, spec.n_head, spec.head_size
    p = f"blocks.{i}.att."
    gated = spec.version != "5.0"
    mu = {n: ts.array(p + "time_mix_" + n, (C,)) for n in ("k", "v", "r", "g")[: 4 if gated else 3]}
    per_channel = spec.version == "5.2"
    decay = ts.array(p + "time_decay", (H, N) if per_channel else (H, 1))
    w = np.broadcast_to(np.exp(-np.exp(decay)), (H, N)).reshape(C)
    # Checkpoints with time_faaaa carry the bonus itself; older ones its logarithm (§5.2).
    if ts.has(p + "time_faaaa"):
        u = ts.array(p + "time_faaaa", (H, N) if per_channel else (H, 1))
    else:
        u = np.exp(ts.array(p + "time_first", (H, 1)))
    return Layer5(
        m_k=1 - mu["k"], m_v=1 - mu["v"], m_r=1 - mu["r"],
        m_g=1 - mu["g"] if gated else None,
        w=np.ascontiguousarray(w, dtype=np.float32),
        u=np.ascontiguousarray(np.broadcast_to(u, (H, N)).reshape(C), dtype=np.float32),
        key=ts.linear(p + "key.weight", C, C),
        value=ts.linear(p + "value.weight", C, C),
        receptance=ts.linear(p + "receptance.weight", C, C),
        gate=ts.linear(p + "gate.weight", C, C) if gated else None,
        output=ts.linear(p + "output.weight", C, C),
        ln_x_w=ts.array(p + "ln_x.weight", (C,)),
        ln_x_b=ts.array(p + "ln_x.bias", (C,)),
        ffn=load_channel_mix(ts, spec, i, mix_is_mu=True),
    )


def wkv5(
    S: np.ndarray,  # (H, N[value], N[key]) updated in place
    r: np.ndarray,  # (T, C)
    w: np.ndarray,  # (T, C) or (C,) decay in (0, 1), acting on the key index
    k: np.ndarray,  # (T, C)
    v: np.ndarray,  # (T, C)
    u: np.ndarray,  # (C,) bonus
) -> np.ndarray:
    """Output reads the old state plus the bonus term; the state is updated after (§5.3)."""
    T, C = r.shape
    H = S.shape[0]
    N = C // H
    w = np.broadcast_to(w, (T, C))
    y = np.empty((T, C), dtype=np.float32)
    for t in range(T):
        rt, wt, kt, vt = (m[t].reshape(H, N) for m in (r, w, k, v))
        bonus = np.sum(rt * u.reshape(H, N) * kt, axis=-1, keepdims=True)  # (H, 1)
        y[t] = ((S @ rt[:, :, None])[:, :, 0] + bonus * vt).reshape(C)
        S *= wt[:, None, :]
        S += vt[:, :, None] * kt[:, None, :]
    return y


def time_mix(lw: Layer5, spec: ModelSpec, x: np.ndarray, x_prev: np.ndarray, S: np.ndarray) -> np.ndarray:
    """x: (T, C) post-LN input; x_prev (C,) and S (H, N, N) updated in place. Returns (T, C)."""
    xx = token_shift(x, x_prev)
    r = lw.receptance(x + xx * lw.m_r)
    k = lw.key(x + xx * lw.m_k)
    v = lw.value(x + xx * lw.m_v)
    y = group_norm(wkv5(S, r, lw.w, k, v, lw.u), spec.n_head, lw.ln_x_w, lw.ln_x_b, spec.group_norm_eps)
    if lw.gate is not None:
        y = y * silu(lw.gate(x + xx * lw.m_g))
    return lw.output(y)


def native_fields(lw: Layer5) -> dict[str, object]:
    """The rke_rwkv5_layer fields (csrc/rke_model.h) but ln1/ln2; 5.0 has no m_g and gate."""
    return {
        "m_k": lw.m_k, "m_v": lw.m_v, "m_r": lw.m_r, "m_g": lw.m_g, "w": lw.w, "u": lw.u,
        "ln_x_w": lw.ln_x_w, "ln_x_b": lw.ln_x_b,
        "key": lw.key.matrix, "value": lw.value.matrix, "receptance": lw.receptance.matrix,
        "gate": lw.gate.matrix if lw.gate is not None else None, "output": lw.output.matrix,
        **native_channel_mix(lw.ffn),
    }
