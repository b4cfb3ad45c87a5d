"""`qfid serve`: an OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn).

Routes: /v1/completions, /v1/chat/completions (the tokenizer's chat template), both with
SSE streaming; /v1/models, /health, Prometheus /metrics. Every error a client can cause
gets a 4xx with OpenAI's error body: 400 for a malformed body, a prompt longer than the
context, `max_tokens` beyond it or `logprobs` above the server's cap, 401 without the API
key (when one is set; /health and /metrics stay open), 404 for another model name, 429 when
the bounded queue is full. A client that disconnects has its sequence aborted, so its KV
blocks go back at once.

Scoring (`echo` with `logprobs`, as vLLM answers it, which lm-eval's `local-completions`
and qfid's own openai backend send) runs through the engine's prompt-logprob path, every
prompt position recomputed: a cached prefix has K/V but no logits.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from qfid.engine import responses as R
from qfid.engine.async_engine import AsyncEngine, EngineError, QueueFull, RequestStream
from qfid.engine.detokenizer import Detokenizer, TextDeltas
from qfid.engine.metrics import render_metrics
from qfid.engine.protocol import ChatCompletionRequest, CompletionRequest
from qfid.engine.sampling import MAX_LOGPROBS
from qfid.errors import QfidError

DISCONNECT_POLL_S = 0.5
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("qfid.server")


class ClientGone(Exception):
    pass


class OpenAIServer:
    """Routes and their helpers; `app` is the FastAPI application."""

    def __init__(self, engine: AsyncEngine, tokenizer, model_name: str, api_key: str | None = None,
                 max_logprobs: int = MAX_LOGPROBS):
        if not 0 <= max_logprobs <= MAX_LOGPROBS:
            raise QfidError(f"the logprobs cap must be between 0 and {MAX_LOGPROBS}; got {max_logprobs}")
        self.engine = engine
        self.tokenizer = tokenizer
        self.text = Detokenizer(tokenizer)
        self.model_name = model_name
        self.max_model_len = engine.engine.max_model_len
        self.max_logprobs = max_logprobs
        self.app = FastAPI(title="qfid", lifespan=self._lifespan)
        self._add_error_handlers()
        if api_key:
            self._require_key(api_key)
        self._add_routes()

    @asynccontextmanager
    async def _lifespan(self, app):
        self.engine.start()
        yield
        self.engine.stop()

    def _add_error_handlers(self) -> None:
        app = self.app

        @app.exception_handler(RequestValidationError)
        async def invalid_body(request, exc: RequestValidationError):
            return _error(400, _describe_validation(exc))

        @app.exception_handler(QfidError)
        async def refused(request, exc: QfidError):
            return _error(400, str(exc))

        @app.exception_handler(QueueFull)
        async def queue_full(request, exc: QueueFull):
            return _error(429, f"server busy: {exc}", kind="rate_limit_error", code="rate_limit_exceeded")

        @app.exception_handler(EngineError)
        async def engine_failed(request, exc: EngineError):
            return _error(500, str(exc), kind="server_error")

        @app.exception_handler(ClientGone)
        async def client_gone(request, exc: ClientGone):
            return _error(499, "client disconnected")

        @app.exception_handler(HTTPException)
        async def http_error(request, exc: HTTPException):
            return _error(exc.status_code, str(exc.detail), kind="invalid_request_error")

    def _require_key(self, api_key: str) -> None:
        """vLLM's rule: every /v1 route needs `Authorization: Bearer KEY`; probes stay open."""
        expected = f"Bearer {api_key}".encode()

        @self.app.middleware("http")
        async def check_key(request: Request, call_next):
            if request.url.path.startswith("/v1"):
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                  code="invalid_api_key")
            return await call_next(request)

    def _add_routes(self) -> None:
        app = self.app
        app.get("/health")(self.health)
        app.get("/v1/models")(self.models)
        app.get("/metrics")(self.metrics)
        app.post("/v1/completions")(self.completions)
        app.post("/v1/chat/completions")(self.chat_completions)

    async def health(self):
        if not self.engine.alive:
            return _error(503, "engine thread is not running", kind="server_error")
        return {"status": "ok"}

    async def models(self):
        card = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "qfid",
                "max_model_len": self.max_model_len}
        return {"object": "list", "data": [card]}

    async def metrics(self):
        return PlainTextResponse(render_metrics(self.engine, self.model_name), media_type="text/plain; version=0.0.4")

    async def completions(self, body: CompletionRequest, request: Request):
        self._check_model(body.model)
        self._check_logprobs(body.logprobs)
        max_tokens = self._check_max_tokens(body.engine_max_tokens())
        prompts = body.prompts()
        token_prompts = [self._tokens(p) for p in prompts]
        params = body.sampling_params(max_tokens, body.logprobs, body.logprobs if body.echo else None)
        streams = await self._submit_all(token_prompts, params)
        response_id = R.new_id("cmpl")
        if body.stream:
            events = self._completion_events(streams, response_id, body.include_usage, body.return_tokens_as_token_ids)
            return StreamingResponse(events, media_type="text/event-stream")
        finals = await self._finish_all(streams, request)
        choices = [self._completion_choice(i, prompt, out, body) for i, (prompt, out) in enumerate(zip(prompts, finals))]
        generated = 0 if body.scores_prompt_only else sum(len(o.token_ids) for o in finals)
        usage = R.usage(sum(len(o.prompt_token_ids) for o in finals), generated)
        return R.envelope(response_id, "text_completion", self.model_name, choices, usage)

    def _completion_choice(self, index: int, prompt: str | list[int], output, body: CompletionRequest) -> dict:
        """One choice; with echo, the prompt's text and tokens lead (its first token's
        logprob is None); a prompt-only request drops the token the engine had to sample."""
        keep = 0 if body.scores_prompt_only else len(output.token_ids)
        text = output.text if keep else ""
        logprobs = None
        if body.logprobs is not None:
            ids, entries = output.token_ids[:keep], output.logprobs[:keep]
            if body.echo:
                ids, entries = output.prompt_token_ids + ids, output.prompt_logprobs + entries
            logprobs = R.completion_logprobs(self.tokenizer, ids, entries, body.logprobs,
                                             as_ids=body.return_tokens_as_token_ids)
        if body.echo:
            text = (prompt if isinstance(prompt, str) else self.text.text(prompt)) + text
        return R.completion_choice(index, text, output.finish_reason if keep else "length", logprobs)

    async def chat_completions(self, body: ChatCompletionRequest, request: Request):
        self._check_model(body.model)
        self._check_logprobs(body.num_logprobs())
        prompt = self._chat_tokens(body)
        if len(prompt) >= self.max_model_len:
            raise QfidError(f"prompt has {len(prompt)} tokens; the context limit is {self.max_model_len}")
        max_tokens = self._check_max_tokens(body.requested_max_tokens() or self.max_model_len - len(prompt))
        params = body.sampling_params(max_tokens, body.num_logprobs())
        streams = await self._submit_all([prompt], params)
        response_id = R.new_id("chatcmpl")
        if body.stream:
            return StreamingResponse(self._chat_events(streams[0], response_id, body.include_usage),
                                     media_type="text/event-stream")
        (final,) = await self._finish_all(streams, request)
        logprobs = self._chat_logprobs(final, params.logprobs)
        choice = R.chat_choice(0, final, logprobs)
        return R.envelope(response_id, "chat.completion", self.model_name, [choice], _usage([final]))

    # -- helpers ------------------------------------------------------------------------

    def _check_model(self, name: str | None) -> None:
        if name and name != self.model_name:
            raise HTTPException(404, f"model {name!r} is not served here; this server serves {self.model_name!r}")

    def _check_logprobs(self, k: int | None) -> None:
        if k is not None and k > self.max_logprobs:
            raise QfidError(f"logprobs {k} is above this server's cap of {self.max_logprobs}")

    def _check_max_tokens(self, max_tokens: int) -> int:
        if max_tokens > self.max_model_len:
            raise QfidError(f"max_tokens {max_tokens} is beyond the context limit of {self.max_model_len}")
        return max_tokens

    def _tokens(self, prompt: str | list[int]) -> list[int]:
        return self.text.encode(prompt) if isinstance(prompt, str) else prompt

    def _chat_tokens(self, body: ChatCompletionRequest) -> list[int]:
        return self.text.encode_chat([{"role": m.role, "content": m.text()} for m in body.messages])

    async def _submit_all(self, prompts: list[list[int]], params) -> list[RequestStream]:
        streams: list[RequestStream] = []
        try:
            for prompt in prompts:
                streams.append(await self.engine.submit(prompt, params))
        except BaseException:
            for stream in streams:
                self.engine.release(stream)
            raise
        return streams

    async def _finish_all(self, streams: list[RequestStream], request: Request) -> list:
        """Final outputs; aborts everything if the client goes away first."""
        task = asyncio.ensure_future(asyncio.gather(*(_last(stream) for stream in streams)))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    raise ClientGone()
            return task.result()
        finally:
            for stream in streams:
                self.engine.release(stream)

    def _completion_logprobs(self, output, k: int | None, first_token: int = 0, as_ids: bool = False) -> dict | None:
        if output.logprobs is None:
            return None
        return R.completion_logprobs(self.tokenizer, output.token_ids[first_token:], output.logprobs[first_token:], k,
                                     as_ids=as_ids)

    def _chat_logprobs(self, output, k: int | None, first_token: int = 0) -> dict | None:
        if output.logprobs is None:
            return None
        return R.chat_logprobs(self.tokenizer, output.token_ids[first_token:], output.logprobs[first_token:], k)

    async def _completion_events(self, streams, response_id: str, include_usage: bool, as_ids: bool = False):
        deltas = [TextDeltas(stream.params.stop) for stream in streams]
        sent_tokens = [0] * len(streams)
        finals = [None] * len(streams)
        try:
            async for index, output in _merged(streams):
                stream = streams[index]
                text = deltas[index].delta(output.text, output.finished)
                logprobs = self._completion_logprobs(output, stream.params.logprobs, sent_tokens[index], as_ids)
                sent_tokens[index] = len(output.token_ids)
                if output.finished:
                    finals[index] = output
                if text or output.finished or logprobs:
                    choice = R.completion_choice(index, text, output.finish_reason, logprobs)
                    yield _sse(R.envelope(response_id, "text_completion", self.model_name, [choice]))
            if include_usage:
                yield _sse(R.envelope(response_id, "text_completion", self.model_name, [], _usage(finals)))
            yield "data: [DONE]\n\n"
        except EngineError as exc:
            yield _sse(R.error_body(str(exc), kind="server_error"))
        finally:
            for stream in streams:
                self.engine.release(stream)

    async def _chat_events(self, stream: RequestStream, response_id: str, include_usage: bool):
        deltas = TextDeltas(stream.params.stop)
        sent_tokens = 0
        kind = "chat.completion.chunk"
        try:
            first = R.chat_chunk_choice(0, {"role": "assistant", "content": ""}, None, None)
            yield _sse(R.envelope(response_id, kind, self.model_name, [first]))
            final = None
            async for output in stream:
                text = deltas.delta(output.text, output.finished)
                logprobs = self._chat_logprobs(output, stream.params.logprobs, sent_tokens)
                sent_tokens = len(output.token_ids)
                final = output if output.finished else None
                if text or output.finished or logprobs:
                    choice = R.chat_chunk_choice(0, {"content": text} if text else {}, output.finish_reason, logprobs)
                    yield _sse(R.envelope(response_id, kind, self.model_name, [choice]))
            if include_usage:
                yield _sse(R.envelope(response_id, kind, self.model_name, [], _usage([final])))
            yield "data: [DONE]\n\n"
        except EngineError as exc:
            yield _sse(R.error_body(str(exc), kind="server_error"))
        finally:
            self.engine.release(stream)


async def _last(stream: RequestStream):
    last = None
    async for output in stream:
        last = output
    return last


async def _merged(streams: list[RequestStream]):
    """(index, output) from several streams as they come."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                await queue.put((index, output))
        except EngineError as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            remaining -= item.finished
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


def _usage(finals: list) -> dict:
    return R.usage(sum(len(o.prompt_token_ids) for o in finals), sum(len(o.token_ids) for o in finals))


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(R.error_body(message, kind, code or status), status_code=status)


def _describe_validation(exc: RequestValidationError) -> str:
    """One line per problem: 'body.max_tokens: Input should be greater than or equal to 1'."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(problems[:5])


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, served_name: str | None = None,
          max_pending: int = 1024, log_level: str = "info", api_key: str | None = None,
          max_logprobs: int = MAX_LOGPROBS, **engine_options) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    from qfid.engine.llm import LLM

    if host not in LOOPBACK_HOSTS and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach it can use it (set --api-key)", host)
    llm = LLM(model, **engine_options)
    name = served_name or str(model).rstrip("/").split("/")[-1]
    server = OpenAIServer(AsyncEngine(llm.engine, max_pending=max_pending), llm.tokenizer, name,
                          api_key=api_key, max_logprobs=max_logprobs)
    uvicorn.run(server.app, host=host, port=port, log_level=log_level)
