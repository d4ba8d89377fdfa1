"""The HTTP side of `rwkv-edge serve`: the server (model, scheduler, limits) and its request handler.

Built on the standard library's ThreadingHTTPServer rather than an ASGI stack (starlette + uvicorn):
the model runs on one decoding thread anyway (tools/scheduler.py), so an event loop would buy no
throughput, while staying on the standard library keeps the package's runtime dependencies at numpy,
cffi and tokenizers and makes `rwkv-edge serve` work wherever the package installs. The cost is a thread
per open connection, fine for a loopback or LAN server; put a reverse proxy in front for the internet.
tools/serve.py imports this only when it serves, so other commands do not load the http stack.
"""

from __future__ import annotations

import hmac
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..runtime.prefix_cache import PrefixCache
from .openai_protocol import (
    ApiError,
    GenerationRequest,
    Limits,
    ReplyText,
    chat_body,
    chat_chunk,
    completion_body,
    encode_json,
    model_body,
    models_body,
    new_request_id,
    parse_generation_request,
    parse_json_body,
    usage_body,
)
from .scheduler import Finished, Job, Scheduler

if TYPE_CHECKING:
    from ..runtime.model import Model

log = logging.getLogger(__name__)

ENDPOINTS = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}
POLL_SECONDS = 0.25  # how often a handler waiting for tokens checks whether its client has gone


class ApiServer(ThreadingHTTPServer):
    """The HTTP server plus the model's Scheduler. `serve_forever()`, or `start()` for a background thread."""

    daemon_threads = True
    block_on_close = False
    # socketserver listens with a backlog of 5: a burst of clients beyond that has its connections dropped
    # by the kernel and retried after seconds. The kernel caps this at net.core.somaxconn.
    request_queue_size = 1024

    def __init__(
        self, model: Model, *, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
        api_key: str | None = None, limits: Limits | None = None, cache_mib: float = 64.0, max_active: int = 0,
        max_pending: int = 256, quiet: bool = False,
    ) -> None:
        limits = limits or Limits()
        if limits.max_tokens < 1 or limits.max_body < 1 or not limits.timeout > 0 or not 0 <= cache_mib < 2**40:
            raise ValueError("the max-tokens limit, body limit, timeout and cache size must be positive")
        cache = PrefixCache(max_bytes=int(cache_mib * 2**20)) if cache_mib > 0 else None
        self.model = model
        self.model_name = model_name or Path(str(model.path)).stem
        self.api_key = api_key or None
        self.limits = limits
        self.quiet = quiet
        self.created = int(time.time())
        self.scheduler = Scheduler(model, cache=cache, max_active=max_active, max_pending=max_pending)
        if ":" in host:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except BaseException:
            self.scheduler.close()
            raise
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> ApiServer:
        """Serve on a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="rwkv-edge-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()
        self.scheduler.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which the openai client (httpx) uses
    server: ApiServer
    timeout = 120  # seconds a connection may sit idle or half-sent before its thread gives up on it
    server_version = "rwkv-edge"
    _last_poll = 0.0  # time.monotonic() of the last disconnect check
    _chunked = True  # whether the streamed body goes out in HTTP/1.1 chunks
    _streaming = False  # whether this request's response headers have gone out as a stream

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def handle(self) -> None:
        # A client may close while its connection idles between requests; that is not an error.
        try:
            super().handle()
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, unknown method, ...) as OpenAI errors too."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        if self.request_version == "HTTP/0.9":  # an unreadable request line: answer as HTTP/1.0, with headers
            self.request_version = "HTTP/1.0"
        self._send_error(ApiError(code, message or phrase, type="invalid_request_error"))

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, handler: Callable[[str], None]) -> None:
        self._streaming = False
        try:
            handler(urlsplit(self.path).path)
        except ApiError as err:
            self._send_error(err)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a bug: still an OpenAI error for the client, and the server goes on
            log.exception("request failed")
            if self._streaming:  # the headers are gone: all that is left is to end the connection
                self.close_connection = True
            else:
                self._send_error(ApiError(500, f"internal error: {type(err).__name__}", type="server_error"))

    def _get(self, path: str) -> None:
        if path == "/health":
            self._send_json(200, {"status": "ok", "model": self.server.model_name,
                                  "active": self.server.scheduler.active_count(),
                                  "pending": self.server.scheduler.pending_count()})
            return
        if path in ENDPOINTS:
            raise ApiError(405, f"{path} takes POST", code="method_not_allowed")
        self._authorize()
        name = self.server.model_name
        if path == "/v1/models":
            self._send_json(200, models_body(name, self.server.created))
        elif path.startswith("/v1/models/"):
            asked = path[len("/v1/models/"):]
            if asked != name:
                raise ApiError(404, f"The model `{asked}` does not exist", param="model", code="model_not_found")
            self._send_json(200, model_body(name, self.server.created))
        else:
            raise ApiError(404, f"Invalid URL (GET {path})", code="unknown_url")

    def _post(self, path: str) -> None:
        kind = ENDPOINTS.get(path)
        if kind is None:
            raise ApiError(404, f"Invalid URL (POST {path})", code="unknown_url")
        self._authorize()
        body = parse_json_body(self._read_body())
        server = self.server
        request = parse_generation_request(body, kind, served_model=server.model_name,
                                           vocab_size=server.model.spec.n_vocab, limits=server.limits)
        job = server.scheduler.submit(request, server.limits.timeout)
        try:
            first = self._next_event(job)  # wait for it before the headers, so a refused prompt is a 4xx
            if isinstance(first, ApiError):
                raise first
            if request.stream:
                self._stream(job, request, first)
            else:
                self._respond(job, request, first)
        finally:
            job.cancel()  # a no-op once the job has ended; stops it if this thread leaves early

    def _respond(self, job: Job, request: GenerationRequest, event: str | Finished) -> None:
        shaper = ReplyText() if request.kind == "chat" else None
        pieces = []
        while not isinstance(event, Finished):
            pieces.append(shaper.feed(event) if shaper else event)
            event = self._next_event(job)
            if isinstance(event, ApiError):
                raise event
        usage = usage_body(event.prompt_tokens, event.completion_tokens)
        request_id, created, text = new_request_id(request.kind), int(time.time()), "".join(pieces)
        if request.kind == "chat":
            body = chat_body(request_id, created, request.model, text, event.finish_reason, usage)
        else:
            body = completion_body(request_id, created, request.model, text, event.finish_reason, usage)
        self._send_json(200, body)

    def _stream(self, job: Job, request: GenerationRequest, event: str | Finished) -> None:
        self._streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        # HTTP/1.0 has no chunked encoding: the end of the stream is then the end of the connection.
        self._chunked = self.request_version == "HTTP/1.1"
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        request_id, created, model = new_request_id(request.kind), int(time.time()), request.model
        chat = request.kind == "chat"
        shaper = ReplyText()
        if chat:
            self._send_event(chat_chunk(request_id, created, model, {"role": "assistant", "content": ""}, None))
        while not isinstance(event, Finished):
            if chat:
                piece = shaper.feed(event)
                if piece:
                    self._send_event(chat_chunk(request_id, created, model, {"content": piece}, None))
            else:
                self._send_event(completion_body(request_id, created, model, event, None, chunk=True))
            event = self._next_event(job)
            if isinstance(event, ApiError):
                # Headers are gone: report it in-band as OpenAI does, then end the stream.
                self._send_event(event.body())
                break
        else:
            usage = usage_body(event.prompt_tokens, event.completion_tokens)
            if chat:
                self._send_event(chat_chunk(request_id, created, model, {}, event.finish_reason))
                if request.include_usage:
                    self._send_event(chat_chunk(request_id, created, model, {}, None, usage, choices=False))
            else:
                self._send_event(completion_body(request_id, created, model, "", event.finish_reason, chunk=True))
                if request.include_usage:
                    body = completion_body(request_id, created, model, "", None, usage, chunk=True)
                    body["choices"] = []
                    self._send_event(body)
        self._send_chunk(b"data: [DONE]\n\n")
        self._send_chunk(b"")

    def _next_event(self, job: Job) -> str | Finished | ApiError:
        """The job's next event; raises ConnectionResetError (cancelling the job) if the client leaves."""
        while True:
            now = time.monotonic()
            # Checked on a clock, not only when idle: a fast non-streamed reply never leaves the queue empty.
            if now - self._last_poll >= POLL_SECONDS:
                self._last_poll = now
                if peer_closed(self.connection):
                    job.cancel()
                    raise ConnectionResetError("the client disconnected")
            try:
                return job.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                pass

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(401, "Incorrect API key provided" if token else
                           "Missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send the body with a Content-Length (chunked request bodies are not supported)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        if not (length.strip().isascii() and length.strip().isdigit()):  # isdigit() alone takes "²"
            raise ApiError(400, f"bad Content-Length {length!r}")
        n = int(length)
        limit = self.server.limits.max_body
        if n > limit:
            raise ApiError(413, f"the request body is {n} bytes; the limit is {limit}", code="request_too_large")
        raw = self.rfile.read(n)
        if len(raw) != n:
            raise ConnectionResetError("the client closed the connection mid-body")
        return raw

    def _send_error(self, err: ApiError) -> None:
        # The body of a refused request may be unread, so this connection cannot carry another request.
        self.close_connection = True
        extra = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
        if err.status == 405:
            extra["Allow"] = "POST"
        try:
            self._send_json(err.status, err.body(), extra)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = encode_json(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_event(self, body: dict[str, Any]) -> None:
        self._send_chunk(b"data: " + encode_json(body) + b"\n\n")

    def _send_chunk(self, data: bytes) -> None:
        """One piece of a chunked body (b"" ends it); raises BrokenPipeError once the client has gone."""
        if self._chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        elif data:
            self.wfile.write(data)


def peer_closed(sock: socket.socket) -> bool:
    """True once the peer has closed: the socket reads as end-of-file without blocking."""
    try:
        if hasattr(select, "poll"):  # select.select() refuses descriptors from 1024 on (FD_SETSIZE)
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            readable = bool(poller.poll(0))
        else:
            readable = bool(select.select([sock], [], [], 0)[0])
        return readable and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
