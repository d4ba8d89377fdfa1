"""rwkv-edge's logits for a GGUF file, optionally with the input rounding ggml's CPU matrix products apply.

ggml multiplies a weight of type W by activations first converted to W's `vec_dot_type`: fp16 for F16,
Q8_0 blocks (32 values, fp16 scale) for Q8_0/Q4_0/Q5_0 (Q8_1 for Q4_1/Q5_1: the same values), Q8_K
blocks (256 values, fp32 scale) for the K-quants. rwkv-edge's numpy reference multiplies in float32. To
tell that difference apart from a misread file, the interoperability check rebuilds the model with each
Linear rounding its input the same way (and, to measure how chaotic that rounding makes a model, with a
tiny relative jitter before it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np

from ..quant.checkpoint import Checkpoint, open_checkpoint
from ..quant.ggml_types import GGMLType, RawTensor
from ..quant.gguf_layout import to_gguf
from ..runtime import weights
from ..runtime.model import Model

_Q8_0_INPUT = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
_Q8_K_INPUT = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def _q8_rows(x: np.ndarray, block: int, f16_scale: bool) -> np.ndarray:
    """x (T, n) through ggml's quantize_row_q8_0 (scale max|x|/127 stored fp16, values rint(x·127/max|x|))
    or quantize_row_q8_K (fp32 scale), back to float32."""
    T, n = x.shape
    b = x.reshape(T, n // block, block)
    amax = np.abs(b).max(axis=-1, keepdims=True)  # (T, n/block, 1)
    d = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    q = np.clip(np.rint(b * inv), -127, 127)  # (T, n/block, block)
    if f16_scale:
        d = d.astype(np.float16).astype(np.float32)
    return (q * d).astype(np.float32).reshape(T, n)


def round_activations(x: np.ndarray, weight_type: str) -> np.ndarray:
    """x (T, in) float32 as ggml's CPU matrix product sees it next to a weight of ggml type `weight_type`."""
    if weight_type in ("F16", "BF16"):
        return weights.round_to(x, GGMLType[weight_type])
    if weight_type in _Q8_0_INPUT:
        return _q8_rows(x, 32, True)
    if weight_type in _Q8_K_INPUT:
        return _q8_rows(x, 256, False)
    return x


class RoundedInputLinear(weights.Linear):
    """A Linear whose input is rounded as ggml rounds it, after a relative jitter of size `noise` (0: none)."""

    def __init__(self, original: weights.Linear, weight_type: str, noise: float, rng: np.random.Generator) -> None:
        decoded = np.ascontiguousarray(original.raw.to_f32(), dtype=np.float32)
        super().__init__(RawTensor.from_array(decoded), original.pool)
        self.weight_type = weight_type
        self.noise = noise
        self.rng = rng

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)  # (T, in)
        if self.noise:
            x = x * (1 + self.noise * self.rng.standard_normal(x.shape)).astype(np.float32)
        return super().__call__(round_activations(x, self.weight_type))


def stored_types(ckpt: Checkpoint) -> dict[str, str]:
    """Official tensor name -> ggml type name as stored in the GGUF file (types we decode at load included)."""
    import gguf

    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(ckpt.path).tensors}
    return {official: stored[name] for name, official, _ in to_gguf(ckpt.tensors, ckpt.spec, ckpt.path)
            if name in stored}


@contextlib.contextmanager
def _rounded_linears(types: dict[str, str], noise: float) -> Iterator[None]:
    """While a Model is built, TensorSet hands out RoundedInputLinear layers for the stored types."""
    original = weights.TensorSet.linear
    rng = np.random.default_rng(0)

    def linear(self: weights.TensorSet, name: str, n_out: int, n_in: int) -> weights.Linear:
        return RoundedInputLinear(original(self, name, n_out, n_in), types.get(name, "F32"), noise, rng)

    weights.TensorSet.linear = linear  # type: ignore[method-assign]
    try:
        yield
    finally:
        weights.TensorSet.linear = original  # type: ignore[method-assign]


def our_logits(path: str, tokens: np.ndarray, *, fold: bool = False, emulate: bool = False,
               noise: float = 0.0) -> np.ndarray:
    """rwkv-edge's logits (T, V) for every position of `tokens` (T,).

    fold=False drops the official package's rounding of the ln0-folded embedding to the source dtype
    (`rwkv_edge.emb_fold_dtype`, v4-v6 files converted from fp16/bf16 checkpoints): llama.cpp applies ln0
    in float32. emulate=True rounds every matrix product's input as ggml does; `noise` jitters it first.
    """
    ckpt = open_checkpoint(path)
    if not fold:
        ckpt = dataclasses.replace(ckpt, emb_fold_dtype=None)
    # emulating, the numpy path: the C forward pass reads the matrices itself, past the Linear layers
    with _rounded_linears(stored_types(ckpt), noise) if emulate else contextlib.nullcontext():
        model = Model(ckpt, native=False if emulate else None)
    return model.forward(tokens, all_logits=True)[0]
