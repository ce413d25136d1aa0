"""A pending page is for an open incident only: once the incident is resolved, no sender (the escalation's wait loop,
a re-run or sweep, the page's own retry loop) sends it any more, and the timeline says why; while a page is not
delivered #incidents is told so, and told again when it lands."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from runbook.clock import ManualClock, use_clock
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import RequestRejected
from runbook.models import EventKind, Incident, Severity, Status
from runbook.policy import Contact, Policy
from runbook.store import open_store
from tasks.pagerduty import page_contact, pending_pages, resend_pending_pages, send_pending_pages
from tests.waiting import eventually

RESOLVED_FIRST = "Page to On-Call Engineer (Dana) not sent: the incident was resolved before PagerDuty accepted it"


@pytest.fixture
async def incident(drill_env: DrillStack) -> Incident:
    """Declare a P0 incident in a fresh store."""
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Checkout down", severity=Severity.P0, scenario="payment",
                                              fingerprint="pd-retry-resolved"))
    return inc


def _triggers(drill_env: DrillStack, key: str) -> int:
    """Return how many trigger events PagerDuty received for a dedup key (refused ones included)."""
    return sum(1 for r in drill_env.pagerduty.requests_to("/v2/enqueue")
               if r.json.get("dedup_key") == key and r.json.get("event_action") == "trigger")


async def _resolve(incident_id: str) -> None:
    async with open_store() as store:
        await store.transition(incident_id, Status.RESOLVED, summary="verified: service healthy")


async def _page_notes(incident_id: str) -> list[str]:
    async with open_store() as store:
        return [e.summary for e in await store.timeline(incident_id) if e.details.get("dedup_key")]


def _oncall() -> Contact:
    contact = Policy().chain()[0]
    return contact.model_copy(update={"name": "Dana"})


async def test_a_refused_page_is_not_sent_once_the_incident_is_resolved(incident: Incident,
                                                                        drill_env: DrillStack) -> None:
    """PagerDuty refused the page (pending, next try due later); the incident is resolved meanwhile: when the try
    is due, the wait loop's resend sends nothing, closes the page with the reason, and nothing is left pending."""
    drill_env.pagerduty.inject(Fault.error(400, times=1))
    with use_clock(ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))) as clock:
        with pytest.raises(RequestRejected):
            await page_contact.fn(incident, _oncall())
        assert [p["state"] for p in await pending_pages(incident.id)] == ["failed"]
        await _resolve(incident.id)
        clock.advance(timedelta(hours=1))  # well past the page's next try
        assert await send_pending_pages(incident) == []
        assert await resend_pending_pages.fn(incident) == []  # a re-run or a sweep: nothing either
    assert _triggers(drill_env, incident.id) == 1 and drill_env.pagerduty.alert(incident.id) is None
    assert await pending_pages(incident.id) == []
    notes = await _page_notes(incident.id)
    assert notes[-1] == RESOLVED_FIRST and notes.count(RESOLVED_FIRST) == 1
    async with open_store() as store:
        assert await store.timeline(incident.id, kind=EventKind.PAGED) == []


async def test_a_page_being_retried_stops_when_the_incident_is_resolved(incident: Incident,
                                                                        drill_env: DrillStack) -> None:
    """PagerDuty throttles every trigger; the page's own retry loop is running when the incident is resolved: its
    next retry stops (no trigger after that), the call returns closed and the timeline says why."""
    drill_env.pagerduty.inject(Fault.rate_limit(retry_after=1, times=None))
    sender = asyncio.create_task(page_contact.fn(incident, _oncall()))
    await eventually(lambda: _triggers(drill_env, incident.id) >= 2, "the page to be retried")
    await _resolve(incident.id)
    result = await asyncio.wait_for(sender, timeout=30)
    assert result["sent"] is False and "resolved" in result["closed"]
    tried = _triggers(drill_env, incident.id)
    drill_env.pagerduty.clear_faults()
    assert await send_pending_pages(incident) == [] and await pending_pages(incident.id) == []
    assert _triggers(drill_env, incident.id) == tried and drill_env.pagerduty.alert(incident.id) is None
    assert (await _page_notes(incident.id))[-1] == RESOLVED_FIRST


async def test_a_page_of_a_resolved_incident_is_never_sent_by_a_later_page_call(incident: Incident,
                                                                              drill_env: DrillStack) -> None:
    """A page pending from before the resolution, sent again by a re-run's page_contact: closed, not sent."""
    drill_env.pagerduty.inject(Fault.error(503, times=None))
    with use_clock(ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))):
        result = await page_contact.fn(incident, _oncall(), quick=True)
        assert result["pending"] is True
        await _resolve(incident.id)
        drill_env.pagerduty.clear_faults()
        again = await page_contact.fn(incident, _oncall(), quick=True)
    assert again["sent"] is False and "resolved" in again["closed"]
    assert drill_env.pagerduty.alert(incident.id) is None and await pending_pages(incident.id) == []


async def test_a_page_that_is_not_delivered_is_said_in_incidents_until_it_lands(incident: Incident,
                                                                                drill_env: DrillStack) -> None:
    """PagerDuty down: #incidents hears once that the page to on-call is not delivered and still pending (not at
    every later try); when it lands, #incidents hears that it was delivered."""
    drill_env.pagerduty.inject(Fault.error(503, times=None))
    with use_clock(ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))) as clock:
        assert (await page_contact.fn(incident, _oncall(), quick=True))["pending"] is True
        for _ in range(3):
            clock.advance(timedelta(minutes=5))
            assert await send_pending_pages(incident) == []
        said = [m["text"] for m in drill_env.slack.messages("#incidents")]
        assert len([t for t in said if "NOT delivered" in t]) == 1
        [notice] = [t for t in said if "NOT delivered" in t]
        assert "On-Call Engineer (Dana)" in notice and incident.id in notice and "pending" in notice
        drill_env.pagerduty.clear_faults()
        clock.advance(timedelta(minutes=5))
        assert await send_pending_pages(incident) == [incident.id]
    said = [m["text"] for m in drill_env.slack.messages("#incidents")]
    assert [t for t in said if "delivered now" in t] == [
        f"Page to On-Call Engineer (Dana) for {incident.id} delivered now, after 4 failed tries."]
    assert drill_env.pagerduty.alert(incident.id) is not None


async def test_a_trigger_accepted_as_the_incident_resolves_is_resolved_at_once(incident: Incident,
                                                                               drill_env: DrillStack) -> None:
    """PagerDuty is slow to answer; the incident is resolved while the trigger is on its way: PagerDuty accepted it,
    so the runbook resolves it there at once and says so (nobody stays paged for a resolved incident)."""
    drill_env.pagerduty.inject(Fault.latency(2.0, times=1))
    sender = asyncio.create_task(page_contact.fn(incident, _oncall()))
    await eventually(lambda: _triggers(drill_env, incident.id) == 1, "the trigger to reach PagerDuty")
    await _resolve(incident.id)
    result = await asyncio.wait_for(sender, timeout=30)
    assert result["sent"] is True
    actions = [r.json["event_action"] for r in drill_env.pagerduty.requests_to("/v2/enqueue")]
    assert actions == ["trigger", "resolve"] and drill_env.pagerduty.alert(incident.id)["status"] == "resolved"
    async with open_store() as store:
        notes = [e.summary for e in await store.timeline(incident.id) if e.details.get("late_page")]
    assert notes == ["Page to On-Call Engineer (Dana) landed after the incident was resolved: "
                     "resolved in PagerDuty at once"]


@pytest.mark.usefixtures("prefect_harness")
async def test_the_sweep_closes_the_pending_page_of_a_resolved_incident(incident: Incident,
                                                                       drill_env: DrillStack) -> None:
    """Nothing runs for a resolved incident any more (its escalation is over): the follow-up sweep closes its pending
    page with the reason and sends nothing."""
    from flows.follow_up_sweep import FollowUpSweepParams, follow_up_sweep

    drill_env.pagerduty.inject(Fault.error(503, times=None))
    assert (await page_contact.fn(incident, _oncall(), quick=True))["pending"] is True
    await _resolve(incident.id)
    drill_env.pagerduty.clear_faults()
    outcome = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
    assert outcome.pages_sent == [] and await pending_pages(incident.id) == []
    assert drill_env.pagerduty.alert(incident.id) is None
    assert (await _page_notes(incident.id))[-1] == RESOLVED_FIRST


async def test_a_page_still_being_retried_is_said_in_incidents_before_the_retries_give_up(
        incident: Incident, drill_env: DrillStack) -> None:
    """PagerDuty throttles; while the page's own retry loop goes on (minutes), #incidents hears at its third retry
    that the page is not delivered, once; when PagerDuty takes it, that it was delivered."""
    drill_env.pagerduty.inject(Fault.rate_limit(retry_after=1, times=None))
    sender = asyncio.create_task(page_contact.fn(incident, _oncall()))

    def notices() -> list[str]:
        return [m["text"] for m in drill_env.slack.messages("#incidents") if "NOT delivered" in m["text"]]

    await eventually(notices, "#incidents to hear that the page is not delivered")
    assert not sender.done() and (await pending_pages(incident.id))[0]["state"] == "in-flight"
    await eventually(lambda: _triggers(drill_env, incident.id) >= 5, "two more retries")
    drill_env.pagerduty.clear_faults()
    assert (await asyncio.wait_for(sender, timeout=60))["sent"] is True
    assert len(notices()) == 1
    assert [m["text"] for m in drill_env.slack.messages("#incidents") if "delivered now" in m["text"]] == [
        f"Page to On-Call Engineer (Dana) for {incident.id} delivered now."]
