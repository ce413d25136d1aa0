"""Notification tasks are idempotent: one page per contact, one status-page post per state, all on the timeline."""

from __future__ import annotations

import pytest

from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.models import Incident, Severity, Status
from runbook.policy import Policy
from runbook.store import open_store
from tasks.pagerduty import page_contact
from tasks.statuspage import post_status_update

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
async def incident(drill_env: DrillStack) -> Incident:
    """Declare a P0 database incident in a fresh store."""
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Database unavailable", severity=Severity.P0,
                                              scenario="database", fingerprint="t"))
    return inc


def _triggers(stack: DrillStack) -> list[dict]:  # type: ignore[type-arg]
    return [r.body for r in stack.pagerduty.requests if isinstance(r.body, dict)
            and r.body.get("event_action") == "trigger" and (r.status or 0) < 300]


async def test_page_is_sent_once_even_when_retried_and_rerun(incident: Incident, drill_env: DrillStack) -> None:
    """A 503 from PagerDuty is retried, a second call is skipped: one alert, dedup_key = incident id."""
    drill_env.pagerduty.inject(Fault.error(503, times=1))
    oncall = Policy().chain()[0]
    first = await page_contact(incident, oncall)
    second = await page_contact(incident, oncall)
    assert first["sent"] and not second["sent"]
    assert [t["dedup_key"] for t in _triggers(drill_env)] == [incident.id]
    assert len([a for a in drill_env.pagerduty.open_alerts() if a["dedup_key"] == incident.id]) == 1
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind="paged")) == 1


async def test_status_page_follows_the_lifecycle_once_per_state(incident: Incident, drill_env: DrillStack) -> None:
    """Investigating creates the public incident, later states update it, a repeated state is not re-sent."""
    await post_status_update(incident.id, Status.INVESTIGATING, "Investigating")
    again = await post_status_update(incident.id, Status.INVESTIGATING, "Investigating")
    await post_status_update(incident.id, Status.IDENTIFIED, "Identified")
    await post_status_update(incident.id, Status.RESOLVED, "Resolved")
    async with open_store() as store:
        sp_id = (await store.get(incident.id)).statuspage_incident_id
    assert not again["sent"] and sp_id
    public = drill_env.statuspage.incident(sp_id)
    assert public is not None and public["status"] == "resolved" and public["impact"] == "critical"
    sent = [r.body["incident"]["status"] for r in drill_env.statuspage.requests
            if r.method in {"POST", "PATCH"} and isinstance(r.body, dict) and "incident" in r.body]
    assert sent == ["investigating", "identified", "resolved"]
    assert drill_env.statuspage.component_status("database") == "operational"
