"""rwkv-edge: RWKV language models (v4, v5, v6, v7) on ordinary CPUs, from single-file models.

    import rwkv_edge
    model = rwkv_edge.load("model.pth")
    logits, state = model.forward(model.tokenizer.encode("Hello"), state=None)
"""

from .quant.errors import ModelFileError
from .runtime.generation import Completion, Generation
from .runtime.model import Model, load
from .runtime.prefix_cache import PrefixCache
from .runtime.state import State

__all__ = ["Completion", "Generation", "Model", "ModelFileError", "PrefixCache", "State", "load"]
__version__ = "0.1.0"
