"""The server's single decoding worker: every model call happens on its one thread, requests interleaved.

A Model is not safe to call from two threads (one shared kernel thread pool and scratch buffers), so HTTP
handler threads never touch it: they submit a Job and read the job's events. The worker takes one step
(a token, or a chunk of a prompt) of every active generation in turn, so all streams progress together
instead of waiting for each other; `max_active=1` turns that into a plain first-come queue, for comparison.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .openai_protocol import ApiError, GenerationRequest

if TYPE_CHECKING:
    from ..runtime.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """The last event of a job that ran to its end (or its time limit)."""

    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


Event = str | Finished | ApiError  # a text piece, then exactly one Finished or ApiError


class Job:
    """One submitted request: its events arrive on `events` in order; `cancel()` stops it early."""

    def __init__(self, request: GenerationRequest, deadline: float) -> None:
        self.request = request
        self.deadline = deadline  # time.monotonic() after which the worker ends the generation
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self.generation: Any = None  # the model's Generation; touched only by the worker thread

    def cancel(self) -> None:
        """Stop the generation at the worker's next turn (the client went away)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Scheduler:
    """Owns the model's thread; `submit` from any thread."""

    def __init__(
        self, model: Model, *, cache: Any = None, max_active: int = 0, max_pending: int = 256,
    ) -> None:
        """max_active: generations interleaved at once (0: all); max_pending: jobs queued or running
        before submit refuses with 429."""
        if max_active < 0 or max_pending < 1:
            raise ValueError("max_active must be >= 0 and max_pending >= 1")
        self.model = model
        self.cache = cache
        self.max_active = max_active
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []  # only the worker changes it, under _cond
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rwkv-edge-decoder", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, timeout: float) -> Job:
        """Queue a request; it must finish within `timeout` seconds from now, queueing included."""
        job = Job(request, time.monotonic() + timeout)
        with self._cond:
            if self._closed:
                raise ApiError(503, "the server is shutting down", type="server_error")
            if len(self._waiting) + len(self._active) >= self.max_pending:
                raise ApiError(429, f"the server is busy ({self.max_pending} requests in progress); retry later",
                               type="rate_limit_error", code="rate_limit_exceeded")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def active_count(self) -> int:
        """Generations the worker is stepping now."""
        with self._cond:
            return len(self._active)

    def pending_count(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._waiting) + len(self._active)

    def close(self) -> None:
        """Stop the worker: running and queued jobs end with a 503 error event."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._active):
                    self._cond.wait()
                if self._closed:
                    break
                while self._waiting and (self.max_active == 0 or len(self._active) < self.max_active):
                    self._active.append(self._waiting.popleft())
                jobs = list(self._active)
            finished = [job for job in jobs if not self._step(job)]
            if finished:
                with self._cond:
                    self._active = [job for job in self._active if job not in finished]
        with self._cond:
            leftover = [*self._active, *self._waiting]
            self._active, self._waiting = [], deque()
        for job in leftover:
            self._end(job)
            job.events.put(ApiError(503, "the server is shutting down", type="server_error"))

    def _step(self, job: Job) -> bool:
        """Advance one job by one piece; False once it has ended (its last event is queued).

        Nothing a job does may end the worker: every server request would then wait forever.
        """
        try:
            event = self._advance(job)
        except ValueError as err:  # a prompt the model refuses (no tokenizer, id out of range, ...)
            event = ApiError(400, _one_line(err))
        except Exception as err:
            log.exception("generation failed")
            event = ApiError(500, f"internal error: {type(err).__name__}: {_one_line(err)}", type="server_error")
        if event is None:
            return True
        job.events.put(event)
        if isinstance(event, str):
            return True
        self._end(job)
        return False

    def _advance(self, job: Job) -> Event | None:
        """The job's next event: a piece, or its last event; None while its prompt is still being fed."""
        if job.cancelled:
            return ApiError(499, "the client closed the request")  # nobody reads it: the handler has gone
        if time.monotonic() > job.deadline:
            # A time limit is a length limit in OpenAI's terms: the text so far is returned as it is.
            return self._finished(job, "length")
        if job.generation is None:
            request = job.request
            job.generation = self.model.generate(request.prompt, cache=self.cache, **request.options)
        # A chunk of the prompt per turn: other streams go on, and a cancel or the time limit is seen.
        if not job.generation.prefill():
            return None
        try:
            piece: str = next(job.generation)
            return piece
        except StopIteration:
            return self._finished(job, job.generation.finish_reason)

    def _finished(self, job: Job, finish_reason: str) -> Finished:
        gen = job.generation
        if gen is not None:
            return Finished(finish_reason, gen.prompt_tokens, gen.completion_tokens)
        prompt = job.request.prompt  # timed out in the queue: nothing generated, the prompt still counted
        tokenizer = self.model.tokenizer
        if isinstance(prompt, str):
            return Finished(finish_reason, len(tokenizer.encode(prompt)) if tokenizer is not None else 0, 0)
        return Finished(finish_reason, len(prompt), 0)

    @staticmethod
    def _end(job: Job) -> None:
        if job.generation is not None:
            job.generation.close()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
