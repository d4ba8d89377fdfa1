"""quant/hf_names.py: official checkpoints survive a round trip through the Hugging Face layouts.

The official -> HF conversions below are written from the upstream converters' rules
(transformers' `convert_rwkv_checkpoint_to_hf.py` for `rwkv.*`, fla's `utils/convert_from_rwkv7.py`
for RWKV-7), not from the code under test; the files go through safetensors on disk and back
through `read_safetensors`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rwkv_edge.quant.errors import ModelFileError
from rwkv_edge.quant.ggml_types import GGMLType, RawTensor
from rwkv_edge.quant.hf_names import hf_to_official
from rwkv_edge.quant.pth_file import read_pth
from rwkv_edge.quant.safetensors_file import read_safetensors

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
QTYPES = {torch.float32: GGMLType.F32, torch.float16: GGMLType.F16, torch.bfloat16: GGMLType.BF16}


# ---- official -> HF, as the upstream converters do it ----------------------------------------


def to_rwkv_hf(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers RwkvForCausalLM (v4) and RWKV/*-HF repos (v5, v6): a prefix and renames."""
    modules = {"att": "attention", "ffn": "feed_forward", "ln0": "pre_ln"}
    mixes = {
        "time_mix_k": "time_mix_key",
        "time_mix_v": "time_mix_value",
        "time_mix_r": "time_mix_receptance",
        "time_mix_g": "time_mix_gate",
    }
    hf = {}
    for name, t in official.items():
        if name == "head.weight":
            hf[name] = t
            continue
        parts = name.split(".")
        if parts[0] == "emb":
            parts[0] = "embeddings"
        if parts[0] == "blocks":
            parts[2] = modules.get(parts[2], parts[2])
            parts[3] = mixes.get(parts[3], parts[3])
        hf["rwkv." + ".".join(parts)] = t
    return hf


def to_fla(
    official: dict[str, torch.Tensor], *, fused_mix: bool = False
) -> dict[str, torch.Tensor]:
    """fla-hub RWKV-7: projections renamed, LoRAs as Sequential(Linear, act, Linear), [C] mixes."""
    top = {
        "emb.weight": "model.embeddings.weight",
        "ln_out.weight": "model.norm.weight",
        "ln_out.bias": "model.norm.bias",
        "head.weight": "lm_head.weight",
    }
    parts = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
    proj = {
        "receptance": "r_proj",
        "key": "k_proj",
        "value": "v_proj",
        "output": "o_proj",
        "ln_x": "g_norm",
    }
    lora = {"0": "2.bias", "1": "0.weight", "2": "2.weight"}
    hf = {}
    for name, t in official.items():
        if name in top:
            hf[top[name]] = t
            continue
        _, layer, part, rest = name.split(".", 3)
        if layer == "0" and part == "att" and rest in ("v0", "v1", "v2"):
            continue  # fla has no value-residual LoRA in layer 0
        if part == "att" and re.fullmatch(r"[wvag][012]", rest):
            which, num = rest
            hf_rest = f"{which}_lora.lora.{lora[num]}"
            t = t.t() if num in "12" else t
        elif part == "att" and rest.split(".")[0] in proj:
            head, _, tail = rest.partition(".")
            hf_rest = f"{proj[head]}.{tail}"
        else:
            hf_rest = rest
        if t.shape == (1, 1, t.shape[-1]) and not (part == "att" and rest.startswith("x_")):
            t = t.reshape(-1)  # fla keeps k_k, k_a, the LoRA biases and ffn.x_k as [C]
        hf[f"model.layers.{layer}.{parts[part]}.{hf_rest}"] = t
    if fused_mix:
        # older fla checkpoints: one x_x [6, C], rows r, w, k, v, a, g
        for layer in sorted({n.split(".")[2] for n in hf if n.startswith("model.layers.")}):
            prefix = f"model.layers.{layer}.attn."
            hf[prefix + "x_x"] = torch.stack(
                [hf.pop(prefix + f"x_{m}").reshape(-1) for m in "rwkvag"]
            )
    return hf


# ---- helpers --------------------------------------------------------------------------------


def torch_bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def through_safetensors(hf: dict[str, torch.Tensor], path: Path) -> dict[str, RawTensor]:
    save_file({k: v.contiguous() for k, v in hf.items()}, str(path), metadata={"format": "pt"})
    tensors, _ = read_safetensors(path)
    return tensors


def assert_official(ours: dict[str, RawTensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(expected)
    for name, t in expected.items():
        got = ours[name]
        assert got.qtype == QTYPES[t.dtype], name
        assert got.shape == tuple(t.shape), name
        assert got.data.shape == tuple(t.shape), name
        assert np.array_equal(got.data, torch_bits(t)), name


def is_memmap_view(array: np.ndarray) -> bool:
    base = array
    while base is not None:
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return False


def random_v7(
    n_layer: int,
    c: int,
    head: int,
    ranks: tuple[int, int, int, int],
    dtype: torch.dtype,
    *,
    layer0_v: bool,
) -> dict[str, torch.Tensor]:
    """An official x070 state dict of the documented shapes, with LoRA ranks (w, a, v, g)."""
    gen = torch.Generator().manual_seed(7)
    r = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    d_w, d_a, d_v, d_g = ranks
    sd = {"emb.weight": r(50, c)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        if i == 0:
            sd.update({b + "ln0.weight": r(c), b + "ln0.bias": r(c)})
        sd.update(
            {
                b + "ln1.weight": r(c),
                b + "ln1.bias": r(c),
                b + "ln2.weight": r(c),
                b + "ln2.bias": r(c),
            }
        )
        sd.update({b + f"att.x_{m}": r(1, 1, c) for m in "rwkvag"})
        sd.update({b + "att.w1": r(c, d_w), b + "att.w2": r(d_w, c), b + "att.w0": r(1, 1, c)})
        sd.update({b + "att.a1": r(c, d_a), b + "att.a2": r(d_a, c), b + "att.a0": r(1, 1, c)})
        if i > 0 or layer0_v:
            sd.update({b + "att.v1": r(c, d_v), b + "att.v2": r(d_v, c), b + "att.v0": r(1, 1, c)})
        sd.update({b + "att.g1": r(c, d_g), b + "att.g2": r(d_g, c)})
        sd.update(
            {
                b + "att.k_k": r(1, 1, c),
                b + "att.k_a": r(1, 1, c),
                b + "att.r_k": r(head, c // head),
            }
        )
        sd.update(
            {b + f"att.{n}.weight": r(c, c) for n in ("receptance", "key", "value", "output")}
        )
        sd.update({b + "att.ln_x.weight": r(c), b + "att.ln_x.bias": r(c)})
        sd.update(
            {
                b + "ffn.x_k": r(1, 1, c),
                b + "ffn.key.weight": r(4 * c, c),
                b + "ffn.value.weight": r(c, 4 * c),
            }
        )
    sd.update({"ln_out.weight": r(c), "ln_out.bias": r(c), "head.weight": r(50, c)})
    return sd


# ---- tests ----------------------------------------------------------------------------------


def test_converters_produce_the_upstream_names() -> None:
    # Spot checks of the test's own converters against names listed in ecosystem.md §2.4 and §3.
    official = {
        n: torch.zeros(1)
        for n in (
            "emb.weight",
            "blocks.0.ln0.weight",
            "blocks.3.att.time_mix_k",
            "blocks.3.att.time_mix_g",
            "blocks.3.ffn.time_mix_r",
            "blocks.3.att.time_maa_w1",
            "blocks.3.att.key.weight",
            "ln_out.bias",
            "head.weight",
        )
    }
    assert sorted(to_rwkv_hf(official)) == sorted(
        [
            "rwkv.embeddings.weight",
            "rwkv.blocks.0.pre_ln.weight",
            "rwkv.blocks.3.attention.time_mix_key",
            "rwkv.blocks.3.attention.time_mix_gate",
            "rwkv.blocks.3.feed_forward.time_mix_receptance",
            "rwkv.blocks.3.attention.time_maa_w1",
            "rwkv.blocks.3.attention.key.weight",
            "rwkv.ln_out.bias",
            "head.weight",
        ]
    )
    v7 = random_v7(2, 64, 1, (32, 32, 32, 32), torch.float32, layer0_v=True)
    fla = to_fla(v7)
    assert fla["model.layers.1.attn.w_lora.lora.0.weight"].shape == (
        32,
        64,
    )  # nn.Linear(C, D): [D, C]
    assert fla["model.layers.1.attn.v_lora.lora.2.bias"].shape == (64,)
    assert fla["model.layers.1.attn.k_k"].shape == (64,)
    assert fla["model.layers.1.attn.x_r"].shape == (1, 1, 64)
    assert "model.layers.0.attn.v_lora.lora.0.weight" not in fla
    assert {
        "model.layers.0.pre_norm.bias",
        "model.layers.1.attn.g_norm.weight",
        "lm_head.weight",
        "model.layers.1.attn.o_proj.weight",
        "model.norm.weight",
    } <= set(fla)


@pytest.mark.parametrize("name", ["tiny-4v0", "tiny-5v1", "tiny-5v2", "tiny-6v0"])
def test_rwkv_hf_round_trip_of_fixtures(tmp_path: Path, name: str) -> None:
    official = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    hf = through_safetensors(to_rwkv_hf(official), tmp_path / "model.safetensors")
    assert "rwkv.embeddings.weight" in hf and "emb.weight" not in hf
    ours = hf_to_official(hf, tmp_path / "model.safetensors")
    assert_official(ours, official)
    for key in (
        "emb.weight",
        "head.weight",
        "blocks.1.att.key.weight",
        "blocks.1.ffn.value.weight",
    ):
        assert is_memmap_view(ours[key].data), key


def test_fla_round_trip_of_fixture(tmp_path: Path) -> None:
    official = torch.load(FIXTURES / "tiny-7v0.pth", weights_only=True)
    hf = through_safetensors(to_fla(official), tmp_path / "model.safetensors")
    ours = hf_to_official(hf, tmp_path / "model.safetensors")
    assert_official(ours, official)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fused_mix", [False, True])
def test_fla_round_trip_distinct_ranks(tmp_path: Path, dtype: torch.dtype, fused_mix: bool) -> None:
    official = random_v7(3, 128, 2, (32, 48, 16, 64), dtype, layer0_v=True)
    hf = through_safetensors(to_fla(official, fused_mix=fused_mix), tmp_path / "m.safetensors")
    assert ("model.layers.1.attn.x_x" in hf) == fused_mix
    ours = hf_to_official(hf, tmp_path / "m.safetensors")
    # layer 0's v0/v1/v2 are unused upstream and absent from fla files (and from rwkv.cpp files)
    expected = {
        k: v
        for k, v in official.items()
        if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
    }
    assert_official(ours, expected)
    for key in (
        "emb.weight",
        "head.weight",
        "blocks.2.att.receptance.weight",
        "blocks.2.ffn.key.weight",
        "blocks.2.att.x_g",
        "blocks.2.att.w0",
    ):
        assert is_memmap_view(ours[key].data), key


def test_v6_time_decay_in_head_shape_is_reshaped(tmp_path: Path) -> None:
    official = torch.load(FIXTURES / "tiny-6v0.pth", weights_only=True)
    hf = to_rwkv_hf(official)
    # The RWKV6 HF init writes time_decay as [H, N]; accept it and give back the official [1, 1, C].
    hf["rwkv.blocks.0.attention.time_decay"] = hf["rwkv.blocks.0.attention.time_decay"].reshape(
        16, 8
    )
    ours = hf_to_official(
        through_safetensors(hf, tmp_path / "m.safetensors"), tmp_path / "m.safetensors"
    )
    assert_official(ours, official)


def test_official_checkpoint_passes_through(tmp_path: Path) -> None:
    tensors = read_pth(FIXTURES / "tiny-7v0.pth")
    out = hf_to_official(tensors, FIXTURES / "tiny-7v0.pth")
    assert out == tensors
    assert all(out[k] is tensors[k] for k in tensors)
    official = {"emb.weight": torch.randn(5, 4), "head.weight": torch.randn(5, 4)}
    st_tensors = through_safetensors(official, tmp_path / "o.safetensors")
    assert_official(hf_to_official(st_tensors, tmp_path / "o.safetensors"), official)


def test_unknown_layout(tmp_path: Path) -> None:
    tensors = through_safetensors(
        {"transformer.wte.weight": torch.ones(2, 2)}, tmp_path / "g.safetensors"
    )
    with pytest.raises(ModelFileError, match="unknown tensor layout"):
        hf_to_official(tensors, tmp_path / "g.safetensors")


@pytest.mark.parametrize(
    "extra",
    [
        "rwkv.blocks.0.attention.time_mix_query",
        "rwkv.blocks.0.mystery.weight",
        "rwkv.pos_emb",
        "rwkv.blocks.0.ln1.scale",
    ],
)
def test_unexpected_rwkv_hf_tensor(tmp_path: Path, extra: str) -> None:
    hf = to_rwkv_hf(torch.load(FIXTURES / "tiny-4v0.pth", weights_only=True))
    hf[extra] = torch.ones(3)
    tensors = through_safetensors(hf, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=re.escape(f"unexpected tensor '{extra}'")):
        hf_to_official(tensors, tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    "extra",
    [
        "model.layers.1.attn.g_lora.lora.2.bias",  # the gate LoRA has no bias
        "model.layers.1.attn.q_proj.weight",  # a hybrid attention layer
        "model.layers.1.attn.x_q",
        "model.layers.1.ffn.receptance.weight",  # v7 has no ffn receptance
    ],
)
def test_unexpected_fla_tensor(tmp_path: Path, extra: str) -> None:
    hf = to_fla(torch.load(FIXTURES / "tiny-7v0.pth", weights_only=True))
    hf[extra] = torch.ones(64)
    tensors = through_safetensors(hf, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=re.escape(f"unexpected tensor '{extra}'")):
        hf_to_official(tensors, tmp_path / "m.safetensors")


def test_bad_fused_mix_shape(tmp_path: Path) -> None:
    hf = to_fla(
        random_v7(2, 64, 1, (32, 32, 32, 32), torch.float32, layer0_v=False), fused_mix=True
    )
    hf["model.layers.1.attn.x_x"] = hf["model.layers.1.attn.x_x"][:5]
    tensors = through_safetensors(hf, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=r"x_x' has shape \(5, 64\)"):
        hf_to_official(tensors, tmp_path / "m.safetensors")


def test_missing_head_and_tied_config(tmp_path: Path) -> None:
    official = torch.load(FIXTURES / "tiny-4v0.pth", weights_only=True)
    hf = to_rwkv_hf(official)
    del hf["head.weight"]
    tensors = through_safetensors(hf, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match="no output head"):
        hf_to_official(tensors, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match="no output head"):
        hf_to_official(tensors, tmp_path / "m.safetensors", {"tie_word_embeddings": False})
    tied = hf_to_official(tensors, tmp_path / "m.safetensors", {"tie_word_embeddings": True})
    assert tied["head.weight"] is tied["emb.weight"]
    assert np.array_equal(tied["head.weight"].data, torch_bits(official["emb.weight"]))


def test_config_is_optional_and_ignored_otherwise(tmp_path: Path) -> None:
    official = torch.load(FIXTURES / "tiny-7v0.pth", weights_only=True)
    tensors = through_safetensors(to_fla(official), tmp_path / "m.safetensors")
    config = {"architectures": ["RWKV7ForCausalLM"], "hidden_size": 64, "head_dim": 64}
    assert_official(hf_to_official(tensors, tmp_path / "m.safetensors", config), official)


def test_duplicate_and_empty_tensors(tmp_path: Path) -> None:
    hf = to_fla(
        random_v7(2, 64, 1, (32, 32, 32, 32), torch.float32, layer0_v=False), fused_mix=True
    )
    hf["model.layers.1.attn.x_w"] = torch.ones(1, 1, 64)
    tensors = through_safetensors(hf, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=r"two tensors map to 'blocks\.1\.att\.x_w'"):
        hf_to_official(tensors, tmp_path / "m.safetensors")
    hf = to_fla(random_v7(2, 64, 1, (32, 32, 32, 32), torch.float32, layer0_v=False))
    hf["model.layers.1.attn.k_k"] = torch.ones(0)
    tensors = through_safetensors(hf, tmp_path / "e.safetensors")
    with pytest.raises(ModelFileError, match=r"tensor 'model\.layers\.1\.attn\.k_k' is empty"):
        hf_to_official(tensors, tmp_path / "e.safetensors")
