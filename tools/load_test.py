"""Load test for `rwkv-edge serve`: many concurrent streaming clients on loopback, each checking its output.

    python -m rwkv_edge.tools.load_test [MODEL] [--clients 16] [--requests 8] [--max-tokens 32] [--compare]

Starts a server subprocess on a free loopback port (or targets --url), then:
1. computes every request's expected text with one non-streamed request at a time (nothing interleaved);
2. runs all clients at once, each streaming its requests one after another with its own deterministic
   prompts and seeds, and compares what it received with the expected text (a mixed-up stream shows as
   a mismatch);
3. reports throughput, time-to-first-token and total-latency percentiles, errors, and the server's
   resident memory (VmRSS, VmHWM from /proc) before and after.
Bounded: a fixed number of requests, a socket timeout on each, and --time-limit for the whole run.
--compare runs it twice, interleaved decoding (--max-active 0) and a first-come queue (--max-active 1).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .default_model import default_model_path

PROMPT_TEXT = "The quick brown fox jumps over the lazy dog. Once upon a time"
SERVER_START_SECONDS = 120.0


@dataclass
class Outcome:
    """One streamed request as a client saw it."""

    client: int
    ttft: float | None = None  # seconds from sending to the first text
    latency: float | None = None  # seconds from sending to [DONE]
    completion_tokens: int = 0
    error: str | None = None
    mismatch: bool = False


@dataclass
class Summary:
    label: str
    clients: int
    requests: int  # requests made in the concurrent phase
    max_tokens: int
    max_active: int | None  # the server's --max-active, when this tool started it
    wall_seconds: float
    completion_tokens: int
    tokens_per_second: float
    ttft: dict[str, float]  # p50, p90, p99, max (seconds)
    latency: dict[str, float]
    errors: int
    mismatches: int
    error_samples: list[str] = field(default_factory=list)
    # The server's VmRSS at start, after the one-at-a-time warm-up, and at the end; VmHWM at the end.
    rss_kib: dict[str, int | None] = field(default_factory=dict)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkv_edge.tools.load_test", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="model file for the server it starts (default: the embedded one)")
    parser.add_argument("--url", default=None, help="target a running server instead (loopback only)")
    parser.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid, for memory")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=8, help="requests per client (default 8)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="the started server's kernel threads")
    parser.add_argument("--max-active", type=int, default=0, help="the started server's --max-active (0: interleave all)")
    parser.add_argument("--compare", action="store_true", help="run interleaved (max-active 0) and queued (1)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.max_tokens < 1:
        parser.error("--clients, --requests and --max-tokens must be >= 1")
    if args.url is not None:
        if args.compare:
            parser.error("--compare starts its own servers; drop --url")
        _check_loopback(args.url, parser)
        summaries = [run_load_test(args.url, args.server_pid, args, label="target", max_active=None)]
    else:
        modes = [0, 1] if args.compare else [args.max_active]
        summaries = []
        for max_active in modes:
            with ServerProcess(args.model or default_model_path(), max_active, args.threads) as server:
                label = "interleaved" if max_active == 0 else f"max-active {max_active}"
                summaries.append(run_load_test(server.url, server.pid, args, label=label, max_active=max_active))
    if args.json:
        print(json.dumps([asdict(s) for s in summaries], indent=1))
    else:
        for summary in summaries:
            print(format_summary(summary))
    return 0 if all(s.errors == 0 and s.mismatches == 0 for s in summaries) else 1


class ServerProcess:
    """`rwkv-edge serve` on a free loopback port, as a subprocess (so its memory is its own)."""

    def __init__(self, model: str, max_active: int, threads: int | None) -> None:
        cmd = [sys.executable, "-m", "rwkv_edge", "serve", model, "--port", "0", "--quiet",
               "--max-active", str(max_active), "--max-pending", "1024"]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        found: list[str] = []
        reader = threading.Thread(target=self._read_banner, args=(found,), daemon=True)
        reader.start()
        reader.join(SERVER_START_SECONDS)
        if not found:
            self.close()
            raise RuntimeError("the server did not start: " + (self._stderr_tail or "no output"))
        return found[0]

    _stderr_tail = ""

    def _read_banner(self, found: list[str]) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if " at http://" in line:
                found.append(line.split(" at ", 1)[1].split()[0])
                break
            self._stderr_tail += line
        # Keep draining, so a chatty server never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_load_test(url: str, pid: int | None, args: argparse.Namespace, *, label: str,
                  max_active: int | None) -> Summary:
    deadline = time.monotonic() + args.time_limit
    work = [[_request(c, r, args.max_tokens) for r in range(args.requests)] for c in range(args.clients)]
    rss_before = read_memory(pid)
    errors: list[str] = []
    expected: dict[tuple[int, int], str] = {}
    for c, requests in enumerate(work):  # one at a time: a reference that nothing else could disturb
        for r, body in enumerate(requests):
            try:
                expected[c, r] = _complete(url, body, _remaining(deadline))
            except (OSError, ValueError, KeyError, http.client.HTTPException) as err:
                errors.append(f"expected text for {c}:{r}: {_one_line(err)}")
    rss_warm = read_memory(pid)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_client_thread, args=(url, c, work[c], expected, deadline, outcomes, lock),
                                daemon=True) for c in range(args.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    wall = time.perf_counter() - start
    rss_after = read_memory(pid)
    with lock:
        outcomes = list(outcomes)
    errors += [o.error for o in outcomes if o.error is not None]
    missing = args.clients * args.requests - len(outcomes)
    errors += ["a client was still running at the time limit"] * missing
    done = [o for o in outcomes if o.error is None and o.latency is not None]
    tokens = sum(o.completion_tokens for o in done)
    return Summary(
        label=label, clients=args.clients, requests=args.clients * args.requests, max_tokens=args.max_tokens,
        max_active=max_active, wall_seconds=round(wall, 3), completion_tokens=tokens,
        tokens_per_second=round(tokens / wall, 2) if wall > 0 else 0.0,
        ttft=percentiles([o.ttft for o in done if o.ttft is not None]),
        latency=percentiles([o.latency for o in done if o.latency is not None]),
        errors=len(errors), mismatches=sum(o.mismatch for o in outcomes), error_samples=errors[:5],
        rss_kib={"rss_start": rss_before.get("VmRSS"), "rss_warm": rss_warm.get("VmRSS"),
                 "rss_end": rss_after.get("VmRSS"), "hwm_end": rss_after.get("VmHWM")},
    )


def _client_thread(url: str, c: int, requests: list[dict[str, Any]], expected: dict[tuple[int, int], str],
                   deadline: float, outcomes: list[Outcome], lock: threading.Lock) -> None:
    for r, body in enumerate(requests):
        if time.monotonic() > deadline:
            outcome, text = Outcome(c, error="time limit reached"), ""
        else:
            outcome, text = _stream(url, c, body, _remaining(deadline))
        if outcome.error is None and (c, r) in expected and text != expected[c, r]:
            outcome.mismatch = True
        with lock:
            outcomes.append(outcome)


def _request(client: int, index: int, max_tokens: int) -> dict[str, Any]:
    """Client c's request r: its own prompt and seed, so any two requests differ."""
    return {"prompt": f"[{client}.{index}] {PROMPT_TEXT}", "max_tokens": max_tokens, "seed": 1000 * client + index,
            "temperature": 1.0, "top_p": 0.9}


def _complete(url: str, body: dict[str, Any], timeout: float) -> str:
    conn = _connect(url, timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}: {data}")
        return str(data["choices"][0]["text"])
    finally:
        conn.close()


def _stream(url: str, client: int, body: dict[str, Any], timeout: float) -> tuple[Outcome, str]:
    outcome = Outcome(client)
    pieces: list[str] = []
    conn = _connect(url, timeout)
    sent = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True,
                                                            "stream_options": {"include_usage": True}}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            outcome.error = f"HTTP {response.status}: {_one_line(response.read().decode('utf-8', 'replace'))}"
            return outcome, ""
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                outcome.latency = time.perf_counter() - sent
                break
            event = json.loads(line[6:])
            if "error" in event:
                outcome.error = f"in-stream error: {event['error'].get('message')}"
                break
            for choice in event.get("choices", []):
                if choice.get("text") and outcome.ttft is None:
                    outcome.ttft = time.perf_counter() - sent
                pieces.append(choice.get("text") or "")
            if event.get("usage"):
                outcome.completion_tokens = int(event["usage"]["completion_tokens"])
        else:
            outcome.error = "the stream ended without [DONE]"
    except (OSError, ValueError, KeyError, http.client.HTTPException) as err:
        outcome.error = f"{type(err).__name__}: {_one_line(err)}"
    finally:
        conn.close()
    return outcome, "".join(pieces)


def read_memory(pid: int | None) -> dict[str, int]:
    """VmRSS and VmHWM of a process in KiB (empty if unknown: no pid, or no /proc)."""
    if pid is None:
        return {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM") and value.split():
            out[key] = int(value.split()[0])
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99 and the max, in seconds rounded to the millisecond (empty: all NaN)."""
    if not values:
        return {k: math.nan for k in ("p50", "p90", "p99", "max")}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 4)

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(ordered[-1], 4)}


def format_summary(s: Summary) -> str:
    def ms(d: dict[str, float]) -> str:
        return " ".join(f"{k} {v * 1000:.0f} ms" for k, v in d.items())

    lines = [
        f"== {s.label}: {s.clients} clients x {s.requests // s.clients} requests, max_tokens {s.max_tokens}",
        f"   {s.completion_tokens} tokens in {s.wall_seconds:.2f} s = {s.tokens_per_second:.1f} tokens/s",
        f"   time to first token: {ms(s.ttft)}",
        f"   total latency:       {ms(s.latency)}",
        f"   errors {s.errors}, mismatched outputs {s.mismatches}",
        "   server memory (KiB): " + ", ".join(f"{k} {v}" for k, v in s.rss_kib.items()),
    ]
    lines += [f"   error: {e}" for e in s.error_samples]
    return "\n".join(lines)


def _connect(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)


def _check_loopback(url: str, parser: argparse.ArgumentParser) -> None:
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        parser.error("--url must be a loopback address (127.x.x.x, ::1 or localhost)")


def _remaining(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
