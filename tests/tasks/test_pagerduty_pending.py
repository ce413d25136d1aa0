"""A page is durable: pending on the timeline before it is sent, said to be pending while PagerDuty throttles, and
sent again after a failure or a crash (on the runbook clock, honouring Retry-After) while the incident is open,
never dropped and never sent twice."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from runbook.clock import ManualClock, use_clock
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import RequestRejected
from runbook.models import EventKind, Incident, Severity
from runbook.policy import Policy
from runbook.store import open_store
from tasks.pagerduty import IN_FLIGHT_S, page_contact, pending_pages, resend_pending_pages, send_pending_pages
from tests.waiting import eventually


@pytest.fixture
async def incident(drill_env: DrillStack) -> Incident:
    """Declare a P0 incident in a fresh store."""
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Checkout down", severity=Severity.P0, scenario="payment",
                                              fingerprint="pd-pending"))
    return inc


async def _notes(incident_id: str) -> list[str]:
    async with open_store() as store:
        return [e.summary for e in await store.timeline(incident_id) if e.details.get("dedup_key")]


async def test_a_throttled_page_is_pending_then_paged(incident: Incident, drill_env: DrillStack) -> None:
    """Two 429s: the timeline says pending, still pending, then paged; nothing is left pending."""
    drill_env.pagerduty.inject(Fault.rate_limit(retry_after=0, times=2))
    result = await page_contact.fn(incident, Policy().chain()[0])
    notes = await _notes(incident.id)
    assert result["sent"] and notes[0].endswith("pending") and "still pending" in notes[1]
    assert notes[-1].startswith("Paged") and await pending_pages(incident.id) == []
    assert drill_env.pagerduty.alert(incident.id) is not None


async def test_a_page_that_failed_stays_pending_and_is_sent_again(incident: Incident, drill_env: DrillStack) -> None:
    """A refused page is recorded NOT delivered and stays pending; resending delivers it once, with the same key."""
    drill_env.pagerduty.inject(Fault.error(400, times=1))
    oncall = Policy().chain()[0]
    with pytest.raises(RequestRejected):
        await page_contact.fn(incident, oncall)
    pending = await pending_pages(incident.id)
    assert [p["dedup_key"] for p in pending] == [incident.id] and "NOT delivered" in (await _notes(incident.id))[-1]
    assert await resend_pending_pages.fn(incident) == [incident.id]
    assert await pending_pages(incident.id) == [] and await resend_pending_pages.fn(incident) == []
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind=EventKind.PAGED)) == 1
    assert (await page_contact.fn(incident, oncall))["sent"] is False  # already paged: not again


def _enqueued(drill_env: DrillStack, key: str) -> list[str]:
    """Return the event actions PagerDuty received for a dedup key, in order."""
    return [r.json["event_action"] for r in drill_env.pagerduty.requests_to("/v2/enqueue")
            if r.json.get("dedup_key") == key]


async def _page_state(incident_id: str) -> dict:
    [page] = await pending_pages(incident_id)
    return page


async def test_a_page_throttled_past_its_retries_stays_pending_until_retry_after(
        incident: Incident, drill_env: DrillStack) -> None:
    """A 429 asking for 10 minutes, three times (a Retry-After the Events API does not document, opted in on the
    stand-in): the page stays pending, is tried again only when Retry-After has passed on the clock, and lands once,
    with one 'paged' on the timeline; the response goes on."""
    drill_env.pagerduty.inject(Fault.rate_limit(retry_after=600, times=3, undocumented_retry_after=True))
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    with use_clock(ManualClock(start)) as clock:
        result = await page_contact.fn(incident, Policy().chain()[0])
        assert result["sent"] is False and result["pending"] is True  # not raised: the response goes on
        for tries in (1, 2):
            page = await _page_state(incident.id)
            assert page["state"] == "failed" and page["failures"] == tries
            assert page["retry_at"] == clock.now() + timedelta(seconds=600)
            clock.advance(timedelta(seconds=599))
            assert await send_pending_pages(incident) == [] and len(_enqueued(drill_env, incident.id)) == tries
            clock.advance(timedelta(seconds=1))
            assert await send_pending_pages(incident) == []  # tried: throttled again
            assert len(_enqueued(drill_env, incident.id)) == tries + 1
        clock.advance(timedelta(seconds=600))
        assert await send_pending_pages(incident) == [incident.id]
        assert await send_pending_pages(incident) == [] and await pending_pages(incident.id) == []
    assert _enqueued(drill_env, incident.id) == ["trigger"] * 4 and drill_env.pagerduty.alert(incident.id) is not None
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind=EventKind.PAGED)) == 1
    notes = await _notes(incident.id)
    assert sum("NOT delivered, still pending" in n and "next try in 600s" in n for n in notes) == 3


async def test_a_page_during_a_long_outage_is_tried_with_growing_backoff(
        incident: Incident, drill_env: DrillStack) -> None:
    """While PagerDuty answers 503 for an hour, the pending page is tried at doubling intervals up to 5 minutes,
    never in between, and is paged once PagerDuty is back."""
    drill_env.pagerduty.inject(Fault.rate_limit(retry_after=600, times=1, undocumented_retry_after=True))
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    with use_clock(ManualClock(start)) as clock:
        await page_contact.fn(incident, Policy().chain()[0])
        clock.advance(timedelta(seconds=600))
        drill_env.pagerduty.inject(Fault.error(503, times=None))
        gaps = []
        while clock.now() < start + timedelta(hours=1):
            assert await send_pending_pages(incident) == []
            page = await _page_state(incident.id)
            gap = page["retry_at"] - clock.now()
            gaps.append(gap.total_seconds())
            clock.advance(gap - timedelta(seconds=1))
            tried = len(_enqueued(drill_env, incident.id))
            assert await send_pending_pages(incident) == [] and len(_enqueued(drill_env, incident.id)) == tried
            clock.advance(timedelta(seconds=1))
        drill_env.pagerduty.clear_faults()
        assert await send_pending_pages(incident) == [incident.id]
    assert gaps[:5] == [30, 60, 120, 240, 300] and set(gaps[5:]) == {300}  # failure 1 was the 429
    assert drill_env.pagerduty.alert(incident.id) is not None and await pending_pages(incident.id) == []


async def test_a_page_whose_sender_crashed_is_sent_once_it_has_no_news(incident: Incident,
                                                                     drill_env: DrillStack) -> None:
    """The run paging on-call dies while PagerDuty hangs: the page stays pending, is left to its sender while it
    could still be retrying, then sent by the next poll; once, with the same dedup_key."""
    drill_env.pagerduty.inject(Fault.hang(seconds=120, times=1))
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    with use_clock(ManualClock(start)) as clock:
        sender = asyncio.create_task(page_contact.fn(incident, Policy().chain()[0]))
        await eventually(lambda: drill_env.pagerduty.requests_to("/v2/enqueue"), "the page to reach PagerDuty")
        sender.cancel()  # the crash
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        drill_env.pagerduty.clear_faults()
        assert (await _page_state(incident.id))["state"] == "in-flight"
        clock.advance(timedelta(seconds=IN_FLIGHT_S))
        assert await send_pending_pages(incident) == []
        clock.advance(timedelta(seconds=1))
        assert await send_pending_pages(incident) == [incident.id]
    assert drill_env.pagerduty.alert(incident.id) is not None
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind=EventKind.PAGED)) == 1


async def test_an_acknowledged_incident_closes_its_pending_pages(incident: Incident, drill_env: DrillStack) -> None:
    """Someone acknowledged while the page was pending: it is closed on the timeline and never sent."""
    drill_env.pagerduty.inject(Fault.rate_limit(retry_after=600, times=1, undocumented_retry_after=True))
    with use_clock(ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))) as clock:
        await page_contact.fn(incident, Policy().chain()[0])
        async with open_store() as store:
            await store.acknowledge(incident.id, "dana@permit.school")
        clock.advance(timedelta(hours=1))
        assert await send_pending_pages(incident) == [] and await pending_pages(incident.id) == []
    assert _enqueued(drill_env, incident.id) == ["trigger"]  # only the throttled one
    assert "not sent: acknowledged by dana@permit.school" in (await _notes(incident.id))[-1]
