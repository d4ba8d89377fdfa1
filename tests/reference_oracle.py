"""Reference logits from the official `rwkv` pip package, run in a subprocess.

The package picks its model class from environment variables read at import time (RWKV_V7_ON
replaces the v4-v6 class by the v7 one), so v7 and v4-v6 checkpoints are evaluated in separate
child processes of this same file. Strategy 'cpu fp32', JIT and CUDA off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Version as the reference's class reports it (RWKV.version; the v7 class has none).
_REFERENCE_VERSION = {"4": 4.0, "5.0": 5.0, "5.1": 5.1, "5.2": 5.2, "6": 6.0}

Job = tuple[str, str, Sequence[int]]  # (pth_path, version, tokens)


def reference_logits(
    pth_path: str | Path, version: str, tokens: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (one_by_one [T, V], seq [T, V]) float32 logits of the official package.

    one_by_one: T single-token calls passing a deep-copied state along; seq: one call on all
    tokens with full_output=True. T must be >= 2 (one token never takes the sequence path).
    """
    return reference_logits_batch([(str(pth_path), version, tokens)])[0]


def reference_logits_batch(jobs: Sequence[Job]) -> list[tuple[np.ndarray, np.ndarray]]:
    """reference_logits for many checkpoints with at most two child processes (v7 / v4-v6)."""
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(jobs)
    for want_v7 in (False, True):
        picked = [i for i, job in enumerate(jobs) if (job[1] == "7") == want_v7]
        if picked:
            for i, out in zip(picked, _run_child([jobs[i] for i in picked], want_v7)):
                results[i] = out
    return [r for r in results if r is not None]


def _run_child(jobs: Sequence[Job], v7: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    for path, version, tokens in jobs:
        if not str(path).endswith(".pth"):
            raise ValueError(f"{path}: the rwkv package only loads files named *.pth")
        if len(tokens) < 2:
            raise ValueError(f"{path}: need at least 2 tokens, got {len(tokens)}")
        if version != "7" and version not in _REFERENCE_VERSION:
            raise ValueError(f"{path}: unknown version {version!r}")
    env = dict(os.environ, RWKV_JIT_ON="0", RWKV_CUDA_ON="0", CUDA_VISIBLE_DEVICES="")
    env.pop("RWKV_V7_ON", None)
    env.pop("RWKV_RESCALE_LAYER", None)
    env.pop("RWKV_DE_VERSION", None)
    if v7:
        env["RWKV_V7_ON"] = "1"
    with tempfile.TemporaryDirectory(prefix="rwkv-oracle-") as tmp:
        request = Path(tmp) / "jobs.json"
        answer = Path(tmp) / "logits.npz"
        request.write_text(json.dumps([[str(p), v, [int(t) for t in toks]] for p, v, toks in jobs]))
        proc = subprocess.run(
            [sys.executable, __file__, str(request), str(answer)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"rwkv reference child failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        with np.load(answer) as z:
            return [(z[f"one_{i}"], z[f"seq_{i}"]) for i in range(len(jobs))]


def _child_main(request: str, answer: str) -> None:
    """Evaluate every job of the request file with the rwkv package; write all logits to answer."""
    import copy
    import gc

    import torch
    from rwkv.model import RWKV

    # The models are tiny: thread hand-off costs more than it saves, and the package calls
    # gc.collect() per load, which is slow over torch's many objects unless they are frozen.
    torch.set_num_threads(1)
    gc.freeze()

    out: dict[str, np.ndarray] = {}
    for i, (path, version, tokens) in enumerate(json.loads(Path(request).read_text())):
        model = RWKV(model=path[: -len(".pth")], strategy="cpu fp32")
        _check_detection(
            model, path, version, torch.load(path, map_location="cpu", weights_only=True)
        )
        state = None
        rows = []  # T x [V]
        for token in tokens:
            logits, state = model.forward([token], copy.deepcopy(state))
            rows.append(logits.float().numpy().copy())
        seq, _ = model.forward(list(tokens), None, full_output=True)
        out[f"one_{i}"] = np.stack(rows).astype(np.float32)
        out[f"seq_{i}"] = seq.float().numpy().astype(np.float32)
    np.savez(answer, **out)


def _check_detection(model: object, path: str, version: str, sd: dict) -> None:
    """Fail if the reference read the file as another version or head count than intended.

    The v4-v6 class reads n_head from time_decay only once it has seen ln_x (key order), so a
    one-layer v5 file would silently be mis-parsed.
    """
    if version == "7":
        ok = type(model).__name__ == "RWKV_x070"
        ok = ok and model.n_head == sd["blocks.0.att.r_k"].shape[0]  # type: ignore[attr-defined]
    else:
        ok = model.version == _REFERENCE_VERSION[version]  # type: ignore[attr-defined]
        if version != "4":
            key = "blocks.0.att.time_faaaa" if version == "6" else "blocks.0.att.time_decay"
            ok = ok and model.args.n_head == sd[key].shape[0]  # type: ignore[attr-defined]
    if not ok:
        raise RuntimeError(f"{path}: the rwkv package did not detect version {version} correctly")


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
