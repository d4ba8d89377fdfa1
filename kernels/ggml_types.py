"""The weight types the kernels compute on: ggml's type ids and block geometry.

The kernels import nothing from the rest of the package, so the table lives here, in the lowest layer;
quant.ggml_types re-exports it for the file formats.
"""

from __future__ import annotations

from enum import IntEnum
from types import MappingProxyType


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    IQ4_NL = 20
    BF16 = 30


# type -> (elements per block, bytes per block), as ggml's GGML_QUANT_SIZES.
BLOCK_SIZES = MappingProxyType({
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.IQ4_NL: (32, 18),
})

# IQ4_NL's 16 values (ggml's kvalues_iq4nl): code c of a block stands for d * IQ4_NL_VALUES[c]. Spaced
# closer near zero, where trained weights cluster, than Q4_0's even grid.
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
