"""A page is durable: pending on the timeline before it is sent, said to be pending while PagerDuty throttles, and
sent again after a failure, never dropped and never sent twice."""

from __future__ import annotations

import pytest

from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import RequestRejected
from runbook.models import EventKind, Incident, Severity
from runbook.policy import Policy
from runbook.store import open_store
from tasks.pagerduty import page_contact, pending_pages, resend_pending_pages


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
