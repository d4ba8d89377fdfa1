"""Random-weight RWKV checkpoints at the real models' shapes, for benchmarks (speed does not depend on values).

Values are drawn so the model runs without overflow (LN weights near 1, matrices ~N(0, 1/in), decays in
range); they are not a trained model. Tensors are F16, as official checkpoints are 16-bit.
"""

from __future__ import annotations

import numpy as np

from ..quant.checkpoint import Checkpoint
from ..quant.ggml_types import RawTensor
from ..quant.spec import detect_spec

# name -> (version, n_layer, n_embd, n_ffn, n_vocab, head_size, lora ranks), docs/rwkv-math.md §3.
SHAPES = {
    "v7-0.1b": ("7", 12, 768, 3072, 65536, 64, {"w": 64, "a": 64, "v": 32, "g": 128}),
    "v7-0.4b": ("7", 24, 1024, 4096, 65536, 64, {"w": 64, "a": 64, "v": 32, "g": 128}),
    "v7-1.5b": ("7", 24, 2048, 8192, 65536, 64, {"w": 96, "a": 96, "v": 64, "g": 256}),
    "v4-169m": ("4", 12, 768, 3072, 50277, 1, {}),
    "v4-1.5b": ("4", 24, 2048, 8192, 50277, 1, {}),
}


def random_checkpoint(name: str, seed: int = 0) -> Checkpoint:
    version, L, C, F, V, N, lora = SHAPES[name]
    rng = np.random.default_rng(seed)
    H = C // N
    t: dict[str, RawTensor] = {}

    def put(key: str, shape: tuple[int, ...], scale: float, offset: float = 0.0) -> None:
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) + np.float32(offset)
        t[key] = RawTensor.from_array(values.astype(np.float16))

    def uniform(key: str, shape: tuple[int, ...], lo: float, hi: float) -> None:
        t[key] = RawTensor.from_array(rng.uniform(lo, hi, shape).astype(np.float16))

    put("emb.weight", (V, C), 1e-2)
    put("head.weight", (V, C), C**-0.5)
    for ln in ("blocks.0.ln0", "ln_out"):
        put(ln + ".weight", (C,), 0.1, 1.0)
        put(ln + ".bias", (C,), 0.1)
    for i in range(L):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            put(p + ln + ".weight", (C,), 0.1, 1.0)
            put(p + ln + ".bias", (C,), 0.1)
        for m in ("key", "value", "receptance", "output"):
            put(p + f"att.{m}.weight", (C, C), C**-0.5)
        put(p + "ffn.key.weight", (F, C), C**-0.5)
        put(p + "ffn.value.weight", (C, F), F**-0.5)
        if version == "4":
            for m in "kvr":
                uniform(p + f"att.time_mix_{m}", (1, 1, C), 0.1, 0.9)
            for m in "kr":
                uniform(p + f"ffn.time_mix_{m}", (1, 1, C), 0.1, 0.9)
            uniform(p + "att.time_decay", (C,), -5.0, 1.0)
            put(p + "att.time_first", (C,), 0.5)
            put(p + "ffn.receptance.weight", (C, C), C**-0.5)
        else:
            for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "k_k", "k_a"):
                uniform(p + f"att.{m}", (1, 1, C), 0.1, 0.9)
            for m in ("w0", "a0", "v0"):
                put(p + f"att.{m}", (1, 1, C), 0.5)
            for m, r in (("w", lora["w"]), ("a", lora["a"]), ("v", lora["v"]), ("g", lora["g"])):
                put(p + f"att.{m}1", (C, r), C**-0.5)
                put(p + f"att.{m}2", (r, C), 0.1 * r**-0.5)
            put(p + "att.r_k", (H, N), 0.1)
            put(p + "att.ln_x.weight", (C,), 0.1, 1.0)
            put(p + "att.ln_x.bias", (C,), 0.1)
            uniform(p + "ffn.x_k", (1, 1, C), 0.1, 0.9)
    return Checkpoint(f"<random {name}>", "random", t, detect_spec(t, f"<random {name}>"))
