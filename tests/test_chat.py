"""`rwkv-edge chat`: the World transcript format, the history carried in the state (only new text fed),
Ctrl-C during a reply, /save and /load, and the REPL end to end in a subprocess.

Truth: greedy decoding by hand with Model.forward, and the state of feeding the transcript from scratch.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rwkv_edge
from conftest import fixture_path
from rwkv_edge.tools.chat import ChatSession, repl

GREEDY = {"temperature": 0.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


@pytest.fixture(scope="module")
def model() -> rwkv_edge.Model:
    return rwkv_edge.load(fixture_path("reference", "tiny-7v0.pth"))


def greedy_ids(model, state, text: str, n: int) -> tuple[list[int], object]:
    """Feed text after state, then n argmax tokens one at a time: (the tokens, the state after them)."""
    logits, state = model.forward(model.tokenizer.encode(text), state)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits, state = model.forward([out[-1]], state)
    return out, state


def test_two_turns_give_the_world_transcript_and_keep_the_history_in_the_state(model):
    session = ChatSession(model, max_tokens=8, sampling=GREEDY)
    first = session.ask("Hello there")
    second = session.ask("And\n\n\nthen?  ")

    # The same conversation by hand: each prompt fed once, each reply token fed as it was chosen,
    # then the blank line that closes the turn.
    ids1, state = greedy_ids(model, None, "User: Hello there\n\nAssistant:", 8)
    _, state = model.forward(model.tokenizer.encode("\n\n"), state)
    ids2, state = greedy_ids(model, state, "User: And\nthen?\n\nAssistant:", 8)
    _, state = model.forward(model.tokenizer.encode("\n\n"), state)
    reply1, reply2 = model.tokenizer.decode(ids1), model.tokenizer.decode(ids2)
    assert "\n\n" not in reply1 + reply2  # the tiny model never ends its turn in 8 greedy tokens
    assert (first.text, second.text) == (reply1.lstrip(" "), reply2.lstrip(" "))
    assert first.finish_reason == second.finish_reason == "length"
    assert session.transcript() == (f"User: Hello there\n\nAssistant:{reply1}\n\n"
                                    f"User: And\nthen?\n\nAssistant:{reply2}\n\n")

    probe = model.tokenizer.encode("User:")
    logits, _ = model.forward(probe, session.state)
    expected, _ = model.forward(probe, state)
    assert np.array_equal(logits, expected)
    # Feeding the whole transcript at once takes other rounding paths (matrix vs vector kernels), but
    # must land on the same state up to float rounding: nothing was fed twice or left out.
    scratch, _ = model.forward(model.tokenizer.encode(session.transcript() + "User:"))
    np.testing.assert_allclose(logits, scratch, atol=1e-4, rtol=0)


def test_ctrl_c_during_a_reply_keeps_what_was_said(model):
    session = ChatSession(model, max_tokens=8, sampling=GREEDY)
    session.ask("Hi")
    before = session.state.copy()
    shown = []

    def interrupt_after_five(piece: str) -> None:
        shown.append(piece)
        if len(shown) == 5:
            raise KeyboardInterrupt

    reply = session.ask("Tell me more", interrupt_after_five)
    assert reply.finish_reason == "interrupted" and reply.text == "".join(shown).lstrip(" ")
    turn = "User: Tell me more\n\nAssistant:" + "".join(shown) + "\n\n"
    assert session.transcript().endswith(turn)
    _, expected = model.forward(model.tokenizer.encode(turn), before)
    assert session.state == expected
    assert session.ask("ok").finish_reason == "length"  # and the conversation goes on


def test_save_reset_load(model, tmp_path):
    session = ChatSession(model, max_tokens=8, sampling=GREEDY)
    session.ask("Remember this")
    saved = session.state.copy()
    path = tmp_path / "conversation.state"
    session.save(path)
    following = ChatSession(model, max_tokens=8, sampling=GREEDY)
    following.state = saved.copy()
    expected = following.ask("What was it?").text

    session.reset()
    assert session.state is None and session.transcript() == ""
    session.load(path)
    assert session.state == saved
    assert session.ask("What was it?").text == expected


def test_a_state_saved_under_a_tuning_suffix_loads_back(model, tmp_path):
    # .pth/.safetensors mean a state-tuning file, unless the file is one of our state files.
    session = ChatSession(model, max_tokens=3, sampling=GREEDY)
    session.ask("Hi")
    session.save(tmp_path / "conversation.pth")
    saved = session.state.copy()
    session.reset()
    session.load(tmp_path / "conversation.pth")
    assert session.state == saved


def test_bad_sampling_settings_are_refused_before_the_first_message(model):
    with pytest.raises(ValueError, match="top_p"):
        ChatSession(model, sampling={**GREEDY, "top_p": 5.0})


def test_system_prompt_is_fed_first_and_again_after_reset(model):
    session = ChatSession(model, max_tokens=4, sampling=GREEDY, system="Be kind.\n\n")
    assert session.transcript() == "System: Be kind.\n\n"
    session.ask("x")
    session.reset()
    assert session.transcript() == "System: Be kind.\n\n"
    _, expected = model.forward(model.tokenizer.encode("System: Be kind.\n\n"))
    assert session.state == expected


def test_repl_commands_and_errors(model, tmp_path):
    lines = iter(["/help", "hello", "/save", f"/save {tmp_path / 's.bin'}", "/reset", f"/load {tmp_path / 'nope'}",
                  f"/load {tmp_path / 's.bin'}", "/what", "   ", "/quit", "never read"])
    out = io.StringIO()

    def read_line(prompt: str) -> str:
        out.write(prompt)
        return next(lines)

    assert repl(ChatSession(model, max_tokens=5, sampling=GREEDY), read_line, out) == 0
    text = out.getvalue()
    assert "/reset" in text and "/save FILE" in text  # the help
    assert "[/save needs a file name]" in text and "[state saved to" in text and "[conversation reset]" in text
    assert "[error: " in text and "nope" in text and "[state loaded from" in text
    assert "[unknown command /what" in text
    assert text.count("\nAssistant:") == 1


def test_repl_ends_cleanly_at_end_of_input(model):
    def read_line(prompt: str) -> str:
        raise EOFError

    assert repl(ChatSession(model, max_tokens=5), read_line, io.StringIO()) == 0


def _default_sigint() -> None:
    # A test run started in the background by a shell without job control inherits SIGINT ignored,
    # and Python then leaves it ignored: the chat would never see the test's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def chat_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rwkv_edge", "chat", str(fixture_path("reference", "tiny-7v0.pth")), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def test_chat_subprocess_with_piped_input(model, tmp_path):
    state_file = tmp_path / "chat.state"
    proc = chat_process("--temperature", "0", "--presence-penalty", "0", "--frequency-penalty", "0",
                        "--max-tokens", "6")
    out, err = proc.communicate(f"Hello\n/save {state_file}\n/reset\n/load {state_file}\nAgain\n".encode(),
                                timeout=120)
    assert proc.returncode == 0, err
    assert err == b""
    ids1, state = greedy_ids(model, None, "User: Hello\n\nAssistant:", 6)
    _, state = model.forward(model.tokenizer.encode("\n\n"), state)
    ids2, _ = greedy_ids(model, state, "User: Again\n\nAssistant:", 6)
    text = out.decode()
    assert "\nAssistant:" + model.tokenizer.decode(ids1) + "\n\n" in text
    assert "\nAssistant:" + model.tokenizer.decode(ids2) + "\n\n" in text
    assert os.path.getsize(state_file) > 0


def read_until(proc: subprocess.Popen, marker: bytes, seen: bytearray) -> None:
    end = time.monotonic() + 120
    while marker not in seen:
        assert time.monotonic() < end, bytes(seen)
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, bytes(seen)
            seen += chunk


def test_ctrl_c_stops_a_reply_then_ctrl_c_at_the_prompt_leaves():
    # Greedy without penalties, the tiny model never writes a blank line, so the reply runs until stopped.
    proc = chat_process("--temperature", "0", "--presence-penalty", "0", "--frequency-penalty", "0",
                        "--max-tokens", "100000")
    try:
        seen = bytearray()
        proc.stdin.write(b"Hello\n")
        proc.stdin.flush()
        read_until(proc, b"Assistant: the the", seen)
        proc.send_signal(signal.SIGINT)
        read_until(proc, b"[stopped]\n\nUser: ", seen)
        # A signal that lands between input() printing its prompt and starting to read waits for the
        # read to end, so keep pressing Ctrl-C until it is seen.
        for _ in range(30):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(2)
                break
            except subprocess.TimeoutExpired:
                pass
        assert proc.wait(1) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
