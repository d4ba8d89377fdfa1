"""A short fingerprint of a model's weights, to tell whether a saved state belongs to them.

blake2b-128 over the shape spec and, for every tensor in name order, its name, storage type, shape and a
sample of its stored bytes: the first and last 64 and 8 evenly spaced runs of 16. Sampling touches a few
pages per tensor, so a 3 GB memory-mapped file is fingerprinted without being read. Any retraining or
fine-tuning changes nearly every byte, so the sample catches it; a different storage type (another
quantization of the same model) gives a different fingerprint by design.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from ..quant.ggml_types import RawTensor
from ..quant.spec import ModelSpec

FINGERPRINT_BYTES = 16
_EDGE = 64
_RUNS = 8
_RUN = 16


def weights_fingerprint(spec: ModelSpec, tensors: Mapping[str, RawTensor]) -> str:
    """Hex string of FINGERPRINT_BYTES bytes."""
    h = hashlib.blake2b(digest_size=FINGERPRINT_BYTES, person=b"rwkv-edge-w1")
    h.update(repr((spec.version, spec.n_vocab, spec.n_embd, spec.n_layer, spec.n_ffn, spec.n_head,
                   spec.head_size, sorted(spec.lora.items()))).encode())
    for name in sorted(tensors):
        raw = tensors[name]
        h.update(f"\0{name}\0{int(raw.qtype)}\0{list(raw.shape)}\0".encode())
        h.update(_sample(raw.data))
    return h.hexdigest()


def _sample(data: np.ndarray) -> bytes:
    """A few runs of the tensor's stored bytes, without reading (or copying) the rest."""
    if not data.flags.c_contiguous:  # a transposed view of the map: sample elements instead of bytes
        positions = _runs(data.size, _EDGE // data.itemsize or 1, _RUN // data.itemsize or 1)
        return np.ascontiguousarray(data[np.unravel_index(positions, data.shape)]).tobytes()
    flat = data.reshape(-1).view(np.uint8)  # (nbytes,) a view of the map
    return flat[_runs(len(flat), _EDGE, _RUN)].tobytes()


def _runs(n: int, edge: int, run: int) -> np.ndarray:
    """Indices (k,) into n items: the first and last `edge`, and _RUNS runs of `run` evenly spaced between."""
    if n <= 2 * edge + _RUNS * run:
        return np.arange(n)
    step = (n - 2 * edge - run) // (_RUNS + 1)
    starts = [edge + k * step for k in range(1, _RUNS + 1)]
    middle = [np.arange(s, s + run) for s in starts]
    return np.concatenate([np.arange(edge), *middle, np.arange(n - edge, n)])
