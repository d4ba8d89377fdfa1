"""`rwkv-edge serve`: an OpenAI-compatible HTTP server (completions, chat completions, models, health).

The command line and start-up; the server itself is tools/http_api.py, imported when it runs (the http
stack is a few MiB that `rwkv-edge bench` and the other commands need not carry).
"""

from __future__ import annotations

import argparse
import sys

from ..runtime.model import load
from .default_model import default_model_path
from .openai_protocol import Limits

HELP = "serve a model over an OpenAI-compatible HTTP API"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model file (without: the embedded tiny model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: no key)")
    p.add_argument("--api-key-file", default=None,
                   help="the same, the key read from the first line of a file (keeps it out of `ps`)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the file name stem)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: the physical cores)")
    p.add_argument("--tokenizer", default=None, help="world, neox, bytes or a vocab file (default: by vocab size)")
    p.add_argument("--max-tokens-limit", type=int, default=Limits.max_tokens,
                   help=f"largest max_tokens a request may ask for (default {Limits.max_tokens})")
    p.add_argument("--timeout", type=float, default=Limits.timeout,
                   help=f"seconds a request may take, queueing included (default {Limits.timeout:g})")
    p.add_argument("--max-body", type=int, default=Limits.max_body,
                   help=f"largest request body in bytes (default {Limits.max_body})")
    p.add_argument("--cache-mib", type=float, default=64.0,
                   help="memory for cached prompt-prefix states, MiB (default 64; 0: no cache)")
    p.add_argument("--max-active", type=int, default=0,
                   help="requests decoded at once, interleaved token by token (default 0: all; 1: a queue)")
    p.add_argument("--max-pending", type=int, default=256,
                   help="requests queued or running before new ones get 429 (default 256)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")


def run(args: argparse.Namespace) -> int:
    limits = Limits(max_tokens=args.max_tokens_limit, max_body=args.max_body, timeout=args.timeout)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    api_key = args.api_key
    if args.api_key_file is not None:
        with open(args.api_key_file, encoding="utf-8") as f:
            api_key = f.readline().strip()
        if not api_key:
            raise ValueError(f"{args.api_key_file}: the first line holds no API key")
    from .http_api import ApiServer

    path = args.model or default_model_path()
    model = load(path, tokenizer=args.tokenizer, threads=args.threads)
    server = ApiServer(
        model, host=args.host, port=args.port, model_name=args.model_name, api_key=api_key, limits=limits,
        cache_mib=args.cache_mib, max_active=args.max_active, max_pending=args.max_pending, quiet=args.quiet,
    )
    print(f"rwkv-edge: serving {server.model_name} at {server.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


