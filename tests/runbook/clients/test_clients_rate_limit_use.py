"""A rate limit whose reset is far away, decided per use: a read gives up at once, an action waits within its timeout.

Against the Vercel stand-in, whose 429 (an injected one too) is Vercel's own: no Retry-After, `X-RateLimit-Reset`
in UTC epoch seconds. The client's long waits are recorded, not waited; its short polls really sleep.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from runbook.clients._http import RetryPolicy, acting, retry_call
from runbook.clients.vercel import VercelClient
from runbook.drill import DrillStack, Fault
from runbook.errors import RateLimited
from runbook.monitoring.probes import probe_failure
from runbook.settings import Settings


class Sleeps:
    """The client's sleeps: waits over a second are recorded only (a rate limit's), shorter ones (polls) happen."""

    def __init__(self) -> None:
        self.long: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if seconds > 1:
            self.long.append(seconds)
        else:
            await asyncio.sleep(seconds)


async def test_a_read_gives_up_at_once_saying_until_when(drill: DrillStack, settings: Settings) -> None:
    """A monitor-cycle read (the project) meets a reset 90 s away: one request, no wait, RateLimited "rate limited
    until <time>" as a read; the monitor files it as a rate_limited gap with that text."""
    drill.vercel.inject(Fault.rate_limit(retry_after=90, times=None, path=f"/v9/projects/{drill.vercel.project_id}"))
    sleeps = Sleeps()
    async with VercelClient.from_settings(settings, sleep=sleeps) as vercel:
        with pytest.raises(RateLimited) as caught:
            await vercel.project()
    error = caught.value
    assert len(drill.vercel.requests) == 1 and sleeps.long == []
    assert error.use == "read" and error.until is not None
    assert 85 <= (error.until - datetime.now(UTC)).total_seconds() <= 92
    assert f"rate limited until {error.until:%Y-%m-%d %H:%M:%S} UTC" in str(error)
    assert "a read gives up at once when the reset is more than 30 s away" in str(error)
    assert "too_many_requests: Rate limit exceeded" in str(error)  # Vercel's own code and message kept
    gap = probe_failure(error)
    assert gap.kind == "rate_limited" and "rate limited until" in gap.message


async def test_a_rollback_waits_for_a_reset_within_its_timeout(drill: DrillStack, settings: Settings) -> None:
    """The rollback's request meets a reset 60 s away, within its 120 s timeout: waited, retried, production moved."""
    candidate = drill.vercel.rollback_candidates()[0]
    path = f"/v9/projects/{drill.vercel.project_id}/rollback/{candidate.id}"
    drill.vercel.inject(Fault.rate_limit(retry_after=60, times=1, path=path))
    sleeps = Sleeps()
    async with VercelClient.from_settings(settings, sleep=sleeps, poll_interval=0.05) as vercel:
        job = await vercel.rollback(candidate.id, timeout=120)
    assert job.succeeded and drill.vercel.production().id == candidate.id
    assert len(sleeps.long) == 1 and 58 <= sleeps.long[0] <= 61  # until the reset, not the 30 s bound of a read
    assert [r.status for r in drill.vercel.requests_to(path)] == [429, 201]


async def test_a_rollback_whose_timeout_ends_before_the_reset_gives_up_as_an_action(drill: DrillStack,
                                                                                    settings: Settings) -> None:
    """A reset 200 s away and a 120 s rollback: given up at once (no pointless wait), the error saying it was the
    action's timeout, not a read's bound; production untouched."""
    before = drill.vercel.production().id
    candidate = drill.vercel.rollback_candidates()[0]
    path = f"/v9/projects/{drill.vercel.project_id}/rollback/{candidate.id}"
    drill.vercel.inject(Fault.rate_limit(retry_after=200, times=None, path=path))
    sleeps = Sleeps()
    async with VercelClient.from_settings(settings, sleep=sleeps, poll_interval=0.05) as vercel:
        with pytest.raises(RateLimited) as caught:
            await vercel.rollback(candidate.id, timeout=120)
    error = caught.value
    assert error.use == "action" and "rate limited until" in str(error)
    assert "the rollback has 120 s left of its 120 s timeout" in str(error)
    assert sleeps.long == [] and len(drill.vercel.requests_to(path)) == 1
    assert drill.vercel.production().id == before


async def test_an_action_waits_no_longer_than_its_time_left() -> None:
    """Inside an action the bound is the time left, on the action's clock: 50 s left waits a 40 s reset, then
    refuses the next (40 s more would pass the deadline), as an action."""
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async def attempt() -> None:
        raise RateLimited("vendor", "promote", 40.0)

    with acting("promote", 90, clock=lambda: now[0]), pytest.raises(RateLimited) as caught:
        now[0] = 40.0  # 50 s left
        await retry_call(attempt, policy=RetryPolicy(max_retry_after=30), sleep=sleep, read=False)
    assert waits == [40.0] and caught.value.use == "action"
    assert "the promote has 10 s left of its 90 s timeout" in str(caught.value)


def test_the_reset_time_is_in_the_message_in_utc() -> None:
    """The wall-clock time the limit ends is printed in UTC whatever the local zone."""
    until = datetime.fromtimestamp(time.time() + 60, UTC)
    error = RateLimited("vercel", "get project", 60.0, detail="too_many_requests: Rate limit exceeded", until=until)
    assert str(error) == (f"vercel get project failed (HTTP 429): rate limited until {until:%Y-%m-%d %H:%M:%S} UTC; "
                          "too_many_requests: Rate limit exceeded")
