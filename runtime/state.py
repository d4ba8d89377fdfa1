"""The recurrent state: every layer's state in one contiguous float32 buffer, with named views.

Per layer the buffer holds, in order:
  att_x_prev (C)  the TimeMix's previous post-LN input
  ffn_x_prev (C)  the ChannelMix's previous post-LN input
  v4:     aa (C), bb (C), pp (C)   numerator, denominator and running max of the WKV average
  v5..v7: wkv (H, N, N)            one matrix per head, indexed [value][key] for every version
Storing v5/v6 matrices as [value][key] (the reference keeps them [key][value]) makes both the output and
the update contiguous over the key index, the layout the C kernels want (docs/rwkv-math.md §8).

`fingerprint` names the weights the state was made with (Model.fingerprint), so that a saved state can
refuse to load into another model: `state.save(path)`, `State.load(path, model)` (runtime/state_file.py).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

import numpy as np

from ..quant.spec import ModelSpec

if TYPE_CHECKING:
    from .model import Model

# v4's running max starts very negative but finite, so that p - q never becomes -inf - (-inf).
V4_PP_INIT = -1e30


class State:
    """A model's recurrent state. Fixed size; copy() to branch a conversation."""

    def __init__(self, spec: ModelSpec, buffer: np.ndarray | None = None, *, fingerprint: str | None = None) -> None:
        self.spec = spec
        self.fingerprint = fingerprint  # the weights' Model.fingerprint; None for a state made from a bare spec
        per_layer = spec.state_floats_per_layer
        if buffer is None:
            buffer = np.zeros((spec.n_layer, per_layer), dtype=np.float32)
            if spec.version == "4":
                buffer[:, 4 * spec.n_embd :] = V4_PP_INIT
        elif buffer.dtype != np.float32 or buffer.size != spec.n_layer * per_layer:
            raise ValueError(
                f"state buffer of {buffer.size} {buffer.dtype} values does not fit this model "
                f"({spec.n_layer} x {per_layer} float32)"
            )
        self.buffer = buffer.reshape(spec.n_layer, per_layer)  # (L, floats per layer) float32
        C = spec.n_embd
        self.att_x_prev = self.buffer[:, 0:C]  # (L, C)
        self.ffn_x_prev = self.buffer[:, C : 2 * C]  # (L, C)
        if spec.version == "4":
            self.aa = self.buffer[:, 2 * C : 3 * C]  # (L, C)
            self.bb = self.buffer[:, 3 * C : 4 * C]  # (L, C)
            self.pp = self.buffer[:, 4 * C : 5 * C]  # (L, C)
        else:
            H, N = spec.n_head, spec.head_size
            self.wkv = self.buffer[:, 2 * C :].reshape(spec.n_layer, H, N, N)  # (L, H, N[value], N[key])

    def copy(self) -> "State":
        return State(self.spec, self.buffer.copy(), fingerprint=self.fingerprint)

    def copy_from(self, other: "State") -> None:
        """Overwrite this state's contents with another state of the same model."""
        if other.spec != self.spec:
            raise ValueError("states belong to different models")
        np.copyto(self.buffer, other.buffer)
        if other.fingerprint is not None:
            self.fingerprint = other.fingerprint

    def save(self, path: str | os.PathLike[str], model: "Model | None" = None) -> None:
        """Write the state to a file (atomically) that `State.load` accepts only for the same model.

        The model is identified by this state's fingerprint, or by `model` when given.
        """
        from .state_file import save_state

        if model is not None and model.spec != self.spec:
            raise ValueError("the state belongs to a different model")
        fingerprint = model.fingerprint if model is not None else self.fingerprint
        if fingerprint is None:
            raise ValueError("this state does not know its model; make it with model.new_state() or "
                             "model.forward(), or pass the model: state.save(path, model)")
        save_state(self, path, fingerprint)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: "Model", *, check_weights: bool = True) -> "State":
        """Read a state saved by `save`; ModelFileError if the file is damaged or for another model.

        check_weights=False also accepts a state saved with other weights of the same shapes.
        """
        from .state_file import load_state

        return load_state(path, model, check_weights=check_weights)

    @classmethod
    def from_tuning(cls, path: str | os.PathLike[str], model: "Model") -> "State":
        """The initial state of a state-tuning file (`blocks.N.att.time_state` in a .pth or .safetensors)."""
        from .state_tuning import load_state_tuning

        return load_state_tuning(path, model)

    def digest(self) -> str:
        """A hash of the contents (hex), e.g. to key caches by initial state."""
        return hashlib.blake2b(np.ascontiguousarray(self.buffer).data, digest_size=16).hexdigest()

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and other.spec == self.spec and np.array_equal(other.buffer, self.buffer)

    def __repr__(self) -> str:
        return f"State(RWKV-{self.spec.version}, {self.spec.n_layer} layers, {self.nbytes} bytes)"
