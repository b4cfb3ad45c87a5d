"""The engine behind a server: one background thread owns the LLMEngine and steps it while
anything is in flight; asyncio handlers talk to it through a command queue and read their
request's outputs from an asyncio queue.

One owner thread means the scheduler, block manager and KV cache are never touched
concurrently, and a handler never blocks the event loop on a forward pass. Admission is
bounded: past `max_pending` requests in flight, `submit` refuses (the server answers 429)
instead of letting the queue and everyone's latency grow without limit.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from qfid.engine.llm_engine import LLMEngine
from qfid.engine.outputs import RequestOutput
from qfid.engine.sampling import SamplingParams
from qfid.errors import QfidError

log = logging.getLogger("qfid.server")


class QueueFull(Exception):
    """More requests in flight than the server admits."""


class EngineError(RuntimeError):
    """A step failed; the requests that were in flight are aborted."""


@dataclass
class RequestStream:
    """A request's outputs as the engine thread produces them; the last one is finished."""

    loop: asyncio.AbstractEventLoop
    params: SamplingParams
    outputs: asyncio.Queue = field(default_factory=asyncio.Queue)
    accepted: asyncio.Future | None = None
    request_id: int | None = None
    finished: bool = False

    def put(self, item: RequestOutput | BaseException) -> None:
        """Called from the engine thread."""
        self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)

    async def __aiter__(self):
        while not self.finished:
            item = await self.outputs.get()
            if isinstance(item, BaseException):
                self.finished = True
                raise item
            self.finished = item.finished
            yield item


@dataclass
class EngineStats:
    """Counters for /metrics, written by the engine thread only."""

    requests_finished: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0
    recent: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens) of the last steps
    seen: dict[int, int] = field(default_factory=dict)   # request id -> output tokens counted so far

    def record_step(self, outputs: list[RequestOutput], window_s: float = 10.0) -> None:
        """A step may add several tokens to a request (verified speculative drafts): count
        each output's growth since it was last seen."""
        now = time.monotonic()
        self.steps += 1
        new_tokens = 0
        for output in outputs:
            new_tokens += len(output.token_ids) - self.seen.get(output.request_id, 0)
            self.seen[output.request_id] = len(output.token_ids)
            if output.finished:
                del self.seen[output.request_id]
                self.requests_finished += 1
                self.prompt_tokens += len(output.prompt_token_ids)
        self.generation_tokens += new_tokens
        self.recent.append((now, new_tokens))
        while self.recent and self.recent[0][0] < now - window_s:
            self.recent.pop(0)

    def tokens_per_second(self) -> float:
        if len(self.recent) < 2:
            return 0.0
        span = self.recent[-1][0] - self.recent[0][0]
        return sum(n for _, n in self.recent[1:]) / span if span > 0 else 0.0


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_pending: int = 1024):
        self.engine = engine
        self.max_pending = max_pending
        self.stats = EngineStats()
        self.num_rejected = 0
        self._pending = 0
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[int, RequestStream] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qfid-engine", daemon=True)

    @property
    def num_pending(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._commands.put(("wake",))
        self._thread.join(timeout=10)

    async def submit(self, prompt: str | list[int], params: SamplingParams) -> RequestStream:
        """Queue a request; raises QueueFull, or QfidError when the engine refuses it."""
        if self._pending >= self.max_pending:
            self.num_rejected += 1
            raise QueueFull(f"{self._pending} requests in flight; the server admits {self.max_pending}")
        loop = asyncio.get_running_loop()
        stream = RequestStream(loop, params, accepted=loop.create_future())
        self._pending += 1
        self._commands.put(("add", prompt, params, stream))
        try:
            stream.request_id = await stream.accepted
        except BaseException:
            self._pending -= 1
            raise
        return stream

    def release(self, stream: RequestStream) -> None:
        """The handler is done with a stream: abort it if still running, free its slot."""
        if not stream.finished and stream.request_id is not None:
            self._commands.put(("abort", stream.request_id))
        self._pending -= 1

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._drain_commands(block=not self.engine.has_unfinished())
            if self.engine.has_unfinished():
                self._step()

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            while True:
                self._apply(command)
                command = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _apply(self, command: tuple) -> None:
        if command[0] == "add":
            _, prompt, params, stream = command
            try:
                request_id = self.engine.add_request(prompt, params)
            except QfidError as exc:
                stream.loop.call_soon_threadsafe(self._accept, stream, None, exc)
                return
            self._streams[request_id] = stream
            stream.loop.call_soon_threadsafe(self._accept, stream, request_id, None)
        elif command[0] == "abort":
            self.engine.abort(command[1])
            self._streams.pop(command[1], None)
            self.stats.seen.pop(command[1], None)

    def _accept(self, stream: RequestStream, request_id: int | None, error: QfidError | None) -> None:
        """On the event loop: tell the waiting handler; if it has gone, abort the request."""
        if stream.accepted.cancelled():
            if request_id is not None:
                self._commands.put(("abort", request_id))
        elif error is not None:
            stream.accepted.set_exception(error)
        else:
            stream.accepted.set_result(request_id)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # a bug in a step must not take the server down: fail what is in flight
            log.exception("engine step failed; aborting %d requests", len(self._streams))
            for request_id, stream in list(self._streams.items()):
                self.engine.abort(request_id)
                stream.put(EngineError(f"engine error: {type(exc).__name__}: {exc}"))
            self._streams.clear()
            return
        self.stats.record_step(outputs)
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)
                if output.finished:
                    del self._streams[output.request_id]

