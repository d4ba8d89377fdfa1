"""What a calibrated quantizer needs from running the model: the input moments of every Linear on a
calibration text, the KL one quantized matrix costs, and calibration tokens sampled from the model itself.

The model runs layer-major: the whole calibration sequence goes through one layer half (TimeMix or
ChannelMix) before the next, so a quantizer can round a half's matrices after seeing the inputs that the
already quantized halves below give them (sequential calibration), and no layer runs more than a few
times. A Stream is one model's residual stream over the sequence; half_moments reads a half's inputs
without advancing, advance moves a stream through it. Both streams of a comparison start from one window
and a fresh state, as Model.forward does; the arithmetic is Model.forward's (tests/test_calibration.py
checks that a Stream run through every half ends at the same logits, bit for bit).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..quant.ggml_types import RawTensor
from . import rwkv4, rwkv5, rwkv6, rwkv7
from .evaluate import kl_divergence
from .model import CHUNK_LEN, Model
from .norms import layer_norm
from .sampling import sample_logits
from .state import State
from .weights import Linear

ATT, FFN = "att", "ffn"
_STAT_ELEMENTS = 1 << 22  # logits handled at once by the KL: 32 MiB of float64
Sink = Callable[[str, np.ndarray], None]  # (official name, (t, cols) float32 input of one call)


@dataclass(frozen=True)
class InputMoments:
    """Statistics of one Linear's inputs x (cols,) over n_tokens positions."""

    n_tokens: int
    second: np.ndarray  # (cols, cols) float64 E[x x^T]: GPTQ's H
    cross: np.ndarray | None = None  # (cols, cols) float64 E[x_ref x^T], x_ref the reference model's input
    drift: np.ndarray | None = None  # (C, cols) float64 E[(h_ref - h) x^T], h the half's residual-stream input

    @property
    def imatrix(self) -> np.ndarray:
        """(cols,) mean x^2 per input column (llama.cpp's importance matrix)."""
        return np.diag(self.second).copy()


def halves(n_layer: int) -> list[tuple[int, str]]:
    """(layer, half) in forward order."""
    return [(i, h) for i in range(n_layer) for h in (ATT, FFN)]


def half_of(name: str) -> tuple[int, str]:
    """The (layer, half) a Linear's official name 'blocks.{i}.{att|ffn}.*' belongs to."""
    parts = name.split(".")
    if len(parts) < 4 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in (ATT, FFN):
        raise ValueError(f"{name} is not a Linear inside a layer")
    return int(parts[1]), parts[2]


class Stream:
    """One model's residual stream over a token sequence, at the input of the next layer half to run."""

    def __init__(self, model: Model, tokens: Sequence[int] | np.ndarray) -> None:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)  # (T,)
        if len(ids) == 0:
            raise ValueError("no calibration tokens")
        model._check_tokens(ids)
        self.model = model
        self.x = np.concatenate([model.emb(ids[a : a + CHUNK_LEN]) for a in range(0, len(ids), CHUNK_LEN)])  # (T, C)
        self.v_first: np.ndarray | None = None  # (T, C) v7's layer-0 value, once layer 0 has run
        self.state = model.new_state()
        self.next = 0  # index into halves(): the half `advance` runs next

    def logits(self) -> np.ndarray:
        """(T, V) logits at every position; only once every half has run."""
        if self.next != 2 * self.model.spec.n_layer:
            raise ValueError("the stream has not run through every layer yet")
        m = self.model
        return np.concatenate([
            m.head(layer_norm(self.x[a : a + CHUNK_LEN], *m.ln_out, m.spec.layer_norm_eps))
            for a in range(0, len(self.x), CHUNK_LEN)
        ])

    @classmethod
    def resume(cls, model: Model, x: np.ndarray, v_first: np.ndarray | None, start: int) -> Stream:
        """A stream at the input of half number `start` with activations x (T, C), from a fresh state
        (right for a whole window: no layer at or above `start` has seen a token yet)."""
        s = cls.__new__(cls)
        s.model, s.x, s.v_first, s.state, s.next = model, x, v_first, model.new_state(), start
        return s

    def with_model(self, model: Model) -> Stream:
        """A copy of this stream (same position, state and activations) that runs on with `model`."""
        twin = copy.copy(self)
        twin.model, twin.state = model, self.state.copy()
        return twin


def advance(stream: Stream, sink: Sink | None = None) -> None:
    """Run the stream's next half over the whole sequence; `sink` sees every Linear input on the way."""
    layer, half = _next_half(stream)
    model = _recording(stream.model, layer, sink) if sink is not None else stream.model
    out = np.empty_like(stream.x)
    firsts = []
    for a in range(0, len(stream.x), CHUNK_LEN):
        v_first = stream.v_first[a : a + CHUNK_LEN] if stream.v_first is not None else None
        x = stream.x[a : a + CHUNK_LEN]  # (chunk, C)
        out[a : a + CHUNK_LEN], v_first = _run_half(model, layer, half, x, stream.state, v_first)
        firsts.append(v_first)
    stream.x = out
    if stream.v_first is None and firsts[0] is not None:
        stream.v_first = np.concatenate(firsts)
    stream.next += 1


def half_moments(
    ref: Stream,
    cur: Stream | None = None,
    names: Iterable[str] | None = None,
    *,
    advance_ref: bool = False,
    drift: Iterable[str] = (),
) -> dict[str, InputMoments]:
    """Input moments of the Linears `names` (all) in the next half; neither stream advances, unless
    `advance_ref` (ref alone) asks ref to move through the half on the same pass.

    With `cur` (the same point of a model whose lower halves are quantized), `second` is E[x x^T] of cur's
    inputs and `cross` E[x_ref x^T] pairs them with ref's, token by token; without, `second` is ref's.
    The Linears named in `drift` (with `cur` only) also get `drift`: how far cur's residual stream at the
    half's input is from ref's, against their inputs (for a Linear whose output joins the stream).
    """
    wanted = set(names) if names is not None else None
    drifting = set(drift)
    if drifting and cur is None:
        raise ValueError("drift moments compare two streams: give cur")
    gap = np.zeros(0)  # (chunk, C) ref's residual stream minus cur's, in the current chunk
    drifts: dict[str, np.ndarray] = {}
    sums: dict[str, list[np.ndarray | None]] = {}
    ref_x: dict[str, np.ndarray] = {}  # name -> (chunk, cols) ref's input in the current chunk

    def keep(name: str, x: np.ndarray) -> None:
        if wanted is None or name in wanted:
            ref_x[name] = x

    def accumulate(name: str, x: np.ndarray) -> None:
        if wanted is not None and name not in wanted:
            return
        # float32 products per chunk (at most CHUNK_LEN terms), float64 totals
        acc = sums.setdefault(name, [np.zeros((x.shape[1],) * 2), None])
        acc[0] += (x.T @ x).astype(np.float64)
        if cur is not None:
            acc[1] = (0.0 if acc[1] is None else acc[1]) + (ref_x[name].T @ x).astype(np.float64)
        if name in drifting:
            drifts[name] = drifts.get(name, 0.0) + (gap.T @ x).astype(np.float64)

    if cur is not None and (cur.next != ref.next or len(cur.x) != len(ref.x)):
        raise ValueError("the two streams are not at the same point")
    n = len(ref.x)
    if advance_ref:
        if cur is not None:
            raise ValueError("advance_ref is for a reference stream alone")
        advance(ref, accumulate)
        return {name: InputMoments(n, s / n) for name, (s, _) in sums.items()}
    runs = [(ref.with_model(ref.model), keep), (cur.with_model(cur.model), accumulate)] if cur is not None else [
        (ref.with_model(ref.model), accumulate)
    ]
    layer, half = _next_half(ref)
    models = [_recording(s.model, layer, sink) for s, sink in runs]
    for a in range(0, len(ref.x), CHUNK_LEN):
        if drifting:
            gap = ref.x[a : a + CHUNK_LEN] - cur.x[a : a + CHUNK_LEN]
        for (s, _), model in zip(runs, models):  # per chunk, ref first: accumulate pairs cur with it
            v_first = s.v_first[a : a + CHUNK_LEN] if s.v_first is not None else None
            _run_half(model, layer, half, s.x[a : a + CHUNK_LEN], s.state, v_first)
    return {name: InputMoments(n, s / n, c / n if c is not None else None,
                               drifts[name] / n if name in drifts else None) for name, (s, c) in sums.items()}


def with_tensors(model: Model, tensors: Mapping[str, RawTensor]) -> Model:
    """A twin of `model` (sharing everything else) whose Linears named in `tensors` use those tensors."""
    if not tensors:
        return model
    twin = copy.copy(model)
    twin.blocks = list(model.blocks)
    twin.native = None  # a C forward pass would still hold the old weights; the twin runs the numpy layers
    # the twin's checkpoint names the new tensors, so their Linears can be found again by name
    twin.checkpoint = dataclasses.replace(model.checkpoint, tensors={**model.checkpoint.tensors, **tensors})
    paths = _linear_paths(model)
    for name, raw in tensors.items():
        if name not in paths:
            raise ValueError(f"{name} is not a Linear inside a layer of the model")
        layer, path = paths[name]
        old = _get(twin.blocks[layer].mix, path)
        if raw.shape != (old.n_out, old.n_in):
            raise ValueError(f"{name}: shape {raw.shape}, the model's is {(old.n_out, old.n_in)}")
        twin.blocks[layer] = dataclasses.replace(
            twin.blocks[layer], mix=_replaced(twin.blocks[layer].mix, path, Linear(raw, model.pool))
        )
    return twin


def single_tensor_kl(
    model: Model,
    tokens: Sequence[int] | np.ndarray,
    candidates: Mapping[str, RawTensor],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Mean KL(model || model with only that tensor replaced) over `tokens` (one window), per candidate,
    at the positions runtime.evaluate scores: every one but the last (which predicts no token of the text).

    Each candidate reruns only the halves from its own upward, from the activations saved on the way.
    """
    base = Stream(model, tokens)
    saved = []  # (x, v_first) at the input of each half
    for _ in halves(model.spec.n_layer):
        saved.append((base.x, base.v_first))
        advance(base)
    base_logits = base.logits()[:-1]  # (T - 1, V)
    order = {lh: k for k, lh in enumerate(halves(model.spec.n_layer))}
    out = {}
    for done, (name, raw) in enumerate(candidates.items()):
        start = order[half_of(name)]
        s = Stream.resume(with_tensors(model, {name: raw}), *saved[start], start)
        for _ in range(start, 2 * model.spec.n_layer):
            advance(s)
        out[name] = _mean_kl(base_logits, s.logits()[:-1])
        if progress is not None:
            progress(done + 1, len(candidates))
    return out


def sample_tokens(model: Model, n_tokens: int, *, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """(n_tokens,) int64 token ids the model writes itself, from its start-of-text, with a fixed seed.

    Pure sampling (no top-p cut) keeps the model's own distribution, so the text covers what the model
    expects to read. Byte-level models start from a newline (their id 0 is a NUL byte, not a separator).
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens}")
    rng = np.random.default_rng(seed)
    tok = model.tokenizer
    first = tok.encode("\n")[0] if tok is not None and tok.name == "bytes" else 0
    ids = np.empty(n_tokens, dtype=np.int64)
    state = model.new_state()
    logits, _ = model.forward([first], state, out=state)
    for t in range(n_tokens):
        ids[t] = sample_logits(logits, rng, temperature=temperature)
        logits, _ = model.forward([int(ids[t])], state, out=state)
    return ids


def _next_half(stream: Stream) -> tuple[int, str]:
    if stream.next >= 2 * stream.model.spec.n_layer:
        raise ValueError("the stream has already run through every layer")
    return halves(stream.model.spec.n_layer)[stream.next]


def _mean_kl(base_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of KL(base || model), (T, V) each, a few rows at a time (float64 is 2x the memory)."""
    rows = max(1, _STAT_ELEMENTS // base_logits.shape[1])
    total = sum(float(kl_divergence(base_logits[a : a + rows], logits[a : a + rows]).sum())
                for a in range(0, len(logits), rows))
    return total / len(logits)


# -------------------------------------------------------------------------------------------------
# One layer half, as Model._forward_chunk runs it


def _run_half(
    model: Model, i: int, half: str, x: np.ndarray, state: State, v_first: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """x (t, C) through half `half` of layer i, advancing `state` in place; returns (x, v_first)."""
    spec, block = model.spec, model.blocks[i]
    eps, lw = spec.layer_norm_eps, block.mix
    if half == ATT:
        a = layer_norm(x, *block.ln1, eps)
        if spec.version == "4":
            return x + rwkv4.time_mix(lw, a, state.att_x_prev[i], state.aa[i], state.bb[i], state.pp[i]), v_first
        if spec.version == "6":
            return x + rwkv6.time_mix(lw, spec, a, state.att_x_prev[i], state.wkv[i]), v_first
        if spec.version == "7":
            att, v_first = rwkv7.time_mix(lw, spec, a, state.att_x_prev[i], state.wkv[i], v_first)
            return x + att, v_first
        return x + rwkv5.time_mix(lw, spec, a, state.att_x_prev[i], state.wkv[i]), v_first
    b = layer_norm(x, *block.ln2, eps)
    if spec.version == "7":
        x = x + rwkv7.channel_mix(lw, b, state.ffn_x_prev[i])
    else:
        x = x + rwkv4.channel_mix(lw.ffn, b, state.ffn_x_prev[i])
    if spec.rescale_every and (i + 1) % spec.rescale_every == 0:
        x = x * np.float32(0.5)
    return x, v_first


# -------------------------------------------------------------------------------------------------
# Finding, wrapping and replacing the Linears of a layer by official name


class _RecordingLinear:
    """A Linear that shows its input (t, in) to a sink under its official name before computing."""

    def __init__(self, inner: Linear, name: str, sink: Sink) -> None:
        self.inner, self.name, self.sink = inner, name, sink

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sink(self.name, x)
        return self.inner(x)


def _linear_paths(model: Model) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Official name -> (layer, field path inside the layer's mix) of every Linear in a layer."""
    names = {id(raw): name for name, raw in model.checkpoint.tensors.items()}
    out: dict[str, tuple[int, tuple[str, ...]]] = {}

    def walk(obj: object, layer: int, path: tuple[str, ...]) -> None:
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if isinstance(value, Linear) and id(value.raw) in names:
                out[names[id(value.raw)]] = (layer, (*path, f.name))
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, layer, (*path, f.name))

    for i, block in enumerate(model.blocks):
        walk(block.mix, i, ())
    return out


def _get(obj: object, path: tuple[str, ...]) -> Linear:
    for name in path:
        obj = getattr(obj, name)
    return obj  # type: ignore[return-value]


def _replaced(obj: object, path: tuple[str, ...], value: object) -> object:
    if not path:
        return value
    inner = _replaced(getattr(obj, path[0]), path[1:], value)
    return dataclasses.replace(obj, **{path[0]: inner})  # type: ignore[type-var]


def _recording(model: Model, layer: int, sink: Sink) -> Model:
    twin = copy.copy(model)
    twin.blocks = list(model.blocks)
    mix = model.blocks[layer].mix
    for name, (i, path) in _linear_paths(model).items():
        if i == layer:
            mix = _replaced(mix, path, _RecordingLinear(_get(mix, path), name, sink))
    twin.blocks[layer] = dataclasses.replace(model.blocks[layer], mix=mix)
    return twin
