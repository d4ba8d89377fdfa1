"""The llama.cpp calls the interoperability check needs, through llama-cpp-python's low-level API.

The caller passes the imported `llama_cpp` module in, so nothing in the package imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from typing import Any

import numpy as np


class LlamaCpp:
    """Logits, tokenization, quantization and ggml's dequantizers; every model and context is freed."""

    def __init__(self, llama: Any, n_threads: int) -> None:
        self.L = llama
        self.n_threads = n_threads
        # Kept as an attribute: llama.cpp calls back into it for every log line.
        self._quiet = llama.llama_log_callback(lambda level, text, user_data: None)
        llama.llama_log_set(self._quiet, None)
        llama.llama_backend_init()
        self._ggml = _ggml_base(llama)

    @contextlib.contextmanager
    def _model(self, path: str, vocab_only: bool = False) -> Iterator[Any]:
        params = self.L.llama_model_default_params()
        params.vocab_only = vocab_only
        # ggml's AMX buffer type (picked for Q8_0/Q4_0 on CPUs that report AMX) runs tile instructions that
        # a VM may not enable (SIGILL on this machine); the plain CPU buffers compute the same products.
        params.use_extra_bufts = False
        model = self.L.llama_model_load_from_file(path.encode(), params)
        if not model:
            raise RuntimeError(f"{path}: llama.cpp could not load the file")
        try:
            yield model
        finally:
            self.L.llama_model_free(model)

    @contextlib.contextmanager
    def _context(self, model: Any, n_batch: int) -> Iterator[Any]:
        params = self.L.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = max(n_batch, 1)
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = self.n_threads
        ctx = self.L.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        try:
            yield ctx
        finally:
            self.L.llama_free(ctx)

    def _n_vocab(self, model: Any) -> int:
        return int(self.L.llama_vocab_n_tokens(self.L.llama_model_get_vocab(model)))

    def _decode(self, ctx: Any, tokens: np.ndarray, start: int, n_vocab: int) -> np.ndarray:
        """Feed tokens (T,) at positions start.. with logits requested for every one -> (T, V)."""
        L, n = self.L, len(tokens)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i] = int(t)
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = n
            rc = L.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            out = np.empty((n, n_vocab), np.float32)
            for i in range(n):
                out[i] = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
            return out
        finally:
            L.llama_batch_free(batch)

    def logits(self, path: str, tokens: np.ndarray) -> np.ndarray:
        """All positions' logits (T, V) from one batch."""
        with self._model(path) as model, self._context(model, len(tokens)) as ctx:
            return self._decode(ctx, tokens, 0, self._n_vocab(model))

    def step_logits(self, path: str, tokens: np.ndarray) -> np.ndarray:
        """All positions' logits (T, V), one llama_decode call per token (the recurrent state carries)."""
        with self._model(path) as model, self._context(model, len(tokens)) as ctx:
            n_vocab = self._n_vocab(model)
            return np.concatenate([self._decode(ctx, tokens[i : i + 1], i, n_vocab) for i in range(len(tokens))])

    def tokenize(self, path: str, text: bytes) -> list[int]:
        """The file's vocabulary as llama.cpp tokenizes with it (no BOS, special tokens not parsed)."""
        L = self.L
        with self._model(path, vocab_only=True) as model:
            buf = (L.llama_token * (len(text) + 16))()
            n = L.llama_tokenize(L.llama_model_get_vocab(model), text, len(text), buf, len(buf), False, False)
            if n < 0:
                raise RuntimeError(f"llama_tokenize needs room for {-n} tokens")
            return list(buf[:n])

    def quantize(self, src: str, dst: str, ftype: int) -> None:
        """llama.cpp's own quantizer (llama-quantize) with its default per-tensor choices for `ftype`."""
        params = self.L.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = self.n_threads
        if self.L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama_model_quantize failed on {src}")

    def dequantize(self, type_id: int, data: np.ndarray, n: int) -> np.ndarray:
        """ggml's own to_float for n values of ggml type `type_id` stored in the bytes `data` -> (n,)."""
        traits = self._ggml.ggml_get_type_traits(type_id).contents
        if not traits.to_float:
            raise RuntimeError(f"ggml has no decoder for type {type_id}")
        src = np.ascontiguousarray(data)
        out = np.empty(n, np.float32)
        traits.to_float(src.ctypes.data, out.ctypes.data, n)
        return out


class _TypeTraits(ctypes.Structure):
    """ggml.h's struct ggml_type_traits."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)),
        ("from_float_ref", ctypes.c_void_p),
    ]


def _ggml_base(llama: Any) -> Any:
    """libggml-base, which llama-cpp-python installs beside libllama, for ggml's dequantizers."""
    lib_dir = os.path.join(os.path.dirname(llama.__file__), "lib")
    names = sorted(n for n in os.listdir(lib_dir) if n.startswith(("libggml-base.", "ggml-base.")))
    if not names:
        raise RuntimeError(f"no libggml-base library in {lib_dir}")
    lib = ctypes.CDLL(os.path.join(lib_dir, names[0]))
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    return lib
