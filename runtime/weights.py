"""Fetch a checkpoint's tensors by official name with shape checks, as float32 arrays or Linear layers.

The only place the runtime touches stored tensors. Every shape is checked against the model spec, so a file
whose tensors contradict each other fails here with one clear line instead of deep inside the forward pass.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..kernels.model_native import Matrix
from ..quant.blocks import dequantize
from ..quant.errors import ModelFileError
from ..quant.ggml_types import GGMLType, RawTensor
from .norms import layer_norm


class Linear:
    """y = x W^T for a weight W stored [out, in] (PyTorch nn.Linear and ggml order) in its file's type.

    The kernels compute straight from the stored bytes (a view of the memory-mapped file); nothing is
    dequantized or copied at load, except rows an unpadded rwkv.cpp file leaves misaligned for C.
    """

    def __init__(self, raw: RawTensor, pool: kernels.ThreadPool | None = None) -> None:
        self.raw = raw
        self.qtype = raw.qtype
        self.n_out, self.n_in = raw.shape
        self.pool = pool
        data = raw.data
        if data.ctypes.data % (4 if raw.qtype == GGMLType.F32 else 2) or not data.flags.c_contiguous:
            data = np.array(data, order="C")  # a fresh array is aligned
        self.data = data  # (out, in) typed, or (out, row bytes) uint8 blocks

    @property
    def matrix(self) -> Matrix:
        """The stored matrix as the C forward pass takes it."""
        return Matrix(int(self.qtype), self.data, self.n_out, self.n_in)

    @property
    def weight(self) -> np.ndarray:
        """W as float32 (out, in): decoded on every access, for tools and tests."""
        return np.asarray(self.raw.to_f32(), dtype=np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (T, in) float32 -> (T, out) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 1:
            return kernels.matvec(self.qtype, self.data, self.n_out, self.n_in, x[0], pool=self.pool)[None, :]
        return kernels.matmul(self.qtype, self.data, self.n_out, self.n_in, x, pool=self.pool)


def lora_matrix(a: np.ndarray) -> Matrix:
    """A LoRA matrix (in, out) float32 as the C forward pass takes it: its [out, in] transpose."""
    t = a.T
    return Matrix(int(GGMLType.F32), t, t.shape[0], t.shape[1])


def round_to(x: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """Round float32 values to F16 or BF16 precision (nearest, ties to even), returned as float32."""
    if qtype == GGMLType.F16:
        return x.astype(np.float16).astype(np.float32)
    if qtype == GGMLType.BF16:
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
        return bits.view(np.float32)
    return x


class Embedding:
    """Row lookup into a stored [n_vocab, n_embd] table followed by ln0, decoding only the rows asked for.

    The official package folds ln0 into the table once, in the checkpoint's own dtype, for v4-v6 (§1 of
    docs/rwkv-math.md); `fold_dtype` reproduces that rounding row by row, so no folded copy is kept.
    """

    def __init__(
        self, raw: RawTensor, ln0: tuple[np.ndarray, np.ndarray], eps: float, fold_dtype: GGMLType | None = None
    ) -> None:
        self.raw = raw
        self.n_vocab, self.n_embd = raw.shape
        self.ln0 = ln0  # (C,), (C,) weight and bias
        self.eps = eps
        self.fold_dtype = fold_dtype

    @property
    def matrix(self) -> Matrix:
        """The stored table as the C forward pass takes it (a view; never a copy of the table)."""
        data = self.raw.data
        if data.flags.c_contiguous:
            data = data.reshape(self.n_vocab, -1)
        return Matrix(int(self.raw.qtype), data, self.n_vocab, self.n_embd)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: (T,) int -> (T, C) float32, ln0 applied."""
        rows = self.raw.data.reshape(self.n_vocab, -1)[tokens]
        x = np.asarray(dequantize(self.raw.qtype, rows, (len(tokens), self.n_embd)), dtype=np.float32)
        x = layer_norm(x, *self.ln0, self.eps)
        return x if self.fold_dtype is None else round_to(x, self.fold_dtype)


class TensorSet:
    """Official-name tensors of one checkpoint, handed out with their shapes checked."""

    def __init__(self, tensors: dict[str, RawTensor], path: str, pool: kernels.ThreadPool | None = None) -> None:
        self.tensors = tensors
        self.path = path
        self.pool = pool

    def has(self, name: str) -> bool:
        return name in self.tensors

    def raw(self, name: str) -> RawTensor:
        if name not in self.tensors:
            raise ModelFileError(self.path, f"missing tensor '{name}'")
        return self.tensors[name]

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of `shape`; size-1 axes may differ (official vectors are [1, 1, C])."""
        raw = self.raw(name)
        if tuple(d for d in raw.shape if d != 1) != tuple(d for d in shape if d != 1):
            raise ModelFileError(self.path, f"tensor '{name}' has shape {list(raw.shape)}, expected {list(shape)}")
        a = raw.to_f32().reshape(shape)  # a view of the mapped file when stored as F32, even if transposed
        return a if a.flags.aligned else a.copy()  # unpadded rwkv.cpp files: C needs aligned floats

    def lora(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A LoRA matrix in its official (..., in, out) shape, stored so that its [out, in] transpose
        (the last two axes swapped: the kernels' layout) is C-contiguous. GGUF files store LoRAs that
        way, so this is a view of their map; other files' LoRAs get a transposed copy."""
        t = np.swapaxes(self.array(name, shape), -1, -2)  # (..., out, in)
        if not t.flags.c_contiguous:
            t = np.ascontiguousarray(t)
        return np.swapaxes(t, -1, -2)

    def lora_linear(self, name: str, n_in: int, n_out: int) -> Linear:
        """A 2-D LoRA matrix, official shape (in, out), as a Linear over its [out, in] transpose in the
        stored F32 or F16 (other types are decoded to F32). GGUF files store LoRAs [out, in], so this is
        a view of their map; other files' LoRAs get a transposed copy."""
        raw = self.raw(name)
        if raw.shape != (n_in, n_out):
            raise ModelFileError(self.path, f"tensor '{name}' has shape {list(raw.shape)}, expected {[n_in, n_out]}")
        t = raw.typed_floats().T  # (out, in)
        if not t.flags.c_contiguous:
            t = np.ascontiguousarray(t)
        return Linear(RawTensor.from_array(t), self.pool)

    def linear(self, name: str, n_out: int, n_in: int) -> Linear:
        raw = self.raw(name)
        if raw.shape != (n_out, n_in):
            raise ModelFileError(self.path, f"tensor '{name}' has shape {list(raw.shape)}, expected {[n_out, n_in]}")
        return Linear(raw, self.pool)

    def embedding(
        self, n_vocab: int, n_embd: int, eps: float, fold_dtype: GGMLType | None = None
    ) -> Embedding:
        raw = self.raw("emb.weight")
        if raw.shape != (n_vocab, n_embd):
            raise ModelFileError(self.path, f"tensor 'emb.weight' has shape {list(raw.shape)}, expected {[n_vocab, n_embd]}")
        ln0 = self.array("blocks.0.ln0.weight", (n_embd,)), self.array("blocks.0.ln0.bias", (n_embd,))
        return Embedding(raw, ln0, eps, fold_dtype)
