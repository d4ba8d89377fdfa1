"""Mixed precision: which tensors get a wider type, within a bits-per-weight budget, given what each
upgrade is expected to save (pure arithmetic; the savings come from measurements elsewhere)."""

from __future__ import annotations

from collections.abc import Mapping

from .ggml_types import BLOCK_SIZES, GGMLType


def bits_per_weight(qtype: GGMLType) -> float:
    block, size = BLOCK_SIZES[qtype]
    return size * 8 / block


def allocate_types(
    sizes: Mapping[str, int],
    gains: Mapping[str, Mapping[GGMLType, float]],
    *,
    base: GGMLType,
    budget_bpw: float,
) -> dict[str, GGMLType]:
    """Give each tensor `base`, then upgrade tensors greedily, most saved per extra bit first, while the
    mean bits per weight over all `sizes` stays within `budget_bpw`.

    sizes: weights per tensor. gains: per tensor, what each upgrade type would save over `base` (e.g. the
    KL it removes). A tensor is upgraded at most once; an upgrade that no longer fits is skipped and the
    next best is tried, so the budget is filled as far as whole tensors allow.
    """
    total = sum(sizes.values())
    spare = (budget_bpw - bits_per_weight(base)) * total
    if spare < -1e-9 * total:
        raise ValueError(f"a budget of {budget_bpw} bits per weight is below {base.name}'s {bits_per_weight(base)}")
    choice = {name: base for name in sizes}
    options = []  # (saved per extra bit, name, type, extra bits)
    for name, per_type in gains.items():
        if name not in sizes:
            raise ValueError(f"{name} has gains but no size")
        for qtype, gain in per_type.items():
            extra = (bits_per_weight(qtype) - bits_per_weight(base)) * sizes[name]
            if extra > 0 and gain > 0:
                options.append((gain / extra, name, qtype, extra))
    slack = 1e-9 * total  # a budget given as a decimal, e.g. 4.6, is not exact in binary
    for _, name, qtype, extra in sorted(options, key=lambda o: (-o[0], o[1])):
        if choice[name] == base and extra <= spare + slack:
            choice[name] = qtype
            spare -= extra
    return choice


def mean_bpw(sizes: Mapping[str, int], types: Mapping[str, GGMLType]) -> float:
    """Bits per weight averaged over the tensors in `sizes`."""
    return sum(bits_per_weight(types[name]) * n for name, n in sizes.items()) / sum(sizes.values())
