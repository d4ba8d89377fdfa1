"""Which storage type each tensor gets when a model is quantized.

Like rwkv.cpp and llama.cpp: only the large Linear matrices take the requested type; vectors and
decay/bonus/mix tensors (small, and feeding exponentials) stay F32. The 2-D LoRA matrices of v6/v7 are
F16 below F32 (as llama.cpp stores them: half the bytes a decode step reads there, and F16 rounding is
far below any quantized matrix's error), F32 in F32 files. The embedding and the head have their own
defaults (docs/quantization.md gives the measurements behind them), overridable.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ggml_types import BLOCK_SIZES, GGMLType
from .gguf_layout import storage_type_of

TYPE_NAMES = {t.name: t for t in GGMLType}
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def parse_type(name: str) -> GGMLType:
    try:
        return TYPE_NAMES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown type {name!r}; choose one of {', '.join(TYPE_NAMES)}") from None


@dataclass(frozen=True)
class Policy:
    """The requested type for the big matrices, and the types of the embedding and head."""

    matrix: GGMLType
    emb: GGMLType
    head: GGMLType

    @classmethod
    def for_type(cls, target: GGMLType, emb: GGMLType | None = None, head: GGMLType | None = None) -> "Policy":
        # A float target keeps everything at that precision; below 8 bits, the head and embedding stay at
        # Q8_0: the head is a large share of small models' error (docs/quantization.md), the embedding is
        # read one row per token so its size costs memory, not time.
        default = target if target in FLOAT_TYPES or target == GGMLType.Q8_0 else GGMLType.Q8_0
        return cls(target, emb or default, head or default)

    def type_for(self, official_name: str, shape: tuple[int, ...]) -> GGMLType:
        role = storage_type_of(official_name)
        if role == "lora" and len(shape) == 2:
            return GGMLType.F32 if self.matrix == GGMLType.F32 else GGMLType.F16
        if role in ("small", "lora") or len(shape) != 2:
            return GGMLType.F32
        qtype = {"matrix": self.matrix, "emb": self.emb, "head": self.head}[role]
        if shape[-1] % BLOCK_SIZES[qtype][0]:
            # Rows that are not whole blocks cannot be quantized; llama.cpp falls back the same way.
            return GGMLType.F16
        return qtype
