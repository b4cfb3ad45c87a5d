"""Many requests in flight against an OpenAI-compatible server, each retried until it gets
an answer: what keeps a remote deployment busy and loses nothing when it is loaded.

A remote vLLM or SGLang deployment needs 64-256 requests in flight to be busy, and under
that load it answers some with 429 or 5xx, drops connections or times out. Each request is
retried on those (never on another 4xx: the request itself is wrong) with exponential
backoff and jitter, so retries from many requests do not arrive in lock-step; a
`Retry-After` header replaces the backoff, as the server asked. Results come back in
request order whatever order they finish in. Retrying a request the server had already
processed (the connection dropped on the way back) only repeats a pure computation.

`concurrency` workers each own one connection (an httpx client of its own) and take the
next request when theirs is answered. One shared httpx pool of 256 connections spends
milliseconds of CPU per request managing itself (about 70 requests/s in all, measured in
bench/openai_backend.py), which would make the client the bottleneck; clients of one
connection each share a single TLS context, since building one per client costs ~30 ms.
The clients live on one event loop in a background thread for the backend's life, so the
runner's batches after the first reuse their open connections.
"""
from __future__ import annotations

import asyncio
import random
import ssl
import threading
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from qfid.errors import QfidError

RETRY_STATUSES = frozenset({408, 409, 425, 429})  # and every 5xx
MAX_RETRY_AFTER_S = 300.0


class ServerRefused(QfidError):
    """A 4xx that retrying cannot fix; `status` lets a caller adapt (e.g. max_tokens 0 -> 1)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number `attempt` (0-based): the server's Retry-After when it
        sent one, else half the exponential step plus a random part of the other half."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        step = min(self.max_delay_s, self.base_delay_s * 2 ** attempt)
        return step / 2 + self.rng.uniform(0, step / 2)


@dataclass(slots=True)
class RequestStats:
    """Live counters for the progress bar (read from another thread; ints, so no lock)."""

    in_flight: int = 0
    sent: int = 0
    retries: int = 0


class RetryingClient:
    def __init__(self, base_url: str, api_key: str, concurrency: int = 32, timeout_s: float = 300.0,
                 policy: RetryPolicy | None = None, transport=None):
        if concurrency < 1:
            raise QfidError(f"--concurrency must be at least 1; got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.policy = policy or RetryPolicy()
        self.transport = transport
        self.stats = RequestStats()
        self._tls = ssl.create_default_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: list = []

    def get(self, path: str) -> dict:
        """One GET, no retries (used for optional facts such as /models)."""
        import httpx

        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout_s,
                          transport=self.transport) as client:
            response = client.get(path)
        response.raise_for_status()
        return response.json()

    def post_all(self, path: str, bodies: list[dict]) -> list[dict]:
        """POST every body, `concurrency` at a time; the JSON answers in body order."""
        if not bodies:
            return []
        future = asyncio.run_coroutine_threadsafe(self._post_all(path, bodies), self._event_loop())
        return future.result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="qfid-openai-client", daemon=True).start()
        return self._loop

    async def _post_all(self, path: str, bodies: list[dict]) -> list[dict]:
        results: list[dict] = [{}] * len(bodies)
        todo = iter(range(len(bodies)))  # shared by the workers; one event loop, so no lock
        workers = [asyncio.ensure_future(self._worker(self._client(i), path, bodies, todo, results))
                   for i in range(min(self.concurrency, len(bodies)))]
        try:
            await asyncio.gather(*workers)
        finally:  # the first failure ends the call: the other workers stop too
            for worker in workers:
                worker.cancel()
        return results

    def _client(self, index: int):
        """Worker `index`'s client of one connection, kept for later calls."""
        import httpx

        while len(self._clients) <= index:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            self._clients.append(httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout_s,
                                                   limits=limits, transport=self.transport, verify=self._tls))
        return self._clients[index]

    async def _worker(self, client, path: str, bodies: list[dict], todo, results: list[dict]) -> None:
        for index in todo:
            results[index] = await self._post(client, path, bodies[index])

    async def _post(self, client, path: str, body: dict) -> dict:
        last = "no answer"
        for attempt in range(self.policy.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.in_flight += 1
            self.stats.sent += 1
            try:
                answer, retry_after, last = await self._attempt(client, path, body)
            finally:
                self.stats.in_flight -= 1
            if answer is not None:
                return answer
            if attempt < self.policy.max_retries:
                await asyncio.sleep(self.policy.delay(attempt, retry_after))
        raise QfidError(f"{self.base_url}{path} failed after {self.policy.max_retries} retries; "
                        f"the server's last answer: {last}")

    async def _attempt(self, client, path: str, body: dict) -> tuple[dict | None, float | None, str]:
        """(JSON answer or None to retry, Retry-After seconds, what happened in one line)."""
        import httpx

        try:
            response = await client.post(path, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            return None, None, f"{type(exc).__name__}: {exc or 'connection dropped'}"
        summary = f"{response.status_code} {_one_line(response.text)}"
        if response.status_code == 200:
            try:
                return response.json(), None, summary
            except ValueError:  # a truncated body from a dying connection
                return None, None, f"200 with a body that is not JSON: {_one_line(response.text)}"
        if response.status_code in RETRY_STATUSES or response.status_code >= 500:
            return None, _retry_after(response.headers.get("retry-after")), summary
        raise ServerRefused(f"{self.base_url}{path} answered {summary}", response.status_code)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import datetime, timezone

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]
