"""The shared retry/error policy over real HTTP against the drill stand-ins."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from runbook.clients._http import Pacer, RetryPolicy
from runbook.clients.openai import OpenAIClient
from runbook.clients.pagerduty import PagerDutyClient
from runbook.clients.sentry import SentryClient
from runbook.clients.slack import SlackClient
from runbook.clients.statuspage import StatuspageClient
from runbook.clients.vercel import VercelClient
from runbook.drill import DrillStack, Fault
from runbook.errors import AuthError, RateLimited, RequestRejected, TransientError
from runbook.settings import Settings


class Sleeps:
    """A recorded sleeper on a manual clock: the client's waits advance the clock, none is really waited."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


async def test_rate_limit_with_retry_after_is_waited_then_succeeds(drill: DrillStack, settings: Settings) -> None:
    """Two 429s with Retry-After: 1 (OpenAI sends it) are waited exactly 1 s each; the third attempt succeeds."""
    drill.openai.inject(Fault.rate_limit(retry_after=1, times=2))
    sleeps = Sleeps()
    async with OpenAIClient.from_settings(settings, sleep=sleeps) as openai:
        await openai.liveness()
        waited = openai.http.last.waited
    assert sleeps.waits == [1.0, 1.0] and waited == 2.0
    assert [r.status for r in drill.openai.requests] == [429, 429, 200]


async def test_sentry_rate_limit_is_waited_until_its_reset(drill: DrillStack, settings: Settings) -> None:
    """Sentry's 429 says no Retry-After, only X-Sentry-Rate-Limit-Reset (epoch seconds): waited until then, twice."""
    drill.sentry.inject(Fault.rate_limit(retry_after=1, times=2))
    sleeps = Sleeps()
    async with SentryClient.from_settings(settings, sleep=sleeps) as sentry:
        count = await sentry.error_count("15m")
    assert count >= 0 and len(sleeps.waits) == 2 and all(0 < w <= 2 for w in sleeps.waits)
    assert [r.status for r in drill.sentry.requests_to("/api/0/organizations")] == [429, 429, 200]


async def test_statuspage_420_is_treated_as_rate_limiting(drill: DrillStack, settings: Settings) -> None:
    """Statuspage's 420 is retried like a 429: no Retry-After, so after Statuspage's own 1-2 s backoff."""
    drill.statuspage.inject(Fault.rate_limit(times=1, status=420))
    sleeps = Sleeps()
    async with StatuspageClient.from_settings(settings, sleep=sleeps, pacer=Pacer(1.0, clock=sleeps.clock)) as page:
        components = await page.list_components()
    assert components and [r.status for r in drill.statuspage.requests] == [420, 200]
    assert len(sleeps.waits) == 1 and 1.0 <= sleeps.waits[0] <= 2.0  # the backoff (the key's pacer agreed)


async def test_401_is_not_retried_and_is_a_clear_auth_error(drill: DrillStack, settings: Settings) -> None:
    """A wrong token gets exactly one request and an AuthError naming vendor, operation and status."""
    wrong = "vcp_wrongtoken_" + "x" * 20
    bad = settings.model_copy(update={"vercel_token": SecretStr(wrong)})
    async with VercelClient.from_settings(bad) as vercel:
        with pytest.raises(AuthError) as caught:
            await vercel.list_deployments()
    assert len(drill.vercel.requests) == 1
    error = caught.value
    assert (error.vendor, error.operation, error.status) == ("vercel", "list deployments", 401)
    assert wrong not in str(error) and wrong not in repr(error)


async def test_a_hang_is_bounded_by_the_timeout_retried_then_typed(drill: DrillStack, settings: Settings) -> None:
    """A hanging vendor costs at most attempts × read timeout, is retried, then raises TransientError."""
    drill.openai.inject(Fault.hang(seconds=30))
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, read_timeout=0.4)
    started = time.monotonic()
    try:
        async with OpenAIClient.from_settings(settings, policy=policy) as openai:
            with pytest.raises(TransientError) as caught:
                await openai.liveness()
    finally:
        drill.openai.clear_faults()
    assert time.monotonic() - started < 20  # bounded by 2 x 0.4 s timeouts, not by the 30 s hang (loose: busy CI)
    assert len(drill.openai.requests) == 2
    assert "read timeout" in str(caught.value) and not isinstance(caught.value, RateLimited)


async def test_a_5xx_is_retried_until_success(drill: DrillStack, settings: Settings, fast: RetryPolicy) -> None:
    """Two 503s are retried with backoff and the third attempt's answer is returned."""
    drill.vercel.inject(Fault.error(503, times=2))
    async with VercelClient.from_settings(settings, policy=fast) as vercel:
        deployments = await vercel.list_deployments()
    assert deployments
    assert [r.status for r in drill.vercel.requests] == [503, 503, 200]


async def test_a_400_is_never_retried(drill: DrillStack, settings: Settings, fast: RetryPolicy) -> None:
    """PagerDuty's 400 (invalid routing key) is one request and a RequestRejected without the key."""
    wrong = "R0" + "f" * 30
    bad = settings.model_copy(update={"pagerduty_routing_key": SecretStr(wrong)})
    async with PagerDutyClient.from_settings(bad, policy=fast) as pagerduty:
        with pytest.raises(RequestRejected) as caught:
            await pagerduty.trigger("inc-400", "API down")
    assert len(drill.pagerduty.requests) == 1 and caught.value.status == 400
    assert "routing_key" in str(caught.value) and wrong not in str(caught.value)


async def test_a_reset_beyond_the_bound_is_not_waited_by_a_read(drill: DrillStack, settings: Settings) -> None:
    """A Sentry reset two minutes away (more than max_retry_after) raises RateLimited at once: the read gives up,
    saying until when it is limited, and carries the wait the vendor asked for."""
    drill.sentry.inject(Fault.rate_limit(retry_after=120, times=1))
    sleeps = Sleeps()
    async with SentryClient.from_settings(settings, policy=RetryPolicy(max_retry_after=30), sleep=sleeps) as sentry:
        with pytest.raises(RateLimited) as caught:
            await sentry.error_count()
    assert 119 <= (caught.value.retry_after or 0) <= 121 and sleeps.waits == []
    assert caught.value.use == "read" and "rate limited until" in str(caught.value)
    assert len(drill.sentry.requests) == 1


async def test_a_create_is_not_repeated_after_a_5xx(drill: DrillStack, settings: Settings, fast: RetryPolicy) -> None:
    """A status-page incident create that got a 503 is not re-sent (it may have been created)."""
    drill.statuspage.inject(Fault.error(503, times=1))
    async with StatuspageClient.from_settings(settings, policy=fast) as page:
        with pytest.raises(TransientError):
            await page.create_incident("API errors", body="Investigating")
    assert len(drill.statuspage.requests_to("/v1/pages", "POST")) == 1


async def test_a_refused_connection_is_transient_and_hides_the_webhook(
    drill: DrillStack, settings: Settings, fast: RetryPolicy
) -> None:
    """A refused Slack webhook raises TransientError whose text holds no part of the webhook URL."""
    hook = settings.slack_webhook("incidents")
    assert hook is not None
    drill.slack.inject(Fault.refuse())
    try:
        async with SlackClient.from_settings(settings, policy=fast) as slack:
            with pytest.raises(TransientError) as caught:
                await slack.post("#incidents", "test")
    finally:
        drill.slack.clear_faults()
    token = hook.get_secret_value().rsplit("/", 1)[-1]
    assert token not in str(caught.value) and token not in repr(caught.value)
    assert "ConnectError" in str(caught.value)
