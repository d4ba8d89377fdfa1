"""The model: load a checkpoint, hold its prepared weights, and run forward over tokens with a State.

`forward` never changes a state the caller holds unless asked to through `out=`, so a conversation can be
branched by keeping the old state object.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..quant.checkpoint import Checkpoint, open_checkpoint
from ..quant.spec import ModelSpec
from .. import kernels
from . import rwkv4, rwkv5, rwkv6, rwkv7
from .norms import layer_norm
from .state import State
from .tokenizer import Tokenizer, load_tokenizer, tokenizer_from_gguf, tokenizer_for_vocab
from .weights import Embedding, Linear, TensorSet

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
        self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None, *, threads: int | None = None
    ) -> None:
        spec = checkpoint.spec
        self.pool = kernels.ThreadPool(threads)  # joined when the model is garbage-collected
        ts = TensorSet(checkpoint.tensors, checkpoint.path, self.pool)
        C = spec.n_embd
        self.path = checkpoint.path
        self.kind = checkpoint.kind
        self.spec: ModelSpec = spec
        self.checkpoint = checkpoint
        if tokenizer is None and checkpoint.kind == "gguf":
            tokenizer = tokenizer_from_gguf(checkpoint.metadata, spec.n_vocab)
        elif tokenizer is None:
            tokenizer = tokenizer_for_vocab(spec.n_vocab)
        elif tokenizer.vocab_size > spec.n_vocab:
            raise ValueError(f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} ids, but the model "
                             f"{checkpoint.path} only {spec.n_vocab}")
        self.tokenizer = tokenizer

        def ln(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return ts.array(prefix + ".weight", (C,)), ts.array(prefix + ".bias", (C,))

        self.emb: Embedding = ts.embedding(spec.n_vocab, C, spec.layer_norm_eps, checkpoint.emb_fold_dtype)
        self.ln_out = ln("ln_out")
        self.head: Linear = ts.linear("head.weight", spec.n_vocab, C)
        load_layer = _LAYER_LOADERS[spec.version]
        self.blocks = [
            Block(ln(f"blocks.{i}.ln1"), ln(f"blocks.{i}.ln2"), load_layer(ts, spec, i)) for i in range(spec.n_layer)
        ]

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        group_norm_eps: float | None = None,
        tokenizer: str | None = None,
        threads: int | None = None,
    ) -> "Model":
        checkpoint = open_checkpoint(path, group_norm_eps=group_norm_eps)
        return cls(checkpoint, load_tokenizer(tokenizer) if tokenizer else None, threads=threads)

    def new_state(self) -> State:
        return State(self.spec)

    def forward(
        self,
        tokens: Sequence[int] | np.ndarray | int,
        state: State | None = None,
        all_logits: bool = False,
        *,
        out: State | None = None,
    ) -> tuple[np.ndarray, State]:
        """Run tokens through the model from `state` (None: a fresh state).

        Returns (logits, new state): logits float32 (n_vocab,) for the last token, or (T, n_vocab) with
        all_logits. The new state is `out` when given (it may be `state` itself, to step in place);
        otherwise a new State, and `state` is left unchanged.
        """
        ids = self._check_tokens(tokens)
        if state is not None and state.spec != self.spec:
            raise ValueError("the state belongs to a different model")
        if out is None:
            out = state.copy() if state is not None else self.new_state()
        elif state is not None and state is not out:
            out.copy_from(state)
        elif state is None:
            out.copy_from(self.new_state())
        chunks = [ids[i : i + CHUNK_LEN] for i in range(0, len(ids), CHUNK_LEN)]
        if all_logits:
            return np.concatenate([self._forward_chunk(chunk, out, "all") for chunk in chunks]), out
        for chunk in chunks[:-1]:
            self._forward_chunk(chunk, out, "none")
        return self._forward_chunk(chunks[-1], out, "last")[0], out

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

    def _forward_chunk(self, ids: np.ndarray, state: State, logits: str) -> np.ndarray:
        """Advance `state` in place over ids (T,); logits of 'all' rows (T, V), the 'last' (1, V) or 'none'."""
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
        if logits == "none":
            return x[:0]
        rows = x if logits == "all" else x[-1:]
        return self.head(layer_norm(rows, *self.ln_out, eps))


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
