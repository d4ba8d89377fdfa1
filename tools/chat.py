"""`rwkv-edge chat`: an interactive chat in the RWKV World format, the history kept in the model's state.

Each turn feeds only its new text, "User: {message}\\n\\nAssistant:", and the reply runs to the next
blank line, as in ChatRWKV's chat demo; the blank line is fed too, so the state always ends on a
complete turn. Ctrl-C during a reply stops the reply (what was said so far stays in the history);
Ctrl-C or end-of-input at the prompt leaves.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..quant.errors import ModelFileError
from ..runtime.generation import END_TOKEN
from ..runtime.model import load
from ..runtime.sampling import SamplingSettings
from ..runtime.state import State
from ..runtime.state_file import MAGIC as STATE_MAGIC
from .default_model import default_model_path
from .openai_protocol import CHAT_STOP, normalize_turn

if TYPE_CHECKING:
    from ..runtime.model import Model

HELP = "chat with a model in the terminal (RWKV World format; /help lists the commands)"
COMMANDS_HELP = """\
/reset        forget the conversation
/save FILE    save the conversation's state to FILE
/load FILE    continue from a state saved with /save (or start from a state-tuning .pth)
/help         this list
/quit         leave (so do Ctrl-C and Ctrl-D at the prompt)"""

TUNING_SUFFIXES = (".pth", ".safetensors")  # state-tuning files; anything else is a saved state

# ChatRWKV's chat demo settings (API_DEMO_CHAT.py): a low top_p, and penalties against repeating itself.
CHAT_SAMPLING = {"temperature": 1.0, "top_p": 0.3, "presence_penalty": 0.5, "frequency_penalty": 0.5,
                 "penalty_decay": 0.996}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model file (without: the embedded tiny model)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: the physical cores)")
    p.add_argument("--tokenizer", default=None, help="world, neox, bytes or a vocab file (default: by vocab size)")
    p.add_argument("--max-tokens", type=int, default=500, help="longest reply in tokens (default 500)")
    p.add_argument("--temperature", type=float, default=CHAT_SAMPLING["temperature"],
                   help="sampling temperature (0: greedy; default 1.0)")
    p.add_argument("--top-p", type=float, default=CHAT_SAMPLING["top_p"], help="nucleus sampling mass (default 0.3)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--presence-penalty", type=float, default=CHAT_SAMPLING["presence_penalty"],
                   help="penalty for any token already said (default 0.5)")
    p.add_argument("--frequency-penalty", type=float, default=CHAT_SAMPLING["frequency_penalty"],
                   help="penalty per repetition of a token (default 0.5)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable conversation")
    p.add_argument("--system", default=None, help="a system prompt fed before the conversation")
    p.add_argument("--state", default=None,
                   help="start every conversation from this state: one saved by /save, or a state-tuning .pth")


def run(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    model = load(args.model or default_model_path(), tokenizer=args.tokenizer, threads=args.threads)
    if model.tokenizer is None:
        raise ValueError(f"{model.path}: this model has no tokenizer, so it cannot chat")
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                "presence_penalty": args.presence_penalty, "frequency_penalty": args.frequency_penalty,
                "penalty_decay": CHAT_SAMPLING["penalty_decay"]}
    initial = read_state(args.state, model) if args.state else None
    session = ChatSession(model, max_tokens=args.max_tokens, sampling=sampling, seed=args.seed, system=args.system,
                          initial_state=initial)
    if sys.stdin.isatty():
        import readline  # noqa: F401 - imported for its side effect: line editing and history in input()
    return repl(session, input, sys.stdout)


@dataclass(frozen=True)
class Reply:
    text: str  # what the assistant said (without the leading space and the closing blank line)
    finish_reason: str  # "stop" (it ended its turn), "length" (max_tokens) or "interrupted" (Ctrl-C)


class ChatSession:
    """A conversation: its state, and the exact text fed into that state since the last reset or load."""

    def __init__(
        self, model: Model, *, max_tokens: int = 500, sampling: dict[str, Any] | None = None,
        seed: int | None = None, system: str | None = None, initial_state: State | None = None,
    ) -> None:
        """initial_state: where every conversation starts (e.g. a state-tuned one); None: a fresh state."""
        self.model = model
        self.initial_state = initial_state
        self.max_tokens = max_tokens
        self.sampling = dict(CHAT_SAMPLING if sampling is None else sampling)
        SamplingSettings(**self.sampling).check(model.spec.n_vocab)  # now, not at the first message
        self.seed = seed
        self.system = normalize_turn(system) if system else None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation: back to the initial state and the system prompt, if any."""
        self.state: State | None = self.initial_state.copy() if self.initial_state is not None else None
        self.turns = 0
        self._fed: list[str] = []  # the texts fed into self.state, in order
        if self.system:
            self._feed(f"System: {self.system}\n\n")

    def transcript(self) -> str:
        """Everything fed into the state since the last reset or load, as one string."""
        return "".join(self._fed)

    def save(self, path: str | os.PathLike[str]) -> None:
        if self.state is None:
            raise ValueError("nothing to save yet: the conversation is empty")
        self.state.save(path, self.model)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Continue from a saved state, or start from a state-tuning file (.pth, .safetensors).

        The transcript starts afresh, as the text behind the state is unknown.
        """
        self.state = read_state(path, self.model)
        self._fed = []

    def ask(self, message: str, on_piece: Callable[[str], None] = lambda piece: None) -> Reply:
        """Say `message`, stream the reply through on_piece, and add both to the history.

        A KeyboardInterrupt during the reply ends it early; the part already shown stays in the history.
        """
        message = normalize_turn(message)
        if not message:
            raise ValueError("the message is empty")
        prompt = f"User: {message}\n\nAssistant:"
        seed = None if self.seed is None else self.seed + self.turns
        before = self.state
        # As in ChatRWKV, the end-of-text token is banned: a turn ends with its blank line.
        ban = {END_TOKEN: -math.inf} if self.model.tokenizer.name in ("world", "neox") else None
        gen = self.model.generate(prompt, state=before, max_tokens=self.max_tokens, stop=[CHAT_STOP], seed=seed,
                                  logit_bias=ban, **self.sampling)
        shown: list[str] = []
        try:
            for piece in gen:
                shown.append(piece)
                on_piece(piece)
        except KeyboardInterrupt:
            gen.close()
            # The interrupt may have landed inside a forward pass, so gen.state can be half-updated:
            # rebuild the turn from the state before it. A second Ctrl-C here drops the turn instead.
            text = "".join(shown)
            self._feed(prompt + text + CHAT_STOP, before)
            self.turns += 1
            return Reply(text.lstrip(" "), "interrupted")
        self._settle(prompt, gen, before)
        self.turns += 1
        return Reply("".join(shown).lstrip(" "), gen.finish_reason)

    def _settle(self, prompt: str, gen: Any, before: State | None) -> None:
        """Take the generation's state, closing the turn with the blank line if that was not fed yet.

        Works on bytes: a byte-level model's reply may stop inside a UTF-8 character.
        """
        tokenizer = self.model.tokenizer
        sampled = tokenizer.decode_bytes(gen.tokens)  # every token fed after the prompt
        stop = CHAT_STOP.encode()
        end = sampled.find(stop)
        wanted = (sampled if end < 0 else sampled[:end]) + stop
        if wanted.startswith(sampled):
            self.state = gen.state
            self._fed.append(prompt + sampled.decode("utf-8", errors="replace"))
            if len(wanted) > len(sampled):
                self._feed(wanted[len(sampled):].decode("utf-8", errors="replace"))
        else:
            # The last token ran past the blank line (a token like "\n\nUs"): a state cannot be cut
            # back, so the turn is fed again from where it began.
            self._feed(prompt + wanted.decode("utf-8", errors="replace"), before)

    def _feed(self, text: str, start: State | None | bool = True) -> None:
        """Feed text after `start` (True: the current state) and make that the current state."""
        base = self.state if start is True else start
        _, self.state = self.model.forward(self.model.tokenizer.encode(text), base)
        self._fed.append(text)


def read_state(path: str | os.PathLike[str], model: Model) -> State:
    """A state saved by /save (State.save), or the initial state in a state-tuning file."""
    if Path(path).suffix.lower() in TUNING_SUFFIXES and not _is_state_file(path):
        return State.from_tuning(path, model)
    return State.load(path, model)


def _is_state_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file begins as State.save writes (whatever its name: /save x.pth is allowed)."""
    if not os.path.isfile(path):  # opening a FIFO would block
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(STATE_MAGIC)) == STATE_MAGIC
    except OSError:
        return False


def repl(session: ChatSession, read_line: Callable[[str], str], out: TextIO) -> int:
    """The interactive loop: read_line(prompt) returns a line, raising EOFError at the end of input."""
    out.write("Chat in the RWKV World format; /help lists the commands.\n\n")
    out.flush()
    while True:
        try:
            line = read_line("User: ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        if line.strip().startswith("/"):
            if not _command(session, line.strip(), out):
                return 0
            continue
        if not normalize_turn(line):
            continue
        out.write("\nAssistant:")
        out.flush()

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        try:
            reply = session.ask(line, show)
        except KeyboardInterrupt:
            out.write(" [dropped]\n\n")
            continue
        out.write(" [stopped]\n\n" if reply.finish_reason == "interrupted" else "\n\n")
        out.flush()


def _command(session: ChatSession, line: str, out: TextIO) -> bool:
    """Run one /command; False to leave."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            out.write(COMMANDS_HELP + "\n\n")
        elif name == "/reset":
            session.reset()
            out.write("[conversation reset]\n\n")
        elif name in ("/save", "/load") and not arg:
            out.write(f"[{name} needs a file name]\n\n")
        elif name == "/save":
            session.save(arg)
            out.write(f"[state saved to {arg}]\n\n")
        elif name == "/load":
            session.load(arg)
            out.write(f"[state loaded from {arg}]\n\n")
        else:
            out.write(f"[unknown command {name}; /help lists the commands]\n\n")
    except (ModelFileError, ValueError, OSError) as err:
        out.write(f"[error: {_one_line(err)}]\n\n")
    out.flush()
    return True


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__
