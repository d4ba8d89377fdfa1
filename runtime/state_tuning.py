"""State-tuning files: a trained initial WKV state per layer (`blocks.N.att.time_state`), as a starting State.

    state = model.load_state_tuning("rwkv-x060-chn-novel.pth")   # or .safetensors (ai00's .st)
    text = model.complete("User: hi\\n\\nAssistant:", state=state).text

Each `time_state` is (H, N, N) and, for every version, indexed [value][key]: exactly our State's wkv layout.
The official rwkv package transposes it into its [key][value] v5/v6 state (`time_state.transpose(1,2)`),
and the v7 training code (RWKV-PEFT) uses it as the [value][key] v7 state as it is. The token-shift
parts of the state start at zero, as in the official package.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import numpy as np

from ..quant.checkpoint import sniff_kind
from ..quant.errors import ModelFileError
from ..quant.ggml_types import RawTensor
from .state import State

if TYPE_CHECKING:
    from .model import Model

_TIME_STATE = re.compile(r"blocks\.(\d+)\.att\.time_state")


def load_state_tuning(path: str | os.PathLike[str], model: Model) -> State:
    """A new State of `model` whose WKV matrices are the file's time_state tensors."""
    spec = model.spec
    if spec.version == "4":
        raise ModelFileError(path, "state tuning needs an RWKV-5, 6 or 7 model; this one is RWKV-4")
    layers = _time_states(path)
    if not layers:
        raise ModelFileError(path, "no 'blocks.N.att.time_state' tensors: not a state-tuning file")
    expected = set(range(spec.n_layer))
    if set(layers) != expected:
        missing = sorted(expected - set(layers))
        what = f"layer {missing[0]} is missing" if missing else f"it has layer {max(layers)}"
        raise ModelFileError(path, f"time_state is for another model: {what}, the model has {spec.n_layer} layers")
    state = model.new_state()
    shape = (spec.n_head, spec.head_size, spec.head_size)
    for i, raw in layers.items():
        if tuple(d for d in raw.shape if d != 1) != tuple(d for d in shape if d != 1):
            raise ModelFileError(path, f"blocks.{i}.att.time_state has shape {list(raw.shape)}, this model needs "
                                       f"{list(shape)} (H, N, N)")
        values = np.asarray(raw.to_f32(), dtype=np.float32).reshape(shape)  # (H, N[value], N[key])
        if not np.all(np.isfinite(values)):
            raise ModelFileError(path, f"blocks.{i}.att.time_state has non-finite values")
        state.wkv[i] = values
    return state


def _time_states(path: str | os.PathLike[str]) -> dict[int, RawTensor]:
    kind = sniff_kind(os.fspath(path))
    if kind == "pth":
        from ..quant.pth_file import read_pth

        tensors = read_pth(path)
    elif kind == "safetensors":
        from ..quant.safetensors_file import read_safetensors

        tensors = read_safetensors(path)[0]
    else:
        raise ModelFileError(path, f"a state-tuning file is a .pth or .safetensors file, not {kind}")
    return {int(m.group(1)): raw for name, raw in tensors.items() if (m := _TIME_STATE.fullmatch(name))}
