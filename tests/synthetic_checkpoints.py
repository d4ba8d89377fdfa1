"""Build synthetic official-layout RWKV state dicts (v4, 5.0, 5.1, 5.2, 6, 7) for tests.

Names, shapes and key order follow the BlinkDL training code (rwkv-math.md sections 4.1, 5.1, 6.1,
7.1). Values are random but in the ranges trained checkpoints have, so that every parameter moves
the logits and a wrong formula shows up: decays spread over roughly 0.3..0.999, token-shift mixes in
(0, 1), LayerNorm weights near 1, matrices ~N(0, 1/in), small LoRAs. Test-only: imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7")

# log(-log(decay)) for decay 0.999 and 0.3: time_decay stratified over this interval spreads
# exp(-exp(time_decay)) over 0.3..0.999, mostly slow with a few fast ones as in trained models.
_LOG_DECAY_LO = math.log(-math.log(0.999))
_LOG_DECAY_HI = math.log(-math.log(0.3))

DEFAULT_LORA = {
    "6": {"mix": 32, "decay": 64},
    "7": {"w": 64, "a": 64, "v": 32, "g": 128},
}


class _Draw:
    """Seeded random tensors; every draw is float32 and cast to the storage dtype on output."""

    def __init__(self, seed: int, dtype: torch.dtype) -> None:
        self._gen = torch.Generator().manual_seed(seed)
        self._dtype = dtype

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        x = torch.randn(shape, generator=self._gen, dtype=torch.float32) * std + mean
        return x.to(self._dtype).contiguous()

    def uniform(self, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        x = torch.rand(shape, generator=self._gen, dtype=torch.float32) * (hi - lo) + lo
        return x.to(self._dtype).contiguous()

    def stratified(self, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        """Uniform in [lo, hi) with one value per equal stratum, shuffled: even 2 values spread."""
        n = math.prod(shape)
        strata = torch.randperm(n, generator=self._gen).to(torch.float32)
        u = (strata + torch.rand(n, generator=self._gen)) / n
        return (u * (hi - lo) + lo).reshape(shape).to(self._dtype).contiguous()

    def linear(self, n_out: int, n_in: int, gain: float = 1.0) -> torch.Tensor:
        """nn.Linear weight [n_out, n_in] ~ N(0, gain^2 / n_in)."""
        return self.normal((n_out, n_in), gain / math.sqrt(n_in))

    def mix(self, n_embd: int) -> torch.Tensor:
        """Token-shift mix [1, 1, C] in (0, 1)."""
        return self.uniform((1, 1, n_embd), 0.02, 0.98)


def default_ffn(version: str, n_embd: int) -> int:
    """Official channel-mix width: 4C (v4, v5.0/5.1, v7), 3.5C rounded down to 32 (v5.2, v6)."""
    if version in ("5.2", "6"):
        return int(3.5 * n_embd) // 32 * 32
    return 4 * n_embd


def make_checkpoint(
    version: str,
    *,
    n_embd: int,
    n_layer: int,
    head_size: int | None,
    vocab: int,
    n_ffn: int | None = None,
    lora: Mapping[str, int] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Return an official BlinkDL state dict (insertion order = training-code order).

    lora: v6 {"mix": D_mix, "decay": D_dec}; v7 {"w": D_w, "a": D_a, "v": D_v, "g": D_g}.
    head_size is ignored for v4. v7 layer 0 carries v0/v1/v2 like official files (unused).
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown RWKV version {version!r}; expected one of {VERSIONS}")
    if version != "4" and (head_size is None or n_embd % head_size):
        raise ValueError(f"n_embd {n_embd} is not a multiple of head_size {head_size}")
    n_ffn = default_ffn(version, n_embd) if n_ffn is None else n_ffn
    ranks = dict(DEFAULT_LORA.get(version, {}))
    ranks.update(lora or {})
    draw = _Draw(seed, dtype)
    c = n_embd

    sd: dict[str, torch.Tensor] = {"emb.weight": draw.normal((vocab, c), 0.5)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        sd[p + "ln1.weight"] = draw.uniform((c,), 0.7, 1.3)
        sd[p + "ln1.bias"] = draw.normal((c,), 0.1)
        sd[p + "ln2.weight"] = draw.uniform((c,), 0.7, 1.3)
        sd[p + "ln2.bias"] = draw.normal((c,), 0.1)
        if i == 0:
            sd[p + "ln0.weight"] = draw.uniform((c,), 0.7, 1.3)
            sd[p + "ln0.bias"] = draw.normal((c,), 0.1)
        if version == "4":
            _time_mix_v4(sd, p + "att.", draw, c)
        elif version.startswith("5"):
            _time_mix_v5(sd, p + "att.", draw, version, c, c // head_size)
        elif version == "6":
            _time_mix_v6(sd, p + "att.", draw, c, c // head_size, ranks)
        else:
            _time_mix_v7(sd, p + "att.", draw, c, c // head_size, ranks)
        _channel_mix(sd, p + "ffn.", draw, version, c, n_ffn)
    sd["ln_out.weight"] = draw.uniform((c,), 0.8, 1.5)
    sd["ln_out.bias"] = draw.normal((c,), 0.1)
    sd["head.weight"] = draw.linear(vocab, c, gain=2.0)
    return sd


def _time_mix_v4(sd: dict[str, torch.Tensor], p: str, draw: _Draw, c: int) -> None:
    sd[p + "time_decay"] = draw.stratified((c,), _LOG_DECAY_LO, _LOG_DECAY_HI)
    sd[p + "time_first"] = draw.uniform((c,), -1.0, 1.0)
    for name in ("k", "v", "r"):
        sd[p + f"time_mix_{name}"] = draw.mix(c)
    for name in ("key", "value", "receptance", "output"):
        sd[p + f"{name}.weight"] = draw.linear(c, c)


def _time_mix_v5(
    sd: dict[str, torch.Tensor], p: str, draw: _Draw, version: str, c: int, n_head: int
) -> None:
    for name in ("k", "v", "r") + (("g",) if version != "5.0" else ()):
        sd[p + f"time_mix_{name}"] = draw.mix(c)
    if version == "5.2":
        head_size = c // n_head
        sd[p + "time_decay"] = draw.stratified((n_head, head_size), _LOG_DECAY_LO, _LOG_DECAY_HI)
        sd[p + "time_faaaa"] = draw.uniform((n_head, head_size), -1.0, 1.0)
    else:
        # 5.0/5.1: one decay and one log-bonus per head; u = exp(time_first) in (0.37, 1.65).
        sd[p + "time_decay"] = draw.stratified((n_head,), _LOG_DECAY_LO, _LOG_DECAY_HI)
        sd[p + "time_first"] = draw.uniform((n_head,), -1.0, 0.5)
    for name in ("receptance", "key", "value", "output"):
        sd[p + f"{name}.weight"] = draw.linear(c, c)
    if version != "5.0":
        sd[p + "gate.weight"] = draw.linear(c, c)
    sd[p + "ln_x.weight"] = draw.uniform((c,), 0.2, 1.0)
    sd[p + "ln_x.bias"] = draw.normal((c,), 0.05)


def _time_mix_v6(
    sd: dict[str, torch.Tensor], p: str, draw: _Draw, c: int, n_head: int, ranks: dict[str, int]
) -> None:
    d_mix, d_dec = ranks["mix"], ranks["decay"]
    for name in ("x", "w", "k", "v", "r", "g"):
        sd[p + f"time_maa_{name}"] = draw.mix(c)
    # LoRA outputs of std ~0.25: large enough that the w,k,v,r,g chunk order matters.
    sd[p + "time_maa_w1"] = draw.normal((c, 5 * d_mix), 0.5 / math.sqrt(c))
    sd[p + "time_maa_w2"] = draw.normal((5, d_mix, c), 0.6 / math.sqrt(d_mix))
    sd[p + "time_decay"] = draw.stratified((1, 1, c), _LOG_DECAY_LO, _LOG_DECAY_HI)
    sd[p + "time_decay_w1"] = draw.normal((c, d_dec), 0.5 / math.sqrt(c))
    sd[p + "time_decay_w2"] = draw.normal((d_dec, c), 0.8 / math.sqrt(d_dec))
    sd[p + "time_faaaa"] = draw.uniform((n_head, c // n_head), -1.0, 1.0)
    for name in ("receptance", "key", "value", "output", "gate"):
        sd[p + f"{name}.weight"] = draw.linear(c, c)
    sd[p + "ln_x.weight"] = draw.uniform((c,), 0.2, 1.0)
    sd[p + "ln_x.bias"] = draw.normal((c,), 0.05)


def _time_mix_v7(
    sd: dict[str, torch.Tensor], p: str, draw: _Draw, c: int, n_head: int, ranks: dict[str, int]
) -> None:
    for name in ("r", "w", "k", "v", "a", "g"):
        sd[p + f"x_{name}"] = draw.mix(c)
    # w0 in (-7, 1) spreads exp(-e^-0.5 * sigmoid(w0)) over about 0.64..0.9994.
    sd[p + "w0"] = draw.stratified((1, 1, c), -7.0, 1.0)
    sd[p + "w1"] = draw.normal((c, ranks["w"]), 0.5 / math.sqrt(c))
    sd[p + "w2"] = draw.normal((ranks["w"], c), 0.6 / math.sqrt(ranks["w"]))
    sd[p + "a0"] = draw.normal((1, 1, c), 0.5)
    sd[p + "a1"] = draw.normal((c, ranks["a"]), 0.5 / math.sqrt(c))
    sd[p + "a2"] = draw.normal((ranks["a"], c), 1.0 / math.sqrt(ranks["a"]))
    sd[p + "v0"] = draw.uniform((1, 1, c), -1.0, 1.5)
    sd[p + "v1"] = draw.normal((c, ranks["v"]), 0.5 / math.sqrt(c))
    sd[p + "v2"] = draw.normal((ranks["v"], c), 1.0 / math.sqrt(ranks["v"]))
    sd[p + "g1"] = draw.normal((c, ranks["g"]), 1.0 / math.sqrt(c))
    sd[p + "g2"] = draw.normal((ranks["g"], c), 1.5 / math.sqrt(ranks["g"]))
    sd[p + "k_k"] = draw.uniform((1, 1, c), 0.5, 1.2)
    sd[p + "k_a"] = draw.uniform((1, 1, c), 0.5, 1.2)
    sd[p + "r_k"] = draw.normal((n_head, c // n_head), 0.5)
    for name in ("receptance", "key", "value", "output"):
        sd[p + f"{name}.weight"] = draw.linear(c, c)
    sd[p + "ln_x.weight"] = draw.uniform((c,), 0.2, 1.0)
    sd[p + "ln_x.bias"] = draw.normal((c,), 0.05)


def _channel_mix(
    sd: dict[str, torch.Tensor], p: str, draw: _Draw, version: str, c: int, n_ffn: int
) -> None:
    if version == "7":
        sd[p + "x_k"] = draw.mix(c)
        sd[p + "key.weight"] = draw.linear(n_ffn, c)
        sd[p + "value.weight"] = draw.linear(c, n_ffn)
        return
    prefix = "time_maa_" if version == "6" else "time_mix_"
    sd[p + prefix + "k"] = draw.mix(c)
    sd[p + prefix + "r"] = draw.mix(c)
    sd[p + "key.weight"] = draw.linear(n_ffn, c)
    sd[p + "receptance.weight"] = draw.linear(c, c)
    sd[p + "value.weight"] = draw.linear(c, n_ffn)


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Write state_dict the way official .pth files are written (torch.save zip archive)."""
    torch.save(dict(state_dict), path)
