"""RWKV-7 ("Goose", x070) layer math in numpy float32, for T tokens at once.

Projections run as (T, C) matrix products; only the WKV recurrence steps token by token.
Names follow the reference's RWKV_x070_TMix_one (docs/rwkv-math.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.spec import ModelSpec
from .elementwise import relu_squared, sigmoid, token_shift
from .norms import group_norm
from .weights import Linear, TensorSet

# exp(-1/2), written as the reference writes it: w = exp(-0.606531 * sigmoid(w0 + lora)).
DECAY_SCALE = np.float32(0.606531)


@dataclass(frozen=True)
class Layer7:
    x_r: np.ndarray  # (C,) token-shift mixes
    x_w: np.ndarray
    x_k: np.ndarray
    x_v: np.ndarray
    x_a: np.ndarray
    x_g: np.ndarray
    w0: np.ndarray  # (C,)
    w1: Linear  # C -> D_w; LoRAs as stored (TensorSet.lora_linear)
    w2: Linear  # D_w -> C
    a0: np.ndarray  # (C,)
    a1: Linear  # C -> D_a
    a2: Linear  # D_a -> C
    v0: np.ndarray | None  # (C,), layers >= 1 only
    v1: Linear | None  # C -> D_v
    v2: Linear | None  # D_v -> C
    g1: Linear  # C -> D_g
    g2: Linear  # D_g -> C
    k_k: np.ndarray  # (C,)
    k_a: np.ndarray  # (C,)
    r_k: np.ndarray  # (H, N)
    receptance: Linear
    key: Linear
    value: Linear
    output: Linear
    ln_x_w: np.ndarray  # (C,)
    ln_x_b: np.ndarray  # (C,)
    ffn_x_k: np.ndarray  # (C,)
    ffn_key: Linear  # (F, C)
    ffn_value: Linear  # (C, F)


def load_layer(ts: TensorSet, spec: ModelSpec, i: int) -> Layer7:
    C, F, H, N, r = spec.n_embd, spec.n_ffn, spec.n_head, spec.head_size, spec.lora
    p = f"blocks.{i}.att."
    vec = {n: ts.array(p + n, (C,)) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a")}
    has_v = i > 0
    return Layer7(
        **vec,
        w1=ts.lora_linear(p + "w1", C, r["w"]),
        w2=ts.lora_linear(p + "w2", r["w"], C),
        a1=ts.lora_linear(p + "a1", C, r["a"]),
        a2=ts.lora_linear(p + "a2", r["a"], C),
        v0=ts.array(p + "v0", (C,)) if has_v else None,
        v1=ts.lora_linear(p + "v1", C, r["v"]) if has_v else None,
        v2=ts.lora_linear(p + "v2", r["v"], C) if has_v else None,
        g1=ts.lora_linear(p + "g1", C, r["g"]),
        g2=ts.lora_linear(p + "g2", r["g"], C),
        r_k=ts.array(p + "r_k", (H, N)),
        receptance=ts.linear(p + "receptance.weight", C, C),
        key=ts.linear(p + "key.weight", C, C),
        value=ts.linear(p + "value.weight", C, C),
        output=ts.linear(p + "output.weight", C, C),
        ln_x_w=ts.array(p + "ln_x.weight", (C,)),
        ln_x_b=ts.array(p + "ln_x.bias", (C,)),
        ffn_x_k=ts.array(f"blocks.{i}.ffn.x_k", (C,)),
        ffn_key=ts.linear(f"blocks.{i}.ffn.key.weight", F, C),
        ffn_value=ts.linear(f"blocks.{i}.ffn.value.weight", C, F),
    )


def time_mix(
    lw: Layer7,
    spec: ModelSpec,
    x: np.ndarray,  # (T, C) post-LN input
    x_prev: np.ndarray,  # (C,) state: previous token's post-LN input, updated in place
    S: np.ndarray,  # (H, N[value], N[key]) state, updated in place
    v_first: np.ndarray | None,  # (T, C) layer-0 values, None in layer 0
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (output (T, C), v_first (T, C))."""
    T, C = x.shape
    H, N = spec.n_head, spec.head_size
    xx = token_shift(x, x_prev)  # (T, C)
    xr, xw, xk = x + xx * lw.x_r, x + xx * lw.x_w, x + xx * lw.x_k
    xv, xa, xg = x + xx * lw.x_v, x + xx * lw.x_a, x + xx * lw.x_g

    r = lw.receptance(xr)  # (T, C)
    w = lw.w2(np.tanh(lw.w1(xw)))
    k = lw.key(xk)
    v = lw.value(xv)
    a = sigmoid(lw.a0 + lw.a2(lw.a1(xa)))
    g = lw.g2(sigmoid(lw.g1(xg)))

    kk = (k * lw.k_k).reshape(T, H, N)
    kk = (kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), np.float32(1e-12))).reshape(T, C)
    k = k * (1 + (a - 1) * lw.k_a)
    if v_first is None:
        v_first = v
    else:
        v = v + (v_first - v) * sigmoid(lw.v0 + lw.v2(lw.v1(xv)))
    w = np.exp(-DECAY_SCALE * sigmoid(lw.w0 + w))

    y = wkv7(S, r, w, k, v, -kk, kk * a, H)  # (T, C)
    y = group_norm(y, H, lw.ln_x_w, lw.ln_x_b, spec.group_norm_eps)
    rk = (r * k * lw.r_k.reshape(C)).reshape(T, H, N).sum(axis=-1, keepdims=True)  # (T, H, 1)
    y = y + (rk * v.reshape(T, H, N)).reshape(T, C)
    return lw.output(y * g), v_first


def wkv7(
    S: np.ndarray,  # (H, N[value], N[key]) updated in place
    r: np.ndarray,  # (T, C) receptance
    w: np.ndarray,  # (T, C) decay in (0, 1)
    k: np.ndarray,  # (T, C)
    v: np.ndarray,  # (T, C)
    a: np.ndarray,  # (T, C) removal key, -kk
    b: np.ndarray,  # (T, C) replacement key, kk * alpha
    n_head: int,
) -> np.ndarray:
    """The generalised delta rule S <- S diag(w) + (S a) b^T + v k^T, output y = S r, for T tokens."""
    T, C = r.shape
    N = C // n_head
    y = np.empty((T, C), dtype=np.float32)
    for t in range(T):
        rt, wt, kt, vt, at, bt = (m[t].reshape(n_head, N) for m in (r, w, k, v, a, b))
        sa = S @ at[:, :, None]  # (H, N, 1)
        S *= wt[:, None, :]
        S += sa * bt[:, None, :] + vt[:, :, None] * kt[:, None, :]
        y[t] = (S @ rt[:, :, None]).reshape(C)
    return y


def channel_mix(lw: Layer7, x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
    """x: (T, C) post-LN input; x_prev (C,) updated in place. Returns (T, C)."""
    xx = token_shift(x, x_prev)
    return lw.ffn_value(relu_squared(lw.ffn_key(x + xx * lw.ffn_x_k)))


def native_fields(lw: Layer7) -> dict[str, object]:
    """The rke_rwkv7_layer fields (csrc/rke_model.h) but ln1/ln2; layer 0 has no v0/v1/v2."""
    vectors = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a", "ln_x_w", "ln_x_b",
               "ffn_x_k")
    fields: dict[str, object] = {name: getattr(lw, name) for name in vectors}
    for name in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
        lora = getattr(lw, name)
        fields[name] = lora.matrix if lora is not None else None
    fields["r_k"] = lw.r_k.reshape(-1)
    for name in ("receptance", "key", "value", "output", "ffn_key", "ffn_value"):
        fields[name] = getattr(lw, name).matrix
    return fields
