"""`rwkv-edge serve` under abuse: a job that fails where no generation runs, a bug in a handler, a burst of
connections, a disconnect on a high file descriptor, absurd limits.

Truth: what the scheduler and the HTTP spec promise (every job ends with exactly one last event, every
request gets an answer), and the kernel's own view of a socket pair.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import math
import resource
import socket

import pytest
from conftest import fixture_path

import rwkv_edge
import rwkv_edge.runtime.model
from rwkv_edge.tools import http_api
from rwkv_edge.tools.openai_protocol import ApiError, GenerationRequest
from rwkv_edge.tools.scheduler import Finished, Scheduler
from rwkv_edge.tools.http_api import ApiServer, peer_closed

HANG_GUARD = 120  # seconds: only a hung server waits this long


@pytest.fixture(scope="module")
def model() -> rwkv_edge.Model:
    # Only ever driven by one scheduler at a time: each test below closes its server or scheduler.
    return rwkv_edge.load(fixture_path("reference", "tiny-7v0.pth"))


def completion(prompt: str | list[int], **options) -> GenerationRequest:
    return GenerationRequest("completion", "tiny", prompt, False, False, {"max_tokens": 2, **options})


def events_of(job) -> list:
    out = [job.events.get(timeout=HANG_GUARD)]
    while isinstance(out[-1], str):
        out.append(job.events.get(timeout=HANG_GUARD))
    return out


def test_a_job_failing_outside_its_generation_does_not_stop_the_worker(model):
    scheduler = Scheduler(model)
    try:
        # Timed out in the queue, so the worker counts the prompt's tokens itself; a lone surrogate has no
        # UTF-8, so no tokenizer can.
        doomed = scheduler.submit(completion("\ud800"), timeout=-1.0)
        last = events_of(doomed)[-1]
        assert isinstance(last, ApiError) and last.status == 400
        healthy = events_of(scheduler.submit(completion("Hi", temperature=0.0), timeout=HANG_GUARD))
        assert isinstance(healthy[-1], Finished) and healthy[-1].completion_tokens == 2
    finally:
        scheduler.close()


def test_a_long_prompt_is_fed_a_chunk_per_turn_so_it_can_be_stopped(monkeypatch):
    """A cancelled (client gone) or timed-out job must not hold the worker until its whole prompt is in:
    the worker feeds a prompt one chunk per turn, checking in between."""
    monkeypatch.setattr(rwkv_edge.runtime.model, "CHUNK_LEN", 16)
    own = rwkv_edge.load(fixture_path("reference", "tiny-7v0.pth"))
    calls: list[int] = []
    original = own.forward
    scheduler = Scheduler(own)
    job = None

    def forward(tokens, *args, **kwargs):
        calls.append(len(tokens))
        if len(calls) == 1:
            job.cancel()  # the client leaves while its first chunk is computed
        return original(tokens, *args, **kwargs)

    try:
        own.forward = forward
        job = scheduler.submit(completion([65] * 160), timeout=HANG_GUARD)
        # Only the worker stepping the job again shows the cancel; a second job marks that moment.
        events_of(scheduler.submit(completion([66, 67], temperature=0.0), timeout=HANG_GUARD))
        assert calls[0] == 16 and calls.count(16) == 1  # one chunk of the ten, then it was dropped
    finally:
        scheduler.close()


def test_a_bug_in_a_handler_is_a_500_and_the_server_goes_on(model, monkeypatch):
    srv = ApiServer(model, quiet=True).start()

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    try:
        monkeypatch.setattr(http_api, "parse_generation_request", broken)
        status, body = post(srv, {"prompt": "x"})
        assert status == 500 and body["error"]["type"] == "server_error"
        monkeypatch.undo()
        status, body = post(srv, {"prompt": "x", "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
    finally:
        srv.close()


def post(srv: ApiServer, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=HANG_GUARD)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_burst_of_connections_waits_in_the_listen_queue(model):
    """64 clients connect before the server accepts any: the kernel must hold them all. With socketserver's
    default backlog of 5 it drops the rest, whose connects never complete while nothing is accepted."""
    srv = ApiServer(model, quiet=True)  # listening, not accepting yet
    clients: list[socket.socket] = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection(srv.server_address[:2], timeout=20))
            clients[-1].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        srv.start()
        for sock in clients:
            sock.settimeout(HANG_GUARD)
            assert sock.makefile("rb").read().startswith(b"HTTP/1.1 200")
    finally:
        for sock in clients:
            sock.close()
        srv.close()


def test_a_disconnect_is_seen_on_a_descriptor_above_1023():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))  # fails loudly if it cannot
    ours, theirs = socket.socketpair()
    high = socket.socket(fileno=fcntl.fcntl(ours.fileno(), fcntl.F_DUPFD, 1500))  # FD_SETSIZE is 1024
    try:
        assert high.fileno() >= 1024
        assert not peer_closed(high)
        theirs.sendall(b"x")
        assert not peer_closed(high)  # data waiting is not a close
        assert high.recv(1) == b"x"
        theirs.close()
        assert peer_closed(high)
    finally:
        high.close()
        ours.close()
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("cache_mib", [math.inf, math.nan, -1.0])
def test_absurd_cache_sizes_are_refused(model, cache_mib):
    with pytest.raises(ValueError, match="cache size"):
        ApiServer(model, cache_mib=cache_mib, quiet=True)
