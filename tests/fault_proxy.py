"""A fault-injecting HTTP proxy on loopback, for testing clients that must survive a loaded
server: per POST it answers 503, answers 429 with `Retry-After`, delays, drops the
connection before forwarding or after the upstream processed the request, or forwards,
as a script says, and logs what it did. GETs always pass (they carry no work to lose).

Plain asyncio streams, HTTP/1.1 with keep-alive and Content-Length bodies only: enough for
httpx and aiohttp clients, small enough to read.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field

import httpx

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 503: "Service Unavailable"}


@dataclass
class Event:
    time: float
    action: str
    path: str
    body_hash: str


@dataclass
class FaultProxy:
    """`script(n)` -> action for the n-th POST (0-based): "pass", "503", "429", "delay",
    "drop_before" or "drop_after". `retry_after_s` goes into every 429."""

    upstream: str
    script: object = lambda n: "pass"
    retry_after_s: int = 1
    delay_s: float = 0.3
    log: list[Event] = field(default_factory=list)

    def start(self) -> "FaultProxy":
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "proxy did not start"
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        """Close the listener and every open connection (clients keep theirs alive)."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def actions(self) -> list[str]:
        return [event.action for event in self.log]

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=120)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None or not await self._answer(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, request: tuple[str, str, dict, bytes], writer) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        method, path, headers, body = request
        action = "pass"
        if method == "POST":
            action = self.script(sum(1 for e in self.log if e.action != "get"))
            self.log.append(Event(time.monotonic(), action, path, hashlib.sha1(body).hexdigest()))
        if action == "drop_before":
            return False
        if action in ("503", "429"):
            extra = {"Retry-After": str(self.retry_after_s)} if action == "429" else {}
            _write(writer, int(action), b'{"error": {"message": "injected", "type": "server_error"}}', extra)
            await writer.drain()
            return True
        if action == "delay":
            await asyncio.sleep(self.delay_s)
        forward = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        response = await self._client.request(method, path, content=body, headers=forward)
        if action == "drop_after":
            return False
        _write(writer, response.status_code, response.content, {"Content-Type": response.headers.get("content-type", "")})
        await writer.drain()
        return True


async def _read_request(reader: asyncio.StreamReader):
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return method, path, headers, body


def _write(writer, status: int, body: bytes, headers: dict) -> None:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items() if v]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
