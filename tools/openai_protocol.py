"""The OpenAI wire protocol: validate request bodies into generation requests, and build response bodies.

Pure functions and small value types, no I/O, so every rule here is testable without a server. Field
names, defaults and shapes follow the OpenAI API reference for /v1/completions and /v1/chat/completions.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The World chat format (ChatRWKV API_DEMO_CHAT.py, llama.cpp's rwkv-world template): every turn is
# "Role: text\n\n", and the reply is generated after "Assistant:", ending at the next blank line.
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = "\n\n"
MAX_STOP_STRINGS = 4  # the OpenAI limit


class ApiError(Exception):
    """A request the server refuses: HTTP status plus the OpenAI error object fields."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 4096  # the largest max_tokens accepted (more is a 400, not a silent clamp)
    max_body: int = 1 << 20  # request body bytes (more is a 413)
    timeout: float = 300.0  # seconds from arrival to the last token, queueing included


@dataclass(frozen=True)
class GenerationRequest:
    """One validated completion or chat request."""

    kind: str  # "completion" or "chat"
    model: str
    prompt: str | list[int]  # the rendered text, or token ids given by the client
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk carrying the token counts
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of Model.generate


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError 400."""
    try:
        # NaN/Infinity are not JSON; Python accepts them unless told otherwise.
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {_one_line(err)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def parse_generation_request(
    body: Mapping[str, Any], kind: str, *, served_model: str, vocab_size: int, limits: Limits
) -> GenerationRequest:
    """Validate a /v1/completions (kind "completion") or /v1/chat/completions ("chat") body."""
    model = body.get("model", served_model)  # lenient: curl users may leave it out
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model")
    if model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist; this server serves `{served_model}`",
                       param="model", code="model_not_found")
    n = _integer(body, "n", 1, 1, 1 << 30)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    if kind == "chat":
        prompt: str | list[int] = render_chat(body.get("messages"))
        limit_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        default_tokens = limits.max_tokens
    else:
        prompt = _prompt(body.get("prompt"), vocab_size)
        limit_name = "max_tokens"
        default_tokens = min(16, limits.max_tokens)  # the OpenAI default for completions
    max_tokens = _integer(body, limit_name, default_tokens, 1, limits.max_tokens)
    stop = _stop(body.get("stop"))
    if kind == "chat":
        stop = [CHAT_STOP, *stop]
    stream = _boolean(body, "stream", False)
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options")
        include_usage = _boolean(stream_options, "include_usage", False, param="stream_options.include_usage")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ApiError(400, "user must be a string", param="user")
    options = {
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "top_k": _integer(body, "top_k", 0, 0, vocab_size),
        "min_p": _number(body, "min_p", 0.0, 0.0, 1.0),
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "logit_bias": _logit_bias(body.get("logit_bias"), vocab_size),
        "stop": stop or None,
        "seed": _seed(body.get("seed")),
    }
    return GenerationRequest(kind, model, prompt, stream, include_usage, options)


def render_chat(messages: Any) -> str:
    """OpenAI messages as one World-format prompt ending in "Assistant:" (the model writes the reply)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array", param="messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLE_NAMES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLE_NAMES)}",
                           param=f"messages[{i}].role")
        turns.append(f"{ROLE_NAMES[role]}: {normalize_turn(_content(message.get('content'), i))}\n\n")
    return "".join(turns) + "Assistant:"


def normalize_turn(text: str) -> str:
    """One turn's text as World models saw it in training: trimmed, without blank lines.

    A blank line ends a turn in this format, so one inside a message would end it early (ChatRWKV's
    chat demo collapses them the same way).
    """
    return re.sub(r"\n+", "\n", text.replace("\r\n", "\n").strip())


class ReplyText:
    """Shapes the streamed pieces of a chat reply: the model writes "Assistant: text", and the space
    after the colon belongs to the format, not to the reply."""

    def __init__(self) -> None:
        self._started = False

    def feed(self, piece: str) -> str:
        if not self._started:
            piece = piece.lstrip(" ")
            self._started = bool(piece)
        return piece


def new_request_id(kind: str) -> str:
    """A new response id, prefixed as OpenAI's are."""
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def encode_json(body: dict[str, Any]) -> bytes:
    """A body as UTF-8 JSON; escaped to ASCII if it holds a lone surrogate (a client's "\\ud800" echoed
    in an error message), which has no UTF-8."""
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode("ascii")


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(
    request_id: str, created: int, model: str, text: str, finish_reason: str | None,
    usage: dict[str, int] | None = None, *, chunk: bool = False,
) -> dict[str, Any]:
    """A /v1/completions response, or one streamed chunk of it (text is then only the new piece)."""
    body: dict[str, Any] = {
        "id": request_id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None or not chunk:
        body["usage"] = usage
    return body


def chat_body(
    request_id: str, created: int, model: str, text: str, finish_reason: str, usage: dict[str, int],
) -> dict[str, Any]:
    """A non-streamed /v1/chat/completions response."""
    return {
        "id": request_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def chat_chunk(
    request_id: str, created: int, model: str, delta: dict[str, str], finish_reason: str | None,
    usage: dict[str, int] | None = None, *, choices: bool = True,
) -> dict[str, Any]:
    """One streamed chat.completion.chunk; with choices=False the usage-only last chunk."""
    body: dict[str, Any] = {
        "id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if choices else [],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def models_body(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_body(model, created)]}


def model_body(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "rwkv-edge"}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or an array of text parts (images and audio are refused)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"messages[{i}].content parts must be text parts",
                               param=f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"messages[{i}].content must be a string or an array of text parts",
                   param=f"messages[{i}].content")


def _prompt(prompt: Any, vocab_size: int) -> str | list[int]:
    """A completion prompt: a string, token ids, or a one-element array of either (n is always 1)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (size {vocab_size})", param="prompt")
        return list(prompt)
    if prompt is None:
        raise ApiError(400, "prompt is required", param="prompt")
    raise ApiError(400, "prompt must be a string, a non-empty array of token ids, or an array holding one "
                        "of those (batches are not supported)", param="prompt")


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "stop must be a non-empty string or an array of them", param="stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop may hold at most {MAX_STOP_STRINGS} strings", param="stop")
    return list(stop)


def _logit_bias(bias: Any, vocab_size: int) -> dict[int, float] | None:
    """OpenAI's {"token id as a string": bias in [-100, 100]} as {id: bias}."""
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise ApiError(400, "logit_bias must be an object mapping token ids to numbers", param="logit_bias")
    out = {}
    for key, value in bias.items():
        if not re.fullmatch(r"[0-9]{1,9}", key) or int(key) >= vocab_size:
            raise ApiError(400, f"logit_bias key {key!r} is not a token id of this model (0..{vocab_size - 1})",
                           param="logit_bias")
        if not _is_number(value) or not -100 <= value <= 100:
            raise ApiError(400, f"logit_bias values must be numbers from -100 to 100, got {value!r}",
                           param="logit_bias")
        out[int(key)] = float(value)
    return out or None


def _seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if type(seed) is not int:
        raise ApiError(400, "seed must be an integer", param="seed")
    # numpy seeds must be non-negative; OpenAI's are signed 64-bit, so fold the negative ones in.
    return seed % (1 << 64) if seed < 0 else seed


def _is_number(value: Any) -> bool:
    # An int is always finite, and math.isfinite() would overflow converting one beyond float's range.
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value):
        raise ApiError(400, f"{name} must be a number", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo:g} and {hi:g}, got {value}", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int:  # bool is an int subclass in Python, but not a JSON integer
        raise ApiError(400, f"{name} must be an integer", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}", param=name)
    return value


def _boolean(body: Mapping[str, Any], name: str, default: bool, *, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{param or name} must be true or false", param=param or name)
    return value
