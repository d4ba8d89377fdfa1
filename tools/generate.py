"""`rwkv-edge generate`: continue a prompt, streaming the text as it is produced."""

from __future__ import annotations

import argparse
import sys

from ..runtime.generation import generate
from ..runtime.model import load
from .default_model import default_model_path

HELP = "generate text from a prompt (without MODEL: the embedded tiny model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model file (.gguf, .pth, rwkv.cpp .bin, .safetensors)")
    p.add_argument("--prompt", "-p", required=True, help="the text to continue")
    p.add_argument("-n", "--max-tokens", type=int, default=100, help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=0.85, help="nucleus sampling mass (default 0.85)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for repeatable output")
    p.add_argument("--tokenizer", default=None, help="world, neox, bytes or a vocab file (default: by vocab size)")


def run(args: argparse.Namespace) -> int:
    if args.max_tokens < 0:
        raise ValueError(f"-n must be >= 0, got {args.max_tokens}")
    model = load(args.model or default_model_path(), tokenizer=args.tokenizer)
    stream = generate(
        model, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed,
    )
    first = next(stream, "")  # a bad prompt fails here, before anything is printed
    out = sys.stdout
    out.write(args.prompt + first)
    out.flush()
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0
