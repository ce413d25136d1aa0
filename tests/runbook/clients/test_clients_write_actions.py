"""Writes are actions (`acting`), like Vercel's rollback: a rate limit is waited out while the write's timeout allows,
and past it given up at once, saying the write's time ran out; the same client's reads give up at once past the read
bound (30 s). PagerDuty's events, Statuspage's writes, Stripe's resend, Vercel's env var writes, Slack's posts.

PagerDuty's Events API, Statuspage and Stripe document no Retry-After or reset time (their stand-ins' own 429s carry
none), so their throttles here opt one in (`undocumented_retry_after=True`: what a proxy in front of them could send),
the only way to tell these clients "the reset is N s away"; Vercel's and Slack's are their own documented answers.
The waits are recorded on a test clock, not waited.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from runbook.clients.pagerduty import PAGE_POLICY, PagerDutyClient
from runbook.clients.slack import SlackClient
from runbook.clients.statuspage import POLICY as STATUSPAGE_POLICY
from runbook.clients.statuspage import StatuspageClient
from runbook.clients.stripe import StripeClient
from runbook.clients.vercel import VercelClient
from runbook.drill import DrillStack, Fault
from runbook.errors import RateLimited


class Clock:
    """A monotonic clock that the client's sleeps advance (each sleep recorded)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _throttle(seconds: float, *, times: int | None = 1, path: str | None = None) -> Fault:
    return Fault.rate_limit(retry_after=seconds, times=times, path=path, undocumented_retry_after=True)


async def test_a_page_waits_a_reset_past_the_read_bound_within_its_minutes(drill: DrillStack) -> None:
    """A trigger throttled for 400 s (more than PAGE_POLICY's 300 s bound of a plain call) waits it: the page's
    action has 10 minutes; then it lands."""
    drill.pagerduty.inject(_throttle(400))
    clock = Clock()
    async with PagerDutyClient.from_settings(drill.settings(), sleep=clock.sleep) as pd:
        result = await pd.trigger("inc-acting-1", "Throttled for a while")
    assert result.status == "success" and clock.sleeps == [400]
    assert 400 > PAGE_POLICY.max_retry_after and drill.pagerduty.alert("inc-acting-1") is not None


async def test_a_page_whose_reset_is_past_its_timeout_gives_up_at_once_as_an_action(drill: DrillStack) -> None:
    """A reset 700 s away and a 600 s page: no wait, RateLimited as an action naming the page's timeout; the caller
    keeps the page pending."""
    drill.pagerduty.inject(_throttle(700, times=None))
    clock = Clock()
    async with PagerDutyClient.from_settings(drill.settings(), sleep=clock.sleep) as pd:
        with pytest.raises(RateLimited) as caught:
            await pd.trigger("inc-acting-2", "Throttled too long")
    assert clock.sleeps == [] and len(drill.pagerduty.requests_to("/v2/enqueue")) == 1
    assert caught.value.use == "action" and "the trigger event has 600 s left of its 600 s timeout" in str(caught.value)


async def test_a_status_page_write_waits_where_its_read_gives_up(drill: DrillStack) -> None:
    """The same 45 s throttle: listing components (a read) gives up at once past its 30 s bound; setting a
    component (a write, an action of Statuspage's minute) waits the 45 s and lands."""
    clock = Clock()
    async with StatuspageClient.from_settings(drill.settings(), sleep=clock.sleep) as page:
        page.http.pacer = None  # one request at a time here: the pacing has its own tests
        drill.statuspage.inject(_throttle(45))
        with pytest.raises(RateLimited) as caught:
            await page.list_components()
        assert caught.value.use == "read" and clock.sleeps == []
        drill.statuspage.inject(_throttle(45))
        component = await page.set_component_status("app", "degraded_performance")
    assert component.status == "degraded_performance" and clock.sleeps == [45]
    assert 30 < 45 < STATUSPAGE_POLICY.max_total_wait
    assert drill.statuspage.component_status("app") == "degraded_performance"


async def test_a_status_page_write_past_its_minute_gives_up_at_once(drill: DrillStack) -> None:
    """A 90 s throttle on creating an incident (its minute is shorter): no wait, RateLimited as the write's action,
    and no incident."""
    drill.statuspage.inject(_throttle(90, times=None))
    clock = Clock()
    async with StatuspageClient.from_settings(drill.settings(), sleep=clock.sleep) as page:
        page.http.pacer = None
        with pytest.raises(RateLimited) as caught:
            await page.create_incident("Checkout errors")
    assert clock.sleeps == [] and caught.value.use == "action"
    assert "the create incident has 60 s left of its 60 s timeout" in str(caught.value)
    drill.statuspage.clear_faults()
    async with StatuspageClient.from_settings(drill.settings()) as page:
        assert await page.list_unresolved_incidents() == []


async def _failed_event(drill: DrillStack, stripe: StripeClient) -> str:
    drill.inject("stripe-webhook-secret")
    return (await stripe.failed_events())[0].id


async def test_a_stripe_resend_waits_a_reset_within_its_confirm_time(drill: DrillStack) -> None:
    """The resend meets a 40 s throttle (past a plain call's 30 s): the 60 s action waits it, the resend lands, and
    the confirming re-reads get the 20 s left (the app still rejects: reported not delivered)."""
    clock = Clock()
    async with StripeClient.from_settings(drill.settings(), sleep=clock.sleep) as stripe:
        stripe.clock = clock
        event_id = await _failed_event(drill, stripe)
        retry = f"/v1/events/{event_id}/retry"
        drill.stripe.inject(_throttle(40, path=retry))
        [result] = await stripe.resend_events([event_id], confirm_timeout=60, poll_interval=2.0)
    assert [r.status for r in drill.stripe.requests_to(retry, "POST")] == [429, 200]
    assert clock.sleeps[0] == 40 and 0 < sum(clock.sleeps[1:]) <= 20  # the re-reads: the action's time left
    assert result.ok is False and "still pending" in result.detail


async def test_a_stripe_resend_whose_reset_is_past_its_time_is_given_up_at_once(drill: DrillStack) -> None:
    """A 90 s throttle and a 60 s resend: that event is given up at once (no wait, one request), saying the resend's
    time ran out; nothing is re-read."""
    clock = Clock()
    async with StripeClient.from_settings(drill.settings(), sleep=clock.sleep) as stripe:
        stripe.clock = clock
        event_id = await _failed_event(drill, stripe)
        retry = f"/v1/events/{event_id}/retry"
        drill.stripe.inject(_throttle(90, times=None, path=retry))
        [result] = await stripe.resend_events([event_id], confirm_timeout=60)
    assert clock.sleeps == [] and len(drill.stripe.requests_to(retry, "POST")) == 1
    assert result.ok is False and result.status == 429
    assert "the resend event has 60 s left of its 60 s timeout" in result.detail
    assert drill.stripe.requests_to(f"/v1/events/{event_id}", "GET") == []


async def test_a_vercel_env_write_waits_its_reset_within_its_time_and_not_past_it(drill: DrillStack) -> None:
    """Vercel's own 429 (X-RateLimit-Reset, no Retry-After) on the env write: a reset 10 s away is waited and the
    value written; one 45 s away (past the write's 30 s) is given up at once, as the write's action."""
    clock = Clock()
    path = f"/v10/projects/{drill.vercel.project_id}/env"
    async with VercelClient.from_settings(drill.settings(), sleep=clock.sleep) as vercel:
        drill.vercel.inject(Fault.rate_limit(retry_after=10, times=1, path=path))
        await vercel.upsert_env("FEATURE_X", "on")
        assert len(clock.sleeps) == 1 and 9 <= clock.sleeps[0] <= 11
        drill.vercel.inject(Fault.rate_limit(retry_after=45, times=None, path=path))
        with pytest.raises(RateLimited) as caught:
            await vercel.upsert_env("FEATURE_X", "off")
    assert len(clock.sleeps) == 1 and caught.value.use == "action"
    assert "the upsert env has 30 s left of its 30 s timeout" in str(caught.value)
    env = drill.vercel.env_var("FEATURE_X")
    assert env is not None and env.value == "on"


async def test_a_slack_post_is_an_action_too(drill: DrillStack) -> None:
    """Slack documents Retry-After: a post told 45 s (past its 30 s) gives up at once as the post's action; told
    2 s, it waits them and posts."""
    slack = drill.slack
    settings = drill.settings().model_copy(update={
        "slack_bot_token": SecretStr(slack.bot_token), "slack_api_url": f"{slack.base_url}/api",
        "slack_channel_ids": dict(slack.channel_ids)})
    clock = Clock()
    async with SlackClient.from_settings(settings, sleep=clock.sleep) as client:
        slack.inject(Fault.rate_limit(retry_after=45, times=None, path="/api/chat.postMessage"))
        with pytest.raises(RateLimited) as caught:
            await client.post_message("incidents", "told to wait too long")
        slack.clear_faults()
        slack.inject(Fault.rate_limit(retry_after=2, times=1, path="/api/chat.postMessage"))
        await client.post_message("incidents", "told to wait a little")
    assert caught.value.use == "action"
    assert "the chat.postMessage has 30 s left of its 30 s timeout" in str(caught.value)
    assert clock.sleeps == [2] and [m["text"] for m in slack.messages("incidents")] == ["told to wait a little"]
