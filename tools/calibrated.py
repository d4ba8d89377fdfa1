"""The calibrated 4-bit mode, `rwkv-edge convert SRC DST --type IQ4_CAL`: the large matrices rounded into
IQ4_NL against their inputs' statistics on a calibration text (GPTQ + refinement), the few whose 4-bit
rounding costs the most KL per bit upgraded to Q5_0 within a bits-per-weight budget; embedding and head
by the usual policy. The output is an ordinary GGUF (IQ4_NL = ggml type 20, Q5_0 = 6) that llama.cpp reads.

Orchestration only: runtime.calibration runs the model, quant.gptq and quant.allocation do the arithmetic,
quant.convert writes the file. docs/quantization.md gives the measurements behind every default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..quant.allocation import allocate_types, bits_per_weight, mean_bpw
from ..quant.checkpoint import Checkpoint, open_checkpoint
from ..quant.codebooks import codebook, pack, values
from ..quant.convert import ConvertResult, Progress, check_destination, convert_checkpoint
from ..quant.ggml_types import GGMLType, RawTensor
from ..quant.gguf_layout import storage_type_of
from ..quant.gptq import round_tensor
from ..quant.policy import Policy
from ..runtime import calibration as cal
from ..runtime.model import Model
from ..runtime.tokenizer import load_tokenizer

MODE = "IQ4_CAL"
BASE = GGMLType.IQ4_NL
# The last Linear of each half reads what the half's other Linears computed: quantized after them. Its
# output joins the residual stream, so (sequential) it is also asked to cancel the stream's drift.
_SECOND_STAGE = ("att.output.weight", "ffn.value.weight")
MIN_TOKENS = 64
_RATIO_ROWS = 256

Say = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    budget_bpw: float = 4.6  # mean bits per weight over the calibrated matrices
    upgrade: GGMLType = GGMLType.Q5_0  # the wider type the budget buys
    sequential: bool = True  # calibrate each half on the outputs of the already quantized halves below
    calibration_tokens: int = 8192  # tokens of calibration text used (or sampled when there is none)
    sensitivity_tokens: int = 256  # tokens over which each matrix's KL is measured for the allocation
    seed: int = 0  # of the sampled calibration text


@dataclass(frozen=True)
class Calibrated:
    tensors: dict[str, tuple[GGMLType, np.ndarray]]  # official name -> (type, (rows, row_nbytes) uint8)
    sensitivity: dict[str, float]  # official name -> KL with only this matrix at plain IQ4_NL (if measured)
    bits_per_weight: float  # mean over the calibrated matrices


def check_options(options: Options) -> None:
    """Raise ValueError for options the mode cannot honour, before any work starts."""
    if options.budget_bpw < bits_per_weight(BASE):
        raise ValueError(f"a budget of {options.budget_bpw} bits per weight is below {BASE.name}'s "
                         f"{bits_per_weight(BASE)}")
    codebook(options.upgrade)  # a type the rounding can produce
    if options.calibration_tokens < MIN_TOKENS:
        raise ValueError(f"the calibration needs at least {MIN_TOKENS} tokens, got {options.calibration_tokens}")
    if options.sensitivity_tokens < 2:
        raise ValueError(f"the sensitivity needs at least 2 tokens, got {options.sensitivity_tokens}")


def calibration_ids(model: Model, text: str | None, options: Options, say: Say | None = None) -> np.ndarray:
    """(T,) token ids: the start of `text`, or `options.calibration_tokens` tokens sampled from the model."""
    say = say or (lambda _msg: None)
    if text is None:
        say(f"sampling {options.calibration_tokens} calibration tokens from the model (seed {options.seed})")
        return cal.sample_tokens(model, options.calibration_tokens, seed=options.seed)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer to read a calibration text with; give --tokenizer")
    ids = np.asarray(model.tokenizer.encode(text), dtype=np.int64)[: options.calibration_tokens]
    if len(ids) < MIN_TOKENS:
        raise ValueError(f"the calibration text is {len(ids)} tokens long; at least {MIN_TOKENS} are needed")
    return ids


def calibrated_names(ckpt: Checkpoint, policy: Policy) -> list[str]:
    """The matrices the mode rounds: every large Linear the policy would store as IQ4_NL, in forward order."""
    names = [n for n, t in ckpt.tensors.items()
             if storage_type_of(n) == "matrix" and policy.type_for(n, t.shape) == BASE]
    order = {lh: k for k, lh in enumerate(cal.halves(ckpt.spec.n_layer))}
    return sorted(names, key=lambda n: (order[cal.half_of(n)], n.endswith(_SECOND_STAGE), n))


def calibrated_matrices(
    model: Model, ids: np.ndarray, names: Sequence[str], options: Options = Options(), say: Say | None = None
) -> Calibrated:
    """Round the matrices `names` of `model` (as stored: F32, F16 or quantized) with the calibrated mode."""
    say = say or (lambda _msg: None)
    check_options(options)
    sizes = {n: int(np.prod(model.checkpoint.tensors[n].shape)) for n in names}
    sensitivity: dict[str, float] = {}
    types = {n: BASE for n in names}
    if options.budget_bpw > bits_per_weight(BASE) and options.upgrade != BASE:
        sensitivity, gains = _upgrade_gains(model, ids[: options.sensitivity_tokens], names, options, say)
        types = allocate_types(sizes, gains, base=BASE, budget_bpw=options.budget_bpw)
    upgraded = [n for n in names if types[n] != BASE]
    shown = ", ".join(upgraded[:6]) + (", ..." if len(upgraded) > 6 else "")
    say(f"types: {BASE.name} x{len(names) - len(upgraded)}, {options.upgrade.name} x{len(upgraded)}"
        + (f" ({shown})" if upgraded else ""))
    out = _round_all(model, ids, names, types, options, say)
    return Calibrated(out, sensitivity, mean_bpw(sizes, types))


def convert_calibrated(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    calibration_text: str | None = None,
    options: Options = Options(),
    tokenizer: str | None = None,
    emb_type: GGMLType | None = None,
    head_type: GGMLType | None = None,
    say: Say | None = None,
    progress: Progress | None = None,
) -> tuple[ConvertResult, Calibrated]:
    """`rwkv-edge convert SRC DST --type IQ4_CAL`: calibrate, then write the GGUF file."""
    src, dst = os.fspath(src), os.fspath(dst)
    check_options(options)
    check_destination(src, dst)  # before minutes of calibration, not after
    ckpt = open_checkpoint(src)
    tok = load_tokenizer(tokenizer) if tokenizer not in (None, "none") else None
    model = Model(ckpt, tok)
    policy = Policy.for_type(BASE, emb_type, head_type)
    ids = calibration_ids(model, calibration_text, options, say)
    result = calibrated_matrices(model, ids, calibrated_names(ckpt, policy), options, say)
    written = convert_checkpoint(ckpt, dst, BASE, tokenizer=tokenizer, emb_type=emb_type, head_type=head_type,
                                 progress=progress, encoded=result.tensors)
    return written, result


def _weights(model: Model, name: str) -> np.ndarray:
    """(rows, cols) float32, decoded when needed: all of a large model's matrices at once would not fit."""
    return np.asarray(model.checkpoint.tensors[name].to_f32(), dtype=np.float32)


def _upgrade_gains(
    model: Model, ids: np.ndarray, names: Sequence[str], options: Options, say: Say
) -> tuple[dict[str, float], dict[str, dict[GGMLType, float]]]:
    """Per matrix: the KL of it alone at plain IQ4_NL, and the KL an upgrade is expected to save.

    The saving is that KL times the share of the (input-weighted) rounding error the upgrade removes,
    a ratio that the first _RATIO_ROWS rows estimate well enough.
    """
    say(f"measuring each matrix's sensitivity on {len(ids)} tokens")
    imatrix = _imatrix(model, ids)
    candidates, ratio = {}, {}
    for n in names:
        w = _weights(model, n)  # (rows, cols)
        d, codes = round_tensor(w, imatrix[n])
        rows = w[:_RATIO_ROWS]
        d_up, codes_up = round_tensor(rows, imatrix[n], qtype=options.upgrade)
        err_base = float(np.sum((rows - values(BASE, d[:_RATIO_ROWS], codes[:_RATIO_ROWS])) ** 2 * imatrix[n]))
        err_up = float(np.sum((rows - values(options.upgrade, d_up, codes_up)) ** 2 * imatrix[n]))
        ratio[n] = err_up / err_base if err_base > 0 else 1.0
        candidates[n] = RawTensor(BASE, w.shape, pack(BASE, d, codes))

    def progress(k: int, total: int) -> None:
        if k == total or k % max(1, total // 10) == 0:  # about ten lines
            say(f"sensitivity {k}/{total}")

    kl = cal.single_tensor_kl(model, ids, candidates, progress=progress)
    gains = {n: {options.upgrade: kl[n] * (1.0 - ratio[n])} for n in names}
    return kl, gains


def _imatrix(model: Model, ids: np.ndarray) -> dict[str, np.ndarray]:
    """(cols,) mean x^2 of every Linear's input over ids."""
    sums: dict[str, np.ndarray] = {}

    def add(name: str, x: np.ndarray) -> None:
        sums[name] = sums.get(name, 0.0) + np.einsum("tc,tc->c", x, x, dtype=np.float64)

    stream = cal.Stream(model, ids)
    for _ in cal.halves(model.spec.n_layer):
        cal.advance(stream, add)
    return {n: s / len(ids) for n, s in sums.items()}


def _round_all(
    model: Model,
    ids: np.ndarray,
    names: Sequence[str],
    types: dict[str, GGMLType],
    options: Options,
    say: Say,
) -> dict[str, tuple[GGMLType, np.ndarray]]:
    """GPTQ-round every matrix half by half, from the bottom of the model up."""
    ref = cal.Stream(model, ids)
    cur = ref.with_model(model) if options.sequential else None
    out: dict[str, tuple[GGMLType, np.ndarray]] = {}
    n_layer = model.spec.n_layer
    for layer, half in cal.halves(n_layer):
        group = [n for n in names if cal.half_of(n) == (layer, half)]
        if half == cal.ATT:
            say(f"rounding layer {layer + 1}/{n_layer} on {len(ids)} tokens"
                + (" (sequential)" if options.sequential else ""))
        if cur is None:
            moments = cal.half_moments(ref, names=group, advance_ref=True)
            for n in group:
                out[n] = _round(_weights(model, n), moments[n], types[n])
            continue
        first = [n for n in group if not n.endswith(_SECOND_STAGE)]
        second = [n for n in group if n.endswith(_SECOND_STAGE)]
        # the second stage's outputs join the residual stream, so they are asked to cancel its drift
        for stage, drift in ((first, []), (second, second)):
            if not stage:
                continue
            moments = cal.half_moments(ref, cur, stage, drift=drift)
            done = {}
            for n in stage:
                out[n] = _round(_weights(model, n), moments[n], types[n])
                done[n] = RawTensor(types[n], model.checkpoint.tensors[n].shape, out[n][1])
            cur.model = cal.with_tensors(cur.model, done)
        cal.advance(cur)
        cal.advance(ref)
    return out


def _round(w: np.ndarray, moments: cal.InputMoments, qtype: GGMLType) -> tuple[GGMLType, np.ndarray]:
    d, codes = round_tensor(w, moments.second, qtype=qtype, cross=moments.cross, drift=moments.drift)
    return qtype, pack(qtype, d, codes)

