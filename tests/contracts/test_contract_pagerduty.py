"""PagerDuty Events API v2: what the client sends and the stand-in answers matches PagerDuty's published document."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from runbook.clients._http import RetryPolicy
from runbook.clients.pagerduty import PAGE_POLICY, PagerDutyClient
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import RequestRejected, TransientError
from tests.contracts.contract import Recorder, assert_conforms, check_all
from tests.contracts.rate_limits import RATE_LIMIT_HEADER

VENDOR = "pagerduty-events"


async def test_trigger_acknowledge_resolve_conform(drill: DrillStack, recorder: Recorder) -> None:
    """A page, its acknowledgement and its resolution are documented requests with documented answers."""
    async with PagerDutyClient.from_settings(drill.settings()) as pd:
        recorder.watch(pd.http)
        await pd.trigger("inc-contract-1", "Health check failing", custom_details={"rule": "health"})
        await pd.acknowledge("inc-contract-1")
        await pd.resolve("inc-contract-1")
    assert [e.status for e in recorder.exchanges] == [202, 202, 202]
    assert_conforms(VENDOR, recorder.exchanges)


async def test_rejected_and_throttled_answers_conform(drill: DrillStack, recorder: Recorder,
                                                      fast: RetryPolicy) -> None:
    """A 400 (bad routing key), a 429 and a 5xx are answered in PagerDuty's documented error shape."""
    drill.pagerduty.inject(Fault.rate_limit(retry_after=0, times=1))
    drill.pagerduty.inject(Fault.error(503, times=1))
    settings = drill.settings()
    async with PagerDutyClient.from_settings(settings, policy=fast) as pd:
        recorder.watch(pd.http)
        await pd.trigger("inc-contract-2", "Throttled first")
    bad = settings.model_copy(update={"pagerduty_routing_key": SecretStr("R0000000000000000000000000000000")})
    async with PagerDutyClient.from_settings(bad, policy=fast) as pd:
        recorder.watch(pd.http)
        with pytest.raises(RequestRejected):
            await pd.trigger("inc-contract-3", "Wrong key")
    assert [e.status for e in recorder.exchanges] == [429, 503, 202, 400]
    assert_conforms(VENDOR, recorder.exchanges)


class Sleeps:
    """A sleep that only records (PagerDuty's minutes of backoff without waiting them)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def test_a_page_is_retried_for_minutes_with_growing_backoff(drill: DrillStack) -> None:
    """While PagerDuty answers 5xx the page is retried with exponential backoff for minutes (not ~30 s), then fails."""
    drill.pagerduty.inject(Fault.error(503, times=None))
    sleeps = Sleeps()
    retries: list[int] = []

    async def on_retry(attempt: int, error: Exception, delay: float) -> None:
        retries.append(attempt)

    async with PagerDutyClient.from_settings(drill.settings(), sleep=sleeps) as pd:
        with pytest.raises(TransientError):
            await pd.trigger("inc-contract-5xx", "PagerDuty down", on_retry=on_retry)
    assert 300 < sum(sleeps.delays) <= PAGE_POLICY.max_total_wait
    assert all(d <= min(PAGE_POLICY.max_delay, PAGE_POLICY.base_delay * 2 ** n) for n, d in enumerate(sleeps.delays))
    assert len(drill.pagerduty.requests) == len(sleeps.delays) + 1 and retries == list(range(1, len(sleeps.delays) + 1))


async def test_an_injected_429_is_pagerdutys_own_and_is_backed_off(drill: DrillStack, recorder: Recorder) -> None:
    """An injected 429 answers as the Events API's own limit (no Retry-After or any rate-limit header: PagerDuty
    documents none), so the page backs off by itself, each wait at least half of a doubling cap, then lands."""
    drill.pagerduty.inject(Fault.rate_limit(retry_after=120, times=2))
    sleeps = Sleeps()
    async with PagerDutyClient.from_settings(drill.settings(), sleep=sleeps) as pd:
        recorder.watch(pd.http)
        result = await pd.trigger("inc-contract-429", "Throttled twice")
    assert result.status == "success" and [e.status for e in recorder.exchanges] == [429, 429, 202]
    assert not any(RATE_LIMIT_HEADER.search(h) for e in recorder.exchanges for h in e.response_headers)
    caps = [min(PAGE_POLICY.max_delay, PAGE_POLICY.base_delay * 2 ** n) for n in range(2)]
    assert len(sleeps.delays) == 2 and all(cap / 2 <= d <= cap for d, cap in zip(sleeps.delays, caps, strict=True))
    assert drill.pagerduty.alert("inc-contract-429") is not None
    assert_conforms(VENDOR, recorder.exchanges)


async def test_a_retry_after_pagerduty_does_not_promise_is_still_honoured(drill: DrillStack,
                                                                          recorder: Recorder) -> None:
    """Should a 429 carry Retry-After anyway (a proxy's; opted in on the stand-in), the page waits as asked and
    lands; the contract check names that header as one PagerDuty does not document."""
    drill.pagerduty.inject(Fault.rate_limit(retry_after=120, times=2, undocumented_retry_after=True))
    sleeps = Sleeps()
    async with PagerDutyClient.from_settings(drill.settings(), sleep=sleeps) as pd:
        recorder.watch(pd.http)
        result = await pd.trigger("inc-contract-retry-after", "Throttled twice, told how long")
    assert sleeps.delays == [120, 120] and result.status == "success"
    problems = check_all(VENDOR, recorder.exchanges)
    assert len(problems) == 2 and all("'retry-after' is not one pagerduty-events documents" in p for p in problems)


async def test_past_the_per_key_limit_a_page_backs_off_until_the_minute_rolls(drill: DrillStack,
                                                                              recorder: Recorder) -> None:
    """PagerDuty takes about 120 events a minute per routing key and answers 429 without Retry-After past it: the
    page backs off (on a clock the stand-in's rolling window reads) until the window has room, then lands."""
    now = [1000.0]
    drill.pagerduty.events_limit = 3
    drill.pagerduty.events_clock = lambda: now[0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async with PagerDutyClient.from_settings(drill.settings(), sleep=sleep) as pd:
        for n in range(3):
            await pd.trigger(f"inc-contract-burst-{n}", "A burst")
        recorder.watch(pd.http)
        result = await pd.trigger("inc-contract-burst-3", "One too many this minute")
    statuses = [e.status for e in recorder.exchanges]
    assert result.status == "success" and statuses[-1] == 202 and set(statuses[:-1]) == {429}
    assert now[0] >= 1060.0  # not accepted before the first event of the burst left the 60 s window
    assert all("retry-after" not in {k.lower() for k in e.response_headers} for e in recorder.exchanges[:-1])
    assert drill.pagerduty.alert("inc-contract-burst-3") is not None
    assert_conforms(VENDOR, recorder.exchanges)
