"""The model: load a checkpoint, hold its prepared weights, and run forward over tokens with a State.

`forward` never changes a state the caller holds unless asked to through `out=`, so a conversation can be
branched by keeping the old state object.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..quant.checkpoint import Checkpoint, open_checkpoint
from ..quant.errors import ModelFileError
from ..quant.spec import ModelSpec
from .. import kernels
from ..kernels import dispatch
from ..kernels.model_native import NativeModel
from . import native_forward, rwkv4, rwkv5, rwkv6, rwkv7
from .norms import layer_norm
from .fingerprint import weights_fingerprint
from .state import State
from .tokenizer import Tokenizer, load_tokenizer, tokenizer_from_gguf, tokenizer_for_vocab
from .weights import Embedding, Linear, TensorSet

if TYPE_CHECKING:
    from .generation import Completion, Generation

# Long prompts run in chunks so activations stay (chunk, F) floats, however long the prompt.
CHUNK_LEN = 256

_LAYER_LOADERS = {
    "4": rwkv4.load_layer,
    "5.0": rwkv5.load_layer,
    "5.1": rwkv5.load_layer,
    "5.2": rwkv5.load_layer,
    "6": rwkv6.load_layer,
    "7": rwkv7.load_layer,
}


@dataclass(frozen=True)
class Block:
    ln1: tuple[np.ndarray, np.ndarray]  # (C,), (C,) weight and bias
    ln2: tuple[np.ndarray, np.ndarray]
    mix: object  # Layer4 | Layer5 | Layer6 | Layer7


class Model:
    """An RWKV model of any supported version, ready to run."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        tokenizer: Tokenizer | None = None,
        *,
        threads: int | None = None,
        native: bool | None = None,
    ) -> None:
        """`native`: run each chunk of tokens as one C call (default: whenever the kernel backend is
        C, i.e. not RWKV_EDGE_KERNELS=numpy; True with the numpy backend takes the best C one);
        False runs the numpy layer math op by op."""
        spec = checkpoint.spec
        self.pool = kernels.ThreadPool(threads)  # joined when the model is garbage-collected
        ts = TensorSet(checkpoint.tensors, checkpoint.path, self.pool)
        C = spec.n_embd
        self.path = checkpoint.path
        self.kind = checkpoint.kind
        self.spec: ModelSpec = spec
        self.checkpoint = checkpoint
        # A GGUF file's tokenizer is built on first use: its 65,536-entry trie would be most of the load time.
        self._gguf_tokenizer_pending = tokenizer is None and checkpoint.kind == "gguf"
        self._tokenizer_lock = threading.Lock()
        if tokenizer is None and not self._gguf_tokenizer_pending:
            tokenizer = tokenizer_for_vocab(spec.n_vocab)
        elif tokenizer is not None and tokenizer.vocab_size > spec.n_vocab:
            raise ValueError(f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} ids, but the model "
                             f"{checkpoint.path} only {spec.n_vocab}")
        self._tokenizer = tokenizer

        def ln(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return ts.array(prefix + ".weight", (C,)), ts.array(prefix + ".bias", (C,))

        self.emb: Embedding = ts.embedding(spec.n_vocab, C, spec.layer_norm_eps, checkpoint.emb_fold_dtype)
        self.ln_out = ln("ln_out")
        self.head: Linear = ts.linear("head.weight", spec.n_vocab, C)
        load_layer = _LAYER_LOADERS[spec.version]
        self.blocks = [
            Block(ln(f"blocks.{i}.ln1"), ln(f"blocks.{i}.ln2"), load_layer(ts, spec, i)) for i in range(spec.n_layer)
        ]
        if native is None:
            native = kernels.backend != "numpy"
        backend = next((b for b in (kernels.backend, *dispatch.available()) if b != "numpy"), "numpy")
        self.native: NativeModel | None = self.build_native(backend) if native else None

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer, or None for a file without one (it then runs on token ids)."""
        if self._gguf_tokenizer_pending:
            with self._tokenizer_lock:
                if self._gguf_tokenizer_pending:
                    self._tokenizer = tokenizer_from_gguf(self.checkpoint.metadata, self.spec.n_vocab)
                    self._gguf_tokenizer_pending = False
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Tokenizer | None) -> None:
        with self._tokenizer_lock:
            self._tokenizer, self._gguf_tokenizer_pending = tokenizer, False

    def build_native(self, backend: str) -> NativeModel:
        """The C forward pass of this model for kernel backend `backend` ('avxvnni', 'avx2' or 'scalar')."""
        try:
            return native_forward.build(self.spec, self.emb, self.ln_out, self.head, self.blocks, backend, self.pool)
        except ValueError as err:  # an array that does not fit its dims: the file contradicts itself
            raise ModelFileError(self.path, str(err)) from None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        group_norm_eps: float | None = None,
        tokenizer: str | None = None,
        threads: int | None = None,
        native: bool | None = None,
    ) -> "Model":
        checkpoint = open_checkpoint(path, group_norm_eps=group_norm_eps)
        return cls(checkpoint, load_tokenizer(tokenizer) if tokenizer else None, threads=threads, native=native)

    def new_state(self) -> State:
        return State(self.spec, fingerprint=self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """Hex id of these weights (runtime/fingerprint.py): saved states name it, and load only here.

        Computed once per checkpoint: a copy of the model with another checkpoint gets its own.
        """
        known = getattr(self, "_fingerprint", None)  # (checkpoint, fingerprint)
        if known is None or known[0] is not self.checkpoint:
            known = (self.checkpoint, weights_fingerprint(self.spec, self.checkpoint.tensors))
            self._fingerprint = known
        return known[1]

    def generate(self, prompt: str | Sequence[int], **options: Any) -> Generation:
        """Stream the continuation of `prompt` as text pieces: runtime/generation.py's generate, whose
        keyword options (max_tokens, temperature, top_p, top_k, min_p, penalties, logit_bias, stop, seed,
        state, cache) it takes and checks."""
        from .generation import generate

        return generate(self, prompt, **options)

    def complete(self, prompt: str | Sequence[int], **options: Any) -> Completion:
        """`generate` run to the end: a Completion (text, finish_reason, token counts, tokens, state)."""
        from .generation import complete

        return complete(self, prompt, **options)

    def load_state_tuning(self, path: str | os.PathLike[str]) -> State:
        """The initial state stored in a state-tuning file (`blocks.N.att.time_state`, .pth or .safetensors)."""
        from .state_tuning import load_state_tuning

        return load_state_tuning(path, self)

    def forward(
        self,
        tokens: Sequence[int] | np.ndarray | int,
        state: State | None = None,
        all_logits: bool = False,
        *,
        out: State | None = None,
        logits_out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, State]:
        """Run tokens through the model from `state` (None: a fresh state).

        Returns (logits, new state): logits float32 (n_vocab,) for the last token, or (T, n_vocab) with
        all_logits. The new state is `out` when given (it may be `state` itself, to step in place);
        otherwise a new State, and `state` is left unchanged. `logits_out`, a float32 array of the
        logits' shape, receives them instead of a new array (so stepping allocates nothing).
        """
        ids = self._check_tokens(tokens)
        if logits_out is not None:
            shape = (len(ids), self.spec.n_vocab) if all_logits else (self.spec.n_vocab,)
            if (not isinstance(logits_out, np.ndarray) or logits_out.dtype != np.float32 or logits_out.shape != shape
                    or not logits_out.flags.c_contiguous or not logits_out.flags.writeable):
                raise ValueError(f"logits_out must be a writable contiguous float32 array of shape {shape}")
        if state is not None and state.spec != self.spec:
            raise ValueError("the state belongs to a different model")
        if out is None:
            out = state.copy() if state is not None else self.new_state()
        elif state is not None and state is not out:
            out.copy_from(state)
        elif state is None:
            out.copy_from(self.new_state())
        if logits_out is not None and np.may_share_memory(logits_out, out.buffer):
            raise ValueError("logits_out must not overlap the state")
        starts = range(0, len(ids), CHUNK_LEN)
        if all_logits:
            if logits_out is None:
                logits_out = np.empty((len(ids), self.spec.n_vocab), np.float32)
            for i in starts:
                self._forward_chunk(ids[i : i + CHUNK_LEN], out, logits_out[i : i + CHUNK_LEN])
            return logits_out, out
        for i in starts[:-1]:
            self._forward_chunk(ids[i : i + CHUNK_LEN], out, None)
        last = np.empty(self.spec.n_vocab, np.float32) if logits_out is None else logits_out
        self._forward_chunk(ids[starts[-1] :], out, last[None, :])
        return last, out

    def _check_tokens(self, tokens: Sequence[int] | np.ndarray | int) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(tokens))
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("tokens must be a non-empty sequence of token ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.spec.n_vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary of {self.spec.n_vocab}")
        return ids.astype(np.int64)

    def _forward_chunk(self, ids: np.ndarray, state: State, logits: np.ndarray | None) -> None:
        """Advance `state` in place over ids (T,); write the logits of every token (logits (T, V)),
        the last one (logits (1, V)) or none (None)."""
        if self.native is not None:
            if self.native.looks_up_embedding:
                self.native.forward(state.buffer, tokens=ids, logits=logits)
            else:
                self.native.forward(state.buffer, x_in=self.emb(ids), logits=logits)
            return
        spec = self.spec
        eps = spec.layer_norm_eps
        x = self.emb(ids)  # (T, C)
        v_first = None
        for i, block in enumerate(self.blocks):
            a = layer_norm(x, *block.ln1, eps)
            lw = block.mix
            if spec.version == "4":
                x = x + rwkv4.time_mix(lw, a, state.att_x_prev[i], state.aa[i], state.bb[i], state.pp[i])
            elif spec.version == "6":
                x = x + rwkv6.time_mix(lw, spec, a, state.att_x_prev[i], state.wkv[i])
            elif spec.version == "7":
                att, v_first = rwkv7.time_mix(lw, spec, a, state.att_x_prev[i], state.wkv[i], v_first)
                x = x + att
            else:
                x = x + rwkv5.time_mix(lw, spec, a, state.att_x_prev[i], state.wkv[i])
            b = layer_norm(x, *block.ln2, eps)
            if spec.version == "7":
                x = x + rwkv7.channel_mix(lw, b, state.ffn_x_prev[i])
            else:
                x = x + rwkv4.channel_mix(lw.ffn, b, state.ffn_x_prev[i])
            if spec.rescale_every and (i + 1) % spec.rescale_every == 0:
                x = x * np.float32(0.5)
        if logits is not None:
            rows = x[len(x) - len(logits) :]
            logits[...] = self.head(layer_norm(rows, *self.ln_out, eps))


def load(
    path: str | os.PathLike[str],
    *,
    group_norm_eps: float | None = None,
    tokenizer: str | None = None,
    threads: int | None = None,
) -> Model:
    """Load a model file: GGUF, official `.pth`, rwkv.cpp `.bin` or Hugging Face `.safetensors`.

    `threads`: kernel threads (default: the physical cores).
    """
    return Model.load(path, group_norm_eps=group_norm_eps, tokenizer=tokenizer, threads=threads)
