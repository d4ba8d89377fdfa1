"""`rwkv-edge serve`: the OpenAI protocol through the official `openai` client and raw HTTP, limits and
errors (each followed by a request that still works), disconnects, interleaving, and the load test.

The server runs in-process on a free loopback port with the tiny byte-level RWKV-7; truth comes from the
model itself (greedy decoding by hand), the World chat format as ChatRWKV writes it, and the HTTP spec.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator

import numpy as np
import openai
import pytest
import rwkv_edge
from conftest import fixture_path
from rwkv_edge.runtime.model import CHUNK_LEN
from rwkv_edge.tools import load_test
from rwkv_edge.tools.openai_protocol import ApiError, Limits, parse_generation_request, render_chat
from rwkv_edge.tools.http_api import ApiServer

KEY = "test-key"
MODEL = "tiny-7v0"
LONG = 3000  # tokens no test waits for: a request this long only ends early by being stopped


def load_model() -> rwkv_edge.Model:
    return rwkv_edge.load(fixture_path("reference", "tiny-7v0.pth"))


class CountingModel:
    """The model with a count of forward calls, to tell a stopped generation from a finished one."""

    def __init__(self, model: rwkv_edge.Model) -> None:
        self.forwards = 0
        original = model.forward

        def forward(*args, **kwargs):
            self.forwards += 1
            return original(*args, **kwargs)

        model.forward = forward  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def model() -> rwkv_edge.Model:
    return load_model()


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    # A model of its own: a Model must only ever be driven by one thread, the server's worker.
    srv = ApiServer(load_model(), api_key=KEY, limits=Limits(max_tokens=LONG, max_body=4096, timeout=60),
                    quiet=True).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def greedy(model: rwkv_edge.Model, prompt: str, n: int) -> str:
    """n argmax tokens after prompt, decoded: the independent truth for temperature 0."""
    logits, state = model.forward(model.tokenizer.encode(prompt))
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits, state = model.forward([out[-1]], state)
    return model.tokenizer.decode(out)


def raw(server: ApiServer, method: str, path: str, body: bytes | str | dict | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    data = json.dumps(body) if isinstance(body, dict) else body
    conn.request(method, path, data, {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                                      **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload)


def assert_openai_error(status: int, body: dict, expected_status: int, param: str | None = None) -> None:
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body


def assert_still_serving(server: ApiServer) -> None:
    status, body = raw(server, "POST", "/v1/completions", {"model": MODEL, "prompt": "ok", "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] == 2, body


def wait_idle(server: ApiServer, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while server.scheduler.active_count() and time.monotonic() < end:
        time.sleep(0.02)
    assert server.scheduler.active_count() == 0


# ---- the protocol, without a server ----------------------------------------------------------------

def test_chat_messages_render_to_the_world_format():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi\r\n\n\nthere "},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": [{"type": "text", "text": "Why?"}]}]
    assert render_chat(messages) == ("System: Be brief.\n\nUser: Hi\nthere\n\nAssistant: Hello.\n\n"
                                     "User: Why?\n\nAssistant:")


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": "high"}, "top_p"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "logit_bias": {"300": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"3": 101}}, "logit_bias"),
    ({"prompt": [1, 256]}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "n": 2}, "n"),
])
def test_bad_fields_are_refused_with_their_name(body, param):
    with pytest.raises(ApiError) as info:
        parse_generation_request(body, "completion", served_model=MODEL, vocab_size=256, limits=Limits(max_tokens=64))
    assert info.value.status == 400 and info.value.param == param


def test_fields_reach_the_generator():
    body = {"model": MODEL, "prompt": [5, 6], "max_tokens": 7, "temperature": 0.5, "top_p": 0.2, "stop": "x",
            "seed": -1, "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {"7": -100}, "user": "u"}
    request = parse_generation_request(body, "completion", served_model=MODEL, vocab_size=256, limits=Limits())
    assert request.prompt == [5, 6]
    assert request.options == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.2, "top_k": 0, "min_p": 0.0,
                               "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {7: -100.0},
                               "stop": ["x"], "seed": 2**64 - 1}
    chat = parse_generation_request({"messages": [{"role": "user", "content": "a"}], "stop": ["Q:"]}, "chat",
                                    served_model=MODEL, vocab_size=256, limits=Limits(max_tokens=99))
    assert chat.prompt == "User: a\n\nAssistant:"
    assert chat.options["stop"] == ["\n\n", "Q:"] and chat.options["max_tokens"] == 99


# ---- the official client ---------------------------------------------------------------------------

def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    status, body = raw(server, "GET", "/health", headers={"Authorization": ""})
    assert status == 200 and body["status"] == "ok"


def test_greedy_completion_matches_the_model(client, model):
    result = client.completions.create(model=MODEL, prompt="In the", max_tokens=12, temperature=0)
    assert result.choices[0].text == greedy(model, "In the", 12)
    assert result.choices[0].finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6, 12)


def test_streamed_text_equals_the_whole_response_for_a_seed(client):
    args = {"model": MODEL, "prompt": "Once upon", "max_tokens": 24, "seed": 11, "temperature": 1.0, "top_p": 0.9}
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 24
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    other = client.completions.create(**{**args, "seed": 12})
    assert other.choices[0].text != whole.choices[0].text


def test_chat_streamed_and_not(client, model):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}]
    prompt = "System: You are terse.\n\nUser: Hello\n\nAssistant:"
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content == greedy(model, prompt, 10).split("\n\n")[0].lstrip(" ")
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == len(prompt.encode())
    seeded = {"model": MODEL, "messages": messages, "max_tokens": 16, "seed": 5}
    text = client.chat.completions.create(**seeded).choices[0].message.content
    chunks = list(client.chat.completions.create(**seeded, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_growing_conversation_reuses_the_cached_prefix(server, client):
    # The cache resumes a prompt from checkpoints every CHUNK_LEN tokens (so that logits stay identical to
    # a cold run): a system prompt longer than that is computed once for the whole conversation.
    system = "You answer briefly and kindly. " * 9  # 278 tokens of the byte-level model
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "First question"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    before = server.scheduler.cache.stats
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Second"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    after = server.scheduler.cache.stats
    assert after.hits == before.hits + 1
    assert after.tokens_saved - before.tokens_saved >= CHUNK_LEN
    prompt = render_chat(messages)
    assert second.usage.prompt_tokens == len(prompt.encode())


def test_stop_strings_end_the_text(client, model):
    full = greedy(model, "In the", 30)
    stop = full[8:11]
    result = client.completions.create(model=MODEL, prompt="In the", max_tokens=30, temperature=0, stop=[stop])
    assert result.choices[0].text == full[:full.index(stop)]
    assert result.choices[0].finish_reason == "stop"


def test_client_errors(server, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
    assert_still_serving(server)


# ---- raw HTTP ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": "x", "max_tokens": NaN}', 400, None),
    (b"\xff\xfe", 400, None),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**12}, 400, "max_tokens"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"prompt": "x", "temperature": [1]}, 400, "temperature"),
    ({"prompt": "x", "temperature": 10**400}, 400, "temperature"),  # no float holds it
    ({"prompt": "x", "logit_bias": {"1": -10**400}}, 400, "logit_bias"),
    (b'{"prompt": "x", "model": "\\ud800"}', 404, "model"),  # echoed in the message: not encodable as UTF-8
    ({"prompt": "x", "model": "other"}, 404, "model"),
    ({"prompt": "x", "model": 7}, 400, "model"),
    ({"prompt": "x" * 5000}, 413, None),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, status, param):
    assert_openai_error(*raw(server, "POST", "/v1/completions", body), status, param)
    assert_still_serving(server)


@pytest.mark.parametrize("messages, param", [
    ("hi", "messages"), ([], "messages"), ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
])
def test_bad_chat_messages(server, messages, param):
    assert_openai_error(*raw(server, "POST", "/v1/chat/completions", {"messages": messages}), 400, param)
    assert_still_serving(server)


def test_api_key_paths_and_methods(server):
    for headers in ({"Authorization": "Bearer nope"}, {"Authorization": ""}):
        status, body = raw(server, "POST", "/v1/completions", {"prompt": "x"}, headers)
        assert_openai_error(status, body, 401)
        assert body["error"]["code"] == "invalid_api_key"
    assert_openai_error(*raw(server, "GET", "/v1/models", headers={"Authorization": "Basic abc"}), 401)
    assert_openai_error(*raw(server, "POST", "/v1/nothing", {"prompt": "x"}), 404)
    assert_openai_error(*raw(server, "GET", "/v1/completions"), 405)
    assert_openai_error(*raw(server, "GET", "/v1/models/other"), 404)
    assert raw(server, "GET", f"/v1/models/{MODEL}")[1]["id"] == MODEL
    assert_still_serving(server)


@pytest.mark.parametrize("request_bytes, status", [
    (b"NONSENSE\r\n\r\n", 400),
    (b"PUT /v1/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501),
    (b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n", 411),
    (b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nContent-Length: -3\r\n\r\n",
     400),
    (b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nContent-Length: \xb2\r\n\r\n",
     400),  # a latin-1 superscript two: str.isdigit() says yes, int() says no
])
def test_broken_http_gets_an_openai_error(server, request_bytes, status):
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(request_bytes)
        reply = sock.makefile("rb").read()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and int(head.split()[1]) == status, head
    assert_openai_error(status, json.loads(body), status)
    assert_still_serving(server)


def test_an_oversized_body_is_refused_before_it_is_read(server):
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Length: 100000000\r\n\r\n{")
        reply = sock.makefile("rb").read()  # the server answers and closes without waiting for 100 MB
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert_still_serving(server)


def test_an_http_1_0_stream_ends_with_the_connection(server):
    request = {"prompt": "Hi", "max_tokens": 5, "seed": 3}
    data = json.dumps({**request, "stream": True}).encode()
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.0\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        reply = sock.makefile("rb").read()  # ends: the server closes after the stream
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head and body.endswith(b"data: [DONE]\n\n")
    events = [json.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]
    whole = raw(server, "POST", "/v1/completions", request)[1]
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]


def start_stream(server: ApiServer, body: dict) -> socket.socket:
    """Send a request by hand and read until the first token event has arrived."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(server.server_address[:2], timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
                 b"Bearer " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    read_until(sock, b'"text"')
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, received[-300:]
        received += chunk
    return received


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(server, stream):
    wait_idle(server)
    counter = CountingModel(server.model)
    try:
        if stream:
            sock = start_stream(server, {"prompt": "Hello", "max_tokens": LONG, "stream": True})
        else:
            data = json.dumps({"prompt": "Hello", "max_tokens": LONG}).encode()
            sock = socket.create_connection(server.server_address[:2], timeout=30)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                         + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
            while not server.scheduler.active_count():
                time.sleep(0.01)
        assert server.scheduler.active_count() == 1
        sock.close()
        wait_idle(server)
        assert counter.forwards < LONG // 2  # stopped, not run to max_tokens
    finally:
        del server.model.forward
    assert_still_serving(server)


def test_streams_are_interleaved_not_queued(server):
    """A short request finishes while a long stream that started first is still running."""
    wait_idle(server)
    long_stream = start_stream(server, {"prompt": "Long", "max_tokens": LONG, "stream": True})
    try:
        status, body = raw(server, "POST", "/v1/completions", {"prompt": "Short", "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        assert server.scheduler.active_count() == 1  # the long one, still going
    finally:
        long_stream.close()
    wait_idle(server)


def test_time_limit_and_busy_server():
    srv = ApiServer(load_model(), limits=Limits(max_tokens=LONG, timeout=1.0), max_pending=1, quiet=True).start()
    try:
        long_stream = start_stream(srv, {"prompt": "Hi", "max_tokens": LONG, "stream": True})
        status, body = raw(srv, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert_openai_error(status, body, 429)
        rest = read_until(long_stream, b"data: [DONE]\n\n\r\n0\r\n\r\n")  # it ends at the time limit
        long_stream.close()
        events = [json.loads(line[6:]) for line in rest.split(b"\n") if line.startswith(b"data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        status, body = raw(srv, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 200, body
    finally:
        srv.close()


# ---- the load test tool ------------------------------------------------------------------------------

def test_load_test_runs_clean(capsys):
    rc = load_test.main(["--clients", "4", "--requests", "2", "--max-tokens", "4", "--json", "--time-limit", "120"])
    summary = json.loads(capsys.readouterr().out)[0]
    assert rc == 0, summary
    assert summary["errors"] == 0 and summary["mismatches"] == 0
    assert summary["requests"] == 8 and summary["completion_tokens"] == 8 * 4
    assert summary["rss_kib"]["rss_end"] > 0 and summary["ttft"]["p50"] <= summary["latency"]["p50"]
