"""`rwkv-edge generate`: continue a prompt, streaming the text as it is produced."""

from __future__ import annotations

import argparse
import sys

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
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below this fraction of the top one")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="subtract from tokens already generated")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="subtract per (decaying) occurrence")
    p.add_argument("--stop", action="append", default=None, help="stop at this text (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for repeatable output")
    p.add_argument("--tokenizer", default=None, help="world, neox, bytes or a vocab file (default: by vocab size)")


def run(args: argparse.Namespace) -> int:
    if args.max_tokens < 0:
        raise ValueError(f"-n must be >= 0, got {args.max_tokens}")
    model = load(args.model or default_model_path(), tokenizer=args.tokenizer)
    stream = model.generate(
        args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, min_p=args.min_p, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, stop=args.stop, seed=args.seed,
    )
    first = next(stream, "")  # runs the prompt: a failure there prints nothing
    out = sys.stdout
    out.write(args.prompt + first)
    out.flush()
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0
