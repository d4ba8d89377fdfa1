"""`rwkv-edge convert`: any supported model file to one GGUF file, quantized, tokenizer inside."""

from __future__ import annotations

import argparse
import sys
import time

from ..quant.convert import ConvertResult, convert
from ..quant.ggml_types import GGMLType
from ..quant.policy import parse_type
from . import calibrated

HELP = "convert a model (.pth, rwkv.cpp .bin, .safetensors, .gguf) to a GGUF file of the chosen type"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source model file")
    p.add_argument("dst", help="output .gguf file (written atomically; never the source)")
    p.add_argument("--type", default="F16",
                   help="F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, IQ4_NL, or IQ4_CAL: the calibrated 4-bit "
                        "mode (IQ4_NL matrices rounded against calibration statistics, the most sensitive ones "
                        "Q5_0; docs/quantization.md) (default F16)")
    p.add_argument("--calibration", metavar="TEXT_FILE", default=None,
                   help="IQ4_CAL: UTF-8 text to calibrate on (default: text sampled from the model itself)")
    p.add_argument("--bpw", type=float, default=None,
                   help=f"IQ4_CAL: mean bits per weight of the matrices (default {calibrated.Options.budget_bpw})")
    p.add_argument("--calibration-tokens", type=int, default=None,
                   help=f"IQ4_CAL: tokens of calibration text used (default {calibrated.Options.calibration_tokens})")
    p.add_argument("--sensitivity-tokens", type=int, default=None,
                   help="IQ4_CAL: tokens over which each matrix's cost is measured "
                        f"(default {calibrated.Options.sensitivity_tokens})")
    p.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                   help="IQ4_CAL: calibrate each layer on the output of the quantized layers below "
                        f"(default {'on' if calibrated.Options.sequential else 'off'})")
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
    mode = args.type.upper() == calibrated.MODE
    emb = parse_type(args.emb_type) if args.emb_type else None
    head = parse_type(args.head_type) if args.head_type else None
    given = [f for f in ("calibration", "bpw", "calibration_tokens", "sensitivity_tokens", "sequential")
             if getattr(args, f) is not None]
    if given and not mode:
        raise ValueError(f"--{given[0].replace('_', '-')} applies to --type {calibrated.MODE} only")
    start = time.perf_counter()
    bar = None if args.quiet or not sys.stderr.isatty() else ProgressBar()
    try:
        if mode:
            result = _run_calibrated(args, emb, head, bar, start)
        else:
            result = convert(args.src, args.dst, parse_type(args.type), tokenizer=args.tokenizer, emb_type=emb,
                             head_type=head, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    types = ", ".join(f"{k} x{v}" for k, v in sorted(result.types.items()))
    print(f"wrote {result.path}: RWKV-{result.spec.version}, {result.n_bytes:,} bytes, {types}; "
          f"{result.quantized_bits_per_weight:.2f} bits/weight in the matrices; "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _run_calibrated(
    args: argparse.Namespace, emb: GGMLType | None, head: GGMLType | None, bar: ProgressBar | None, start: float
) -> ConvertResult:
    """The IQ4_CAL path: calibration stages are reported line by line on stderr (unless --quiet)."""
    text = None
    if args.calibration is not None:
        with open(args.calibration, encoding="utf-8") as f:
            text = f.read()
    given = {"budget_bpw": args.bpw, "calibration_tokens": args.calibration_tokens,
             "sensitivity_tokens": args.sensitivity_tokens, "sequential": args.sequential}
    options = calibrated.Options(**{k: v for k, v in given.items() if v is not None})

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)

    result, _ = calibrated.convert_calibrated(
        args.src, args.dst, calibration_text=text, options=options, tokenizer=args.tokenizer,
        emb_type=emb, head_type=head, say=say, progress=bar)
    return result
