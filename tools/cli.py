"""The `rwkv-edge` command: subcommands, and turning every expected failure into one line on stderr."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..quant.errors import ModelFileError
from . import bench, convert, generate, info, perplexity
from . import chat, serve

COMMANDS = {"generate": generate, "convert": convert, "info": info, "perplexity": perplexity, "bench": bench}
COMMANDS.update({"chat": chat, "serve": serve})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rwkv-edge", description="Run RWKV language models on CPUs.")
    parser.add_argument("--traceback", action="store_true", help="show a full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (ModelFileError, ValueError, OSError) as err:
        if args.traceback:
            traceback.print_exc()
        print(f"rwkv-edge: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a bug must still not print a traceback at users
        if args.traceback:
            traceback.print_exc()
        print(f"rwkv-edge: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --traceback)",
              file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__
