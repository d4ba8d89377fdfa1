"""`rwkv-edge perplexity`: score a model on a text file, optionally against a base model (KL, top-1)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..runtime.evaluate import Evaluation, evaluate_text, windows
from ..runtime.model import load

HELP = "perplexity and bits per token on a text; with --kl-base, KL divergence and top-1 agreement"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file to score")
    p.add_argument("--text", required=True, help="UTF-8 text file to score the model on")
    p.add_argument("--ctx", type=int, default=None,
                   help="window length in tokens, each window from a fresh state (default: the whole text)")
    p.add_argument("--kl-base", metavar="OTHER", default=None,
                   help="base model (usually the F32 one) to measure KL(OTHER || MODEL) and top-1 agreement against")
    p.add_argument("--tokenizer", default=None, help="world, neox, bytes or a vocab file (default: by vocab size)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def read_text(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {err.start})") from None


def run(args: argparse.Namespace) -> int:
    if args.ctx is not None and args.ctx < 2:
        raise ValueError(f"--ctx must be at least 2 tokens, got {args.ctx}")
    text = read_text(args.text)
    if not text:
        raise ValueError(f"{args.text}: the text is empty")
    model = load(args.model, tokenizer=args.tokenizer)
    base = load(args.kl_base, tokenizer=args.tokenizer) if args.kl_base else None
    result = evaluate_text(model, text, ctx=args.ctx, base=base)
    if args.json:
        print(json.dumps({"model": args.model, "text": args.text, "kl_base": args.kl_base, **asdict(result)}, indent=2))
    else:
        print(summary(args.model, args.text, args.kl_base, result))
    return 0


def summary(model: str, text: str, kl_base: str | None, r: Evaluation) -> str:
    n_windows = len(windows(r.n_tokens, r.ctx))
    lines = [
        f"model         {model}",
        f"text          {text}: {r.n_tokens:,} tokens in {n_windows} window{'s' * (n_windows > 1)} "
        f"of {r.ctx:,}, {r.n_predicted:,} predicted",
        f"perplexity    {r.ppl:.4f}",
        f"bits/token    {r.bits_per_token:.4f}  (mean NLL {r.nll_mean:.5f} nats)",
    ]
    if kl_base is not None:
        lines += [
            f"base          {kl_base}: perplexity {r.base_ppl:.4f}",
            f"KL(base||m)   mean {r.kl_mean:.6g} nats, 99th percentile {r.kl_p99:.6g}",
            f"top-1 agree   {100 * r.top1_agreement:.2f}%",
        ]
    return "\n".join(lines)
