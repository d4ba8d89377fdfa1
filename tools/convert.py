"""`rwkv-edge convert`: any supported model file to one GGUF file, quantized, tokenizer inside."""

from __future__ import annotations

import argparse
import sys
import time

from ..quant.convert import convert
from ..quant.policy import parse_type

HELP = "convert a model (.pth, rwkv.cpp .bin, .safetensors, .gguf) to a GGUF file of the chosen type"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source model file")
    p.add_argument("dst", help="output .gguf file (written atomically; never the source)")
    p.add_argument("--type", default="F16", help="F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0 (default F16)")
    p.add_argument("--tokenizer", default=None,
                   help="world, neox, bytes, none, or a vocab .txt / tokenizer .json (default: by vocab size)")
    p.add_argument("--emb-type", default=None, help="type of the embedding (default: see docs/quantization.md)")
    p.add_argument("--head-type", default=None, help="type of the head (default: see docs/quantization.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is drawn only on a terminal)")


class ProgressBar:
    """One self-overwriting line on stderr; `close` ends it, so an error message starts on a line of its own."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.start = time.perf_counter()
        self.drawn = False

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def __call__(self, done: int, total: int, name: str) -> None:
        self.drawn = True
        width = 30
        filled = int(width * done / max(total, 1))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done / max(total, 1):5.1f}% "
                          f"{done / 2**20:8.1f} MiB  {time.perf_counter() - self.start:6.1f} s  {name[:40]:40s}")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    target = parse_type(args.type)
    emb = parse_type(args.emb_type) if args.emb_type else None
    head = parse_type(args.head_type) if args.head_type else None
    start = time.perf_counter()
    bar = None if args.quiet or not sys.stderr.isatty() else ProgressBar()
    try:
        result = convert(args.src, args.dst, target, tokenizer=args.tokenizer, emb_type=emb, head_type=head,
                         progress=bar)
    finally:
        if bar is not None:
            bar.close()
    types = ", ".join(f"{k} x{v}" for k, v in sorted(result.types.items()))
    print(f"wrote {result.path}: RWKV-{result.spec.version}, {result.n_bytes:,} bytes, {types}; "
          f"{result.quantized_bits_per_weight:.2f} bits/weight in the matrices; "
          f"{time.perf_counter() - start:.1f} s")
    return 0
