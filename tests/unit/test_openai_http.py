"""The openai backend's request layer without a model: backoff with jitter inside its
bounds, Retry-After (seconds or an HTTP date) replacing it, which answers are retried and
which are not, answers in request order, and the live counters."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from qfid.errors import QfidError
from qfid.evals.backends.openai_http import RetryingClient, RetryPolicy, ServerRefused, _retry_after


def test_backoff_doubles_with_jitter_and_retry_after_wins():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0, rng=random.Random(0))
    for attempt, step in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        delays = [policy.delay(attempt, None) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays) and len(set(delays)) > 1
    assert policy.delay(3, 7.0) == 7.0


def test_retry_after_as_seconds_or_http_date():
    assert _retry_after("3") == 3.0 and _retry_after(None) is None and _retry_after("soon") is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= _retry_after(later) <= 30


def _client(handler, **options) -> RetryingClient:
    return RetryingClient("http://fake/v1", "key", policy=RetryPolicy(base_delay_s=0.0, **options),
                          transport=httpx.MockTransport(handler), concurrency=4)


def test_retries_429_5xx_and_drops_then_answers_in_order():
    seen: dict[int, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.content.decode().split(":")[1].strip(" }"))
        seen[n] = seen.get(n, 0) + 1
        if seen[n] == 1 and n % 3 == 0:
            return httpx.Response(429, headers={"Retry-After": "0"})
        if seen[n] == 1 and n % 3 == 1:
            raise httpx.RemoteProtocolError("server disconnected")
        if seen[n] == 2 and n % 3 == 1:
            return httpx.Response(502, text="bad gateway")
        return httpx.Response(200, json={"n": n})

    client = _client(handler)
    assert client.post_all("/completions", [{"n": n} for n in range(9)]) == [{"n": n} for n in range(9)]
    assert client.stats.retries == 3 + 2 * 3 and client.stats.in_flight == 0


def test_client_errors_are_not_retried_and_exhaustion_names_the_last_answer():
    calls = []

    def refuse(request):
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "bad"}})

    with pytest.raises(ServerRefused, match="answered 400") as refused:
        _client(refuse).post_all("/completions", [{}])
    assert refused.value.status == 400 and len(calls) == 1
    with pytest.raises(QfidError, match=r"failed after 2 retries; the server's last answer: 503 overloaded"):
        _client(lambda request: httpx.Response(503, text="overloaded"), max_retries=2).post_all("/completions", [{}])
