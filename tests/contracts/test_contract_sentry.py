"""Sentry: the Discover reads are documented queries (dataset `spans`, not `transactions`) with documented answers."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from runbook.clients._http import RetryPolicy
from runbook.clients.sentry import SentryClient
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from tests.contracts.contract import Recorder, assert_conforms

VENDOR = "sentry"


async def _serve(drill: DrillStack, ok: int, failed_logins: int) -> None:
    async with httpx.AsyncClient(base_url=drill.urls["app"]) as http:
        for _ in range(ok):
            await http.get("/")
        for _ in range(failed_logins):
            await http.post("/api/auth/profile", headers={"Authorization": "Bearer wrong"})


async def test_every_sentry_reading_conforms(drill: DrillStack, recorder: Recorder) -> None:
    """Errors, requests, routes, failed logins and the series are documented queries with documented answers."""
    drill.sentry.reset()
    await _serve(drill, ok=4, failed_logins=2)
    drill.sentry.capture("TypeError: boom", transaction="/")
    async with SentryClient.from_settings(drill.settings()) as sentry:
        recorder.watch(sentry.http)
        traffic = await sentry.traffic("5m", auth_window="1m")
        rate = await sentry.error_rate("15m")
        await sentry.error_series("30m", interval=60)
    assert (traffic.requests, traffic.auth_failures, traffic.gaps) == (6, 2, {})
    assert rate.requests == 6 and rate.requests_gap is None
    assert {e.url.params["dataset"] for e in recorder.exchanges} == {"spans", "errors"}
    assert_conforms(VENDOR, recorder.exchanges)


async def test_request_count_counts_segment_spans_not_every_span(drill: DrillStack) -> None:
    """Each request has child spans: the count is of segment spans (is_transaction:true), one per request."""
    drill.sentry.reset()
    for _ in range(3):
        drill.sentry.capture_transaction("/", child_spans=4)
    async with SentryClient.from_settings(drill.settings()) as sentry:
        assert await sentry.request_count("15m") == 3


async def test_the_retired_transactions_dataset_is_refused(drill: DrillStack) -> None:
    """The stand-in, like the document, knows no `transactions` dataset: a 400 in Sentry's error shape."""
    async with httpx.AsyncClient(base_url=drill.urls["sentry"]) as http:
        response = await http.get(f"/api/0/organizations/{drill.sentry.org}/events/",
                                  params={"dataset": "transactions", "field": "count()"},
                                  headers={"Authorization": f"Bearer {drill.sentry.token}"})
    assert response.status_code == 400 and "Invalid dataset" in response.json()["detail"]


async def test_a_refused_query_is_a_loud_named_gap(drill: DrillStack, recorder: Recorder,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """When Sentry refuses the spans queries every reading is None, named in `gaps` with Sentry's detail, and logged."""
    drill.sentry.reset()
    drill.sentry.performance = False
    async with SentryClient.from_settings(drill.settings()) as sentry:
        recorder.watch(sentry.http)
        with caplog.at_level(logging.WARNING, logger="runbook.clients.sentry"):
            traffic = await sentry.traffic("5m", auth_window="1m")
            rate = await sentry.error_rate("15m")
    assert (traffic.requests, traffic.auth_failures, traffic.routes) == (None, None, None)
    assert set(traffic.gaps) == {"requests", "auth_failures", "routes"}
    assert all("HTTP 400" in g and "Tracing is not enabled" in g for g in traffic.gaps.values())
    assert rate.requests is None and rate.requests_gap == traffic.gaps["requests"]
    assert {r.getMessage().split(" is a gap")[0] for r in caplog.records} >= {
        "sentry requests", "sentry auth_failures", "sentry routes"}
    assert_conforms(VENDOR, recorder.exchanges)


async def test_throttled_and_unauthorised_answers_conform(drill: DrillStack, recorder: Recorder,
                                                          fast: RetryPolicy) -> None:
    """A 429 with Retry-After and a 401 are answered in Sentry's error shape."""
    drill.sentry.inject(Fault.rate_limit(retry_after=0, times=1))
    settings = drill.settings()
    async with SentryClient.from_settings(settings, policy=fast) as sentry:
        recorder.watch(sentry.http)
        await sentry.error_count("15m")
    bad = settings.model_copy(update={"sentry_token": settings.sentry_token.__class__("sntrys_wrong")})
    async with SentryClient.from_settings(bad, policy=fast) as sentry:
        recorder.watch(sentry.http)
        assert await sentry.request_count("15m") is None
    assert [e.status for e in recorder.exchanges] == [429, 200, 401]
    assert_conforms(VENDOR, recorder.exchanges)


async def test_past_the_documented_window_limit_the_read_waits_for_its_reset(drill: DrillStack,
                                                                             recorder: Recorder) -> None:
    """Sentry counts requests per caller and endpoint in fixed windows and says so in X-Sentry-Rate-Limit-* on every
    answer; past the limit its 429 has no Retry-After, so the client waits until X-Sentry-Rate-Limit-Reset."""
    reset = (int(time.time() + 15) // 10 + 1) * 10.0  # a window boundary 15-25 s from now (Retry-After's bound: 30)
    now = [reset - 5]
    drill.sentry.rate_limit, drill.sentry.rate_window, drill.sentry.rate_clock = 2, 10.0, lambda: now[0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds  # the stand-in's window rolls while the client waits

    async with SentryClient.from_settings(drill.settings(), sleep=sleep) as sentry:
        recorder.watch(sentry.http)
        for _ in range(3):
            assert await sentry.error_count("15m") is not None
    assert [e.status for e in recorder.exchanges] == [200, 200, 429, 200]
    throttled = recorder.exchanges[2].response_headers
    assert "retry-after" not in {k.lower() for k in throttled}
    assert int(throttled["x-sentry-rate-limit-reset"]) == reset
    assert [e.response_headers["x-sentry-rate-limit-remaining"] for e in recorder.exchanges] == ["1", "0", "0", "1"]
    assert len(waits) == 1 and 1 < waits[0] <= 25  # until the reset (the backoff would be under 0.5 s)
    assert_conforms(VENDOR, recorder.exchanges)
