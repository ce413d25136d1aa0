"""The PagerDuty REST client against the drill's stand-in: the documented request shape and its rate limit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runbook.clients.pagerduty import PagerDutyClient, PagerDutyRestClient
from runbook.drill import DrillStack
from runbook.drill.pagerduty import ONCALL_USER
from runbook.errors import AuthError


@pytest.fixture
def pd(stack: DrillStack) -> Iterator[DrillStack]:
    """The stack with a clean PagerDuty account; reset afterwards."""
    stack.pagerduty.reset()
    yield stack
    stack.pagerduty.reset()
    stack.pagerduty.rest_limit = 960


async def test_incidents_of_a_dedup_key_name_who_acknowledged(pd: DrillStack) -> None:
    """A trigger opens an incident for its dedup key; after Acknowledge in the app the REST view names the user."""
    settings = pd.settings()
    async with PagerDutyClient.from_settings(settings) as events:
        await events.trigger("inc-20260101-abcdef", "[P0] down (inc-20260101-abcdef)")
    async with PagerDutyRestClient.from_settings(settings) as rest:
        [before] = await rest.incidents("inc-20260101-abcdef")
        assert before.status == "triggered" and before.person() is None
        pd.pagerduty.press_acknowledge("inc-20260101-abcdef")
        [after] = await rest.incidents("inc-20260101-abcdef")
        assert await rest.incidents("inc-20260101-000000") == []
    assert after.status == "acknowledged" and after.person()["id"] == ONCALL_USER["id"]
    [read, *_] = pd.pagerduty.requests_to("/incidents", "GET")
    assert read.headers["accept"] == "application/vnd.pagerduty+json;version=2"
    assert read.headers["authorization"] == f"Token token={pd.pagerduty.api_token}"


async def test_an_integration_ack_is_not_a_person(pd: DrillStack) -> None:
    """An acknowledgement sent through the Events API is the service's, never a user's."""
    settings = pd.settings()
    async with PagerDutyClient.from_settings(settings) as events:
        await events.trigger("inc-20260101-abcdef", "down")
        await events.acknowledge("inc-20260101-abcdef")
    async with PagerDutyRestClient.from_settings(settings) as rest:
        [incident] = await rest.incidents("inc-20260101-abcdef")
    assert incident.status == "acknowledged" and incident.person() is None
    assert incident.acknowledgers[0]["type"] == "service_reference"


async def test_429_waits_for_ratelimit_reset(pd: DrillStack) -> None:
    """Past the REST API's limit the answer is 429 with ratelimit-* headers; the client waits `ratelimit-reset`."""
    pd.pagerduty.rest_limit = 1
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes for the stand-in's window without a real wait
        waits.append(seconds)
        pd.pagerduty.reset_state()

    from runbook.clients.pagerduty import REST_POLICY

    patient = REST_POLICY.with_(max_retry_after=120, max_total_wait=120)
    client = PagerDutyRestClient.from_settings(pd.settings(), policy=patient, sleep=sleep)
    async with client as rest:
        await rest.incidents("inc-20260101-abcdef")
        assert await rest.incidents("inc-20260101-abcdef") == []
    statuses = [r.status for r in pd.pagerduty.requests_to("/incidents")]
    assert statuses == [200, 429, 200] and len(waits) == 1 and 50 <= waits[0] <= 61


async def test_a_wrong_token_is_an_auth_error_without_the_token(pd: DrillStack) -> None:
    """401 is not retried and its message never shows the token."""
    from pydantic import SecretStr

    settings = pd.settings(pagerduty_api_token=SecretStr("u+not-the-token-123456"))
    async with PagerDutyRestClient.from_settings(settings) as rest:
        with pytest.raises(AuthError) as caught:
            await rest.incidents("inc-20260101-abcdef")
    assert "not-the-token" not in str(caught.value)
    assert len(pd.pagerduty.requests_to("/incidents")) == 1
