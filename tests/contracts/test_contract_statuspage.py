"""Statuspage: incidents and components as its published document describes them, paced to one request a second."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from runbook.clients._http import Pacer, RetryPolicy
from runbook.clients.statuspage import StatuspageClient
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import AuthError, RateLimited, RequestRejected
from tests.contracts.contract import Recorder, assert_conforms

VENDOR = "statuspage"


class Clock:
    """A manual monotonic clock whose sleep advances it (pacing without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _unpaced() -> Pacer:
    return Pacer(0.0)


async def test_incident_lifecycle_and_components_conform(drill: DrillStack, recorder: Recorder) -> None:
    """Create, update, resolve, component status and the two lists are documented requests and answers."""
    async with StatuspageClient.from_settings(drill.settings(), pacer=_unpaced()) as page:
        recorder.watch(page.http)
        await page.list_components()
        incident = await page.create_incident("Checkout errors", body="Investigating", impact_override="major",
                                              components={"app": "major_outage"})
        await page.update_incident(incident.id, status="identified", body="Found it")
        await page.list_unresolved_incidents()
        await page.set_component_status("app", "operational")
        await page.update_incident(incident.id, status="resolved", body="Fixed", components={"app": "operational"})
    assert [e.status for e in recorder.exchanges] == [200, 201, 200, 200, 200, 200]
    assert_conforms(VENDOR, recorder.exchanges)


async def test_errors_are_the_documented_message_body(drill: DrillStack, recorder: Recorder,
                                                      fast: RetryPolicy) -> None:
    """401, 404 and 422 answer ErrorEntity {"message"}; the client reports Statuspage's message."""
    settings = drill.settings()
    async with StatuspageClient.from_settings(settings, policy=fast, pacer=_unpaced()) as page:
        recorder.watch(page.http)
        with pytest.raises(RequestRejected, match="could not be found"):
            await page.update_incident("nosuchincident", status="identified")
        with pytest.raises(RequestRejected, match="not found"):
            await page.create_incident("x", components={"nosuchcomponent": "major_outage"})
    bad = settings.model_copy(update={"statuspage_api_key": SecretStr("wrong-key-0000")})
    async with StatuspageClient.from_settings(bad, policy=fast, pacer=_unpaced()) as page:
        recorder.watch(page.http)
        with pytest.raises(AuthError, match="Could not authenticate"):
            await page.list_components()
    assert [e.status for e in recorder.exchanges] == [404, 422, 401]
    assert all(set(e.response_json()) == {"message"} for e in recorder.exchanges)
    assert_conforms(VENDOR, recorder.exchanges)


async def test_a_burst_is_paced_one_request_a_second() -> None:
    """Three calls in a row wait for their slots: 0 s, then 1 s, then 1 s (a manual clock, no real waiting)."""
    clock = Clock()
    pacer = Pacer(1.0, clock=clock)
    waits = []
    for _ in range(3):
        wait = pacer.reserve()
        waits.append(wait)
        await clock.sleep(wait)
    assert waits == [0.0, 1.0, 1.0]
    clock.now += 5  # an idle pause frees the slot: the next call goes at once
    assert pacer.reserve() == 0.0


async def test_the_client_sleeps_for_its_slot(drill: DrillStack) -> None:
    """The client's requests go through its pacer: the second and third wait one second each."""
    clock = Clock()
    async with StatuspageClient.from_settings(drill.settings(), sleep=clock.sleep,
                                              pacer=Pacer(1.0, clock=clock)) as page:
        incident = await page.create_incident("Paced")
        await page.update_incident(incident.id, status="identified")
        await page.set_component_status("app", "degraded_performance")
    assert clock.sleeps == [1.0, 1.0]


async def test_a_burst_past_a_stricter_limit_backs_off_without_retry_after(drill: DrillStack,
                                                                           recorder: Recorder) -> None:
    """Status + update + component, paced a second apart, against a key whose rolling window allows 2 requests in 3 s
    (another process is using it): the third gets the documented 429 `{"message"}` with no Retry-After; the client
    backs off 1-2 s on its own (the shared pacer with it) and the burst lands. Clock and sleeps are the test's."""
    clock = Clock()
    drill.statuspage.rolling_limit, drill.statuspage.rate_clock = (2, 3.0), clock
    async with StatuspageClient.from_settings(drill.settings(), sleep=clock.sleep,
                                              pacer=Pacer(1.0, clock=clock)) as page:
        recorder.watch(page.http)
        incident = await page.create_incident("Checkout errors", components={"app": "major_outage"})
        await page.update_incident(incident.id, status="identified", body="Found it")
        await page.set_component_status("app", "degraded_performance")
    assert [e.status for e in recorder.exchanges] == [201, 200, 429, 200]
    throttled = recorder.exchanges[2]
    assert throttled.response_json() == {"message": "Rate limit exceeded"}
    assert not {"retry-after", "x-ratelimit-reset", "ratelimit-reset"} & set(throttled.response_headers)
    assert clock.sleeps[:2] == [1.0, 1.0] and len(clock.sleeps) == 3  # paced, then one backoff (the pacer agreed)
    assert sum(clock.sleeps) >= 3.0  # the retry went out once the 3 s rolling window had room for it (and landed)
    assert drill.statuspage.component_status("app") == "degraded_performance"
    assert_conforms(VENDOR, recorder.exchanges)


async def test_a_key_that_stays_throttled_backs_off_longer_each_time_then_gives_up(drill: DrillStack,
                                                                                   recorder: Recorder) -> None:
    """A window that never frees: each wait is at least half its doubling cap (1-2, 2-4, 4-8, 8-16 s ...), all of
    them within a minute (the window's length), then RateLimited with Statuspage's own message."""
    clock = Clock()
    drill.statuspage.rolling_limit, drill.statuspage.rate_clock = (1, 3600.0), clock
    async with StatuspageClient.from_settings(drill.settings(), sleep=clock.sleep,
                                              pacer=Pacer(1.0, clock=clock)) as page:
        recorder.watch(page.http)
        await page.list_components()
        with pytest.raises(RateLimited) as caught:
            await page.list_components()
    backoffs = clock.sleeps[1:]  # the first is the pacer's slot
    caps = [min(16.0, 2.0 * 2 ** n) for n in range(len(backoffs))]
    assert len(backoffs) >= 4 and all(cap / 2 <= wait <= cap for wait, cap in zip(backoffs, caps, strict=True))
    assert sum(backoffs) <= 60
    assert set(e.status for e in recorder.exchanges[1:]) == {429}
    assert "Rate limit exceeded" in str(caught.value) and caught.value.use == "read"
    assert_conforms(VENDOR, recorder.exchanges)


async def test_420_is_rate_limited_too(drill: DrillStack, fast: RetryPolicy) -> None:
    """The older 420 the document names is a RateLimited error (retried), like 429; the injected one answers as
    Statuspage does, `{"message"}` and no Retry-After."""
    drill.statuspage.inject(Fault.rate_limit(retry_after=0, times=None, status=420))
    async with StatuspageClient.from_settings(drill.settings(), policy=fast.with_(max_attempts=2),
                                              pacer=_unpaced()) as page:
        with pytest.raises(RateLimited) as caught:
            await page.list_components()
    assert [r.status for r in drill.statuspage.requests] == [420, 420]
    assert caught.value.status == 420 and "Rate limit exceeded" in str(caught.value)
