"""The C forward pass of a whole model (csrc/rke_model.h): every array is checked against the
model's dims before its pointer goes into the rke_model struct, then a chunk of tokens is one C
call that advances the state and writes the logits.

The caller (runtime) hands over plain arrays by field name; this module knows the shape each
field must have, so a malformed file can never make C read past an array.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import checks, dispatch
from .ggml_types import GGMLType
from .pool import ThreadPool

try:
    from ._ext import ffi, lib
except ImportError:  # installed with RWKV_EDGE_NO_KERNELS=1: impl_of refuses every backend
    ffi = lib = None

_IMPLS = {"avxvnni": "RKE_IMPL_AVXVNNI", "avx2": "RKE_IMPL_AVX2", "scalar": "RKE_IMPL_SCALAR"}
_LAYER_TYPES = {4: "rke_rwkv4_layer", 5: "rke_rwkv5_layer", 6: "rke_rwkv6_layer", 7: "rke_rwkv7_layer"}
# Fields that may be None (NULL): v5.0 has no gate; v7 layer 0 makes v_first and has no v LoRA.
_OPTIONAL = {5: ("m_g", "gate"), 7: ("v0", "v1", "v2")}
# A prompt's activations, (T, ...) floats per layer, are the only memory that grows with T: forward()
# runs at most as many tokens per C call as fit in this. Peak memory should stay within the file plus
# 64 MiB, and Python, numpy, shared libraries and a 1.5B model's 13 MiB state take about 55 of those; at
# 124 KiB per token that model gets 64-token calls. Splitting changes no bit (rows of the matmul are the
# matvec's, every other step goes token by token), and 16+ tokens per call keep the prompt tiles full.
SCRATCH_BUDGET_BYTES = 8 << 20
MAX_TOKENS_PER_CALL = 256


class Matrix(NamedTuple):
    """A stored weight matrix [n_rows, n_cols] of ggml type `qtype` (rows of blocks for quants)."""

    qtype: int
    data: np.ndarray
    n_rows: int
    n_cols: int


@dataclass(frozen=True)
class ModelDims:
    """What the C code sizes every array by (the version's 5.x variants all are 5)."""

    version: int
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ffn: int
    n_head: int
    head_size: int
    lora: tuple[int, ...]  # v6: (D_mix, D_decay); v7: (D_w, D_a, D_v, D_g)
    layer_norm_eps: float
    group_norm_eps: float
    rescale_every: int = 0

    @property
    def state_floats_per_layer(self) -> int:
        if self.version == 4:
            return 5 * self.n_embd
        return 2 * self.n_embd + self.n_head * self.head_size * self.head_size


def layer_shapes(d: ModelDims) -> dict[str, tuple[int, ...]]:
    """Every layer field's shape: (n,) for float vectors, (rows, cols) for matrices [out, in]
    (LoRAs included: w1 (C, D) is given as its transpose), (k, rows, cols) for k matrices."""
    C, F = d.n_embd, d.n_ffn
    shapes: dict[str, tuple[int, ...]] = {"ln1_w": (C,), "ln1_b": (C,), "ln2_w": (C,), "ln2_b": (C,)}
    ffn = {"ffn.m_k": (C,), "ffn.m_r": (C,), "ffn.key": (F, C), "ffn.value": (C, F), "ffn.receptance": (C, C)}
    if d.version == 4:
        shapes.update({n: (C,) for n in ("m_k", "m_v", "m_r", "w", "u")})
        shapes.update({n: (C, C) for n in ("key", "value", "receptance", "output")})
        shapes.update(ffn)
    elif d.version == 5:
        shapes.update({n: (C,) for n in ("m_k", "m_v", "m_r", "m_g", "w", "u", "ln_x_w", "ln_x_b")})
        shapes.update({n: (C, C) for n in ("key", "value", "receptance", "gate", "output")})
        shapes.update(ffn)
    elif d.version == 6:
        D_mix, D_decay = d.lora
        shapes.update({
            "maa_x": (C,), "maa_wkvrg": (5, C), "maa_w1": (5 * D_mix, C), "maa_w2": (5, C, D_mix),
            "decay": (C,), "decay_w1": (D_decay, C), "decay_w2": (C, D_decay), "u": (C,),
            "ln_x_w": (C,), "ln_x_b": (C,),
        })
        shapes.update({n: (C, C) for n in ("key", "value", "receptance", "gate", "output")})
        shapes.update(ffn)
    else:
        shapes.update({n: (C,) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0")})
        for name, rank in zip("wavg", d.lora):
            shapes[name + "1"] = (rank, C)
            shapes[name + "2"] = (C, rank)
        shapes.update({n: (C,) for n in ("k_k", "k_a", "r_k", "ln_x_w", "ln_x_b", "ffn_x_k")})
        shapes.update({n: (C, C) for n in ("receptance", "key", "value", "output")})
        shapes.update({"ffn_key": (F, C), "ffn_value": (C, F)})
    return shapes


def _check_dims(d: ModelDims) -> None:
    if d.version not in _LAYER_TYPES:
        raise ValueError(f"no C forward pass for RWKV version {d.version}")
    sizes = (d.n_vocab, d.n_embd, d.n_layer, d.n_ffn, d.n_head, d.head_size)
    if any(not isinstance(n, int) or n < 1 for n in sizes) or any(n < 0 for n in d.lora):
        raise ValueError(f"model dims must be positive integers, got {d}")
    if d.version == 4 and (d.n_head, d.head_size) != (1, 1):
        raise ValueError("RWKV-4 has no heads (n_head = head_size = 1)")
    if d.version != 4 and d.n_head * d.head_size != d.n_embd:
        raise ValueError(f"{d.n_head} heads of {d.head_size} do not make n_embd {d.n_embd}")
    if len(d.lora) != {4: 0, 5: 0, 6: 2, 7: 4}[d.version]:
        raise ValueError(f"RWKV-{d.version} takes {len(d.lora)} LoRA ranks, got {d.lora}")
    if not all(math.isfinite(e) and e > 0 for e in (d.layer_norm_eps, d.group_norm_eps)):
        raise ValueError("norm eps must be positive and finite")
    if d.rescale_every < 0:
        raise ValueError(f"rescale_every must be >= 0, got {d.rescale_every}")


def _flat_fields(ctype: Any, prefix: str = "") -> dict[str, Any]:
    """struct field name (nested ones as 'ffn.key') -> cffi type."""
    out = {}
    for name, field in ctype.fields:
        if field.type.kind == "struct" and field.type.cname == "rke_channel_mix":
            out.update(_flat_fields(field.type, prefix + name + "."))
        else:
            out[prefix + name] = field.type
    return out


def _array_pointer(name: str, a: object, shape: tuple[int, ...], keep: list[Any]) -> Any:
    """A float pointer to `a`, which must be a contiguous, aligned float32 array of `shape`."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")  # noqa: TRY004
    if a.dtype != np.dtype("<f4") or a.shape != shape:
        raise ValueError(f"{name} must be float32 of shape {shape}, got {a.dtype} {a.shape}")
    if not a.flags.c_contiguous or not a.flags.aligned:
        raise ValueError(f"{name} must be C-contiguous and aligned")
    keep.append(a)
    ptr = ffi.from_buffer("float[]", a)
    keep.append(ptr)
    return ptr


def _fill_matrix(target: Any, name: str, m: object, shape: tuple[int, ...], keep: list[Any]) -> None:
    if not isinstance(m, Matrix):
        raise ValueError(f"{name} must be a Matrix, got {type(m).__name__}")  # noqa: TRY004
    if (m.n_rows, m.n_cols) != shape:
        raise ValueError(f"{name} is {m.n_rows} x {m.n_cols}, expected {shape[0]} x {shape[1]}")
    qtype = checks.qtype_of(m.qtype)
    n_rows, n_cols = checks.count(f"{name} rows", m.n_rows), checks.count(f"{name} columns", m.n_cols)
    data = checks.weights(qtype, m.data, n_rows, n_cols)
    keep.append(data)
    ptr = ffi.from_buffer(data)
    keep.append(ptr)
    target.data = ptr
    target.qtype = int(qtype)
    target.n_rows = m.n_rows
    target.n_cols = m.n_cols


def _fill_layer(layer: Any, i: int, d: ModelDims, fields: dict[str, object], keep: list[Any]) -> None:
    shapes = layer_shapes(d)
    ctypes = _flat_fields(ffi.typeof(_LAYER_TYPES[d.version]))
    if set(ctypes) != set(shapes):  # the table and the struct must describe the same fields
        raise RuntimeError(f"layer_shapes and {_LAYER_TYPES[d.version]} disagree")
    if set(fields) != set(shapes):
        diff = sorted(set(fields) ^ set(shapes))
        raise ValueError(f"layer {i}: fields {diff} are missing or unknown")
    optional = _OPTIONAL.get(d.version, ())
    absent = [n for n in optional if fields[n] is None]
    if d.version == 5 and absent not in ([], list(optional)):
        raise ValueError(f"layer {i}: m_g and gate come together (5.1, 5.2) or not at all (5.0)")
    if d.version == 7 and absent not in (([], list(optional)) if i == 0 else ([],)):
        raise ValueError(f"layer {i}: v0, v1, v2 are needed in every layer but the first")
    for name, shape in shapes.items():
        value = fields[name]
        if value is None and name in optional:
            continue  # ffi.new zeroed it: NULL
        *parents, leaf = name.split(".")
        target = layer
        for p in parents:
            target = getattr(target, p)
        if ctypes[name].cname == "rke_matrix":
            _fill_matrix(getattr(target, leaf), f"layer {i} {name}", value, shape, keep)
        elif ctypes[name].kind == "array":  # k matrices of the same shape
            if not isinstance(value, (list, tuple)) or len(value) != shape[0]:
                raise ValueError(f"layer {i} {name} must be {shape[0]} matrices")
            for q, part in enumerate(value):
                _fill_matrix(getattr(target, leaf)[q], f"layer {i} {name}[{q}]", part, shape[1:], keep)
        else:
            setattr(target, leaf, _array_pointer(f"layer {i} {name}", value, shape, keep))


def impl_of(backend: str) -> int:
    """The C implementation id of a kernel backend that has one ('avxvnni', 'avx2' or 'scalar')."""
    if backend not in _IMPLS or lib is None:
        raise ValueError(f"backend {backend!r} has no C forward pass")
    if backend not in dispatch.available():
        raise RuntimeError(f"kernel backend {backend!r} is unavailable here")
    return int(getattr(lib, _IMPLS[backend]))


class NativeModel:
    """One model's rke_model struct (pointing into the caller's arrays, which it keeps alive),
    its scratch, and the forward call. Calls are serialised: the scratch is shared."""

    def __init__(
        self,
        dims: ModelDims,
        *,
        emb: Matrix,
        emb_round: GGMLType | None,
        ln0: tuple[np.ndarray, np.ndarray],
        ln_out: tuple[np.ndarray, np.ndarray],
        head: Matrix,
        layers: list[dict[str, object]],
        backend: str,
        pool: ThreadPool | None = None,
    ) -> None:
        _check_dims(dims)
        if len(layers) != dims.n_layer:
            raise ValueError(f"{len(layers)} layers given for a {dims.n_layer}-layer model")
        if emb_round not in (None, GGMLType.F16, GGMLType.BF16):
            raise ValueError(f"the embedding can be rounded to F16 or BF16, not {emb_round!r}")
        self.dims = dims
        self.impl = impl_of(backend)
        self.pool = pool
        C, V = dims.n_embd, dims.n_vocab
        keep: list[Any] = []
        m = ffi.new("rke_model *")
        m.version = dims.version
        m.n_vocab, m.n_embd, m.n_layer = V, C, dims.n_layer
        m.n_ffn, m.n_head, m.head_size = dims.n_ffn, dims.n_head, dims.head_size
        m.lora = list(dims.lora) + [0] * (4 - len(dims.lora))
        m.layer_norm_eps, m.group_norm_eps = dims.layer_norm_eps, dims.group_norm_eps
        m.rescale_every = dims.rescale_every
        m.emb_round = int(emb_round if emb_round is not None else GGMLType.F32)
        # Rows C cannot look up (a type without a C decoder, or storage C cannot address) come from
        # the caller as x_in instead; the table then never reaches C.
        self.looks_up_embedding = self._embedding_in_c(emb, V, C)
        if self.looks_up_embedding:
            _fill_matrix(m.emb, "emb", emb, (V, C), keep)
        m.ln0_w, m.ln0_b = (_array_pointer(f"ln0 {n}", a, (C,), keep) for n, a in zip("wb", ln0))
        m.ln_out_w, m.ln_out_b = (_array_pointer(f"ln_out {n}", a, (C,), keep) for n, a in zip("wb", ln_out))
        _fill_matrix(m.head, "head", head, (V, C), keep)
        structs = ffi.new(f"{_LAYER_TYPES[dims.version]}[]", dims.n_layer)
        for i, fields in enumerate(layers):
            _fill_layer(structs[i], i, dims, fields, keep)
        m.layers = structs
        keep.append(structs)
        self._struct = m
        self._keep = keep
        self._lock = threading.Lock()
        self._scratch: dict[int, np.ndarray] = {}
        self._scratch_for(1)  # decode allocates nothing per token
        self.tokens_per_call = self._tokens_within_budget()

    @staticmethod
    def _embedding_in_c(emb: Matrix, V: int, C: int) -> bool:
        try:
            qtype = checks.qtype_of(emb.qtype)
            checks.weights(qtype, emb.data, V, C)
        except ValueError:
            return False
        return (emb.n_rows, emb.n_cols) == (V, C) and bool(lib.rke_embedding_supported(int(qtype)))

    def _tokens_within_budget(self) -> int:
        """The most tokens per C call (a multiple of 16 up to MAX_TOKENS_PER_CALL, at least 16) whose
        scratch fits SCRATCH_BUDGET_BYTES."""
        per_call = 16
        while per_call < MAX_TOKENS_PER_CALL:
            need = int(lib.rke_model_scratch_floats(self._struct, per_call + 16)) * 4
            if need < 0 or need > SCRATCH_BUDGET_BYTES:
                break
            per_call += 16
        return per_call

    def _scratch_for(self, n_tokens: int) -> np.ndarray:
        """The scratch for n_tokens, reusing the single-token one and the largest chunk's."""
        key = 1 if n_tokens == 1 else 0
        have = self._scratch.get(key)
        need = int(lib.rke_model_scratch_floats(self._struct, n_tokens))
        if need < 0:
            raise RuntimeError("rke_model_scratch_floats refused the model")  # _check_dims passed: a bug
        if have is None or have.size < need:
            have = np.empty(need, np.float32)
            self._scratch[key] = have
        return have

    def forward(
        self,
        state: np.ndarray,
        tokens: np.ndarray | None = None,
        x_in: np.ndarray | None = None,
        logits: np.ndarray | None = None,
    ) -> None:
        """Advance `state` (n_layer, floats per layer) in place over `tokens` (T,) ints, or over
        x_in (T, C) float32 rows already looked up and normalised by ln0. `logits`: None, or a
        (1, V) or (T, V) float32 array for the last or every token's logits."""
        d = self.dims
        if (tokens is None) == (x_in is None):
            raise ValueError("give tokens or x_in, not both")
        if x_in is not None:
            x_in = checks.activations(x_in, d.n_embd, tokens=True)
            n_tokens = x_in.shape[0]
        else:
            if not self.looks_up_embedding:
                raise ValueError("this model's embedding is looked up in Python: pass x_in")
            ids = np.ascontiguousarray(tokens, dtype=np.int32)
            if ids.ndim != 1 or ids.size == 0 or int(ids.min()) < 0 or int(ids.max()) >= d.n_vocab:
                raise ValueError(f"tokens must be a non-empty 1-D array of ids below {d.n_vocab}")
            n_tokens = ids.size
        if (
            not isinstance(state, np.ndarray)
            or state.dtype != np.dtype("<f4")
            or state.size != d.n_layer * d.state_floats_per_layer
            or not state.flags.c_contiguous
            or not state.flags.writeable
        ):
            raise ValueError(f"state must be a writable contiguous float32 array of "
                             f"{d.n_layer} x {d.state_floats_per_layer}")
        n_rows = 0
        if logits is not None:
            n_rows = logits.shape[0] if logits.ndim == 2 else -1
            if n_rows not in (1, n_tokens):
                raise ValueError(f"logits must have 1 or {n_tokens} rows of {d.n_vocab}")
            logits = checks.output(logits, (n_rows, d.n_vocab), state, *(a for a in (x_in,) if a is not None))
        step = self.tokens_per_call
        with self._lock:
            for a in range(0, n_tokens, step):
                b = min(a + step, n_tokens)
                # logits of every token: this piece's rows; of the last token: the last piece only
                piece_logits, piece_rows = None, 0
                if logits is not None and n_rows == n_tokens:
                    piece_logits, piece_rows = logits[a:b], b - a
                elif logits is not None and b == n_tokens:
                    piece_logits, piece_rows = logits, n_rows
                self._call(state, None if x_in is not None else ids[a:b], None if x_in is None else x_in[a:b],
                           b - a, piece_logits, piece_rows)

    def _call(self, state: np.ndarray, ids: np.ndarray | None, x_in: np.ndarray | None, n_tokens: int,
              logits: np.ndarray | None, n_rows: int) -> None:
        """One rke_model_forward over n_tokens (all arguments checked by forward)."""
        scratch = self._scratch_for(n_tokens)
        rc = lib.rke_model_forward(
            self._struct,
            self.pool.handle() if self.pool is not None else ffi.NULL,
            self.impl,
            ffi.from_buffer("float[]", scratch, require_writable=True),
            scratch.size,
            ffi.from_buffer("float[]", state, require_writable=True),
            ffi.from_buffer("int32_t[]", ids) if ids is not None else ffi.NULL,
            ffi.from_buffer("float[]", x_in) if x_in is not None else ffi.NULL,
            n_tokens,
            ffi.from_buffer("float[]", logits, require_writable=True) if logits is not None else ffi.NULL,
            n_rows,
        )
        if rc != lib.RKE_OK:  # everything C checks was checked above, so this is a bug
            raise RuntimeError(f"rke_model_forward: C status {rc}")
