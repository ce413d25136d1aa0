"""Drift repair (issue 19): the reconcile flow repairs what Statuspage and PagerDuty show against the record, through
the response's own tasks, on the drill stack; incidents a live response is acting on are left alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flows._response import announce_status
from flows.reconcile import ReconcileOutcome, ReconcileParams, reconcile
from runbook.clock import ManualClock, use_clock
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.models import EventKind, Incident, Severity, Status, TimelineEvent, utcnow
from runbook.policy import Policy
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.common import open_client
from tasks.pagerduty import page_contact

pytestmark = pytest.mark.usefixtures("prefect_harness")

LATER = timedelta(minutes=10)  # the runbook clock, far past the grace minute whatever the machine's speed


async def _declare(title: str, severity: Severity, scenario: str, age: timedelta = timedelta(0)) -> Incident:
    """Declare an incident of the drill environment (as declare-incident does with the drill's settings)."""
    settings = get_settings()
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title=title, severity=severity, scenario=scenario, fingerprint=title,
                                              created_at=utcnow() - age, drill=settings.drill,
                                              environment=settings.environment))
    return inc


async def _resolve(incident_id: str) -> Incident:
    async with open_store() as store:
        return await store.transition(incident_id, Status.RESOLVED, summary="Resolved after verification")


async def _record(incident_id: str) -> tuple[Incident, list[TimelineEvent]]:
    async with open_store() as store:
        return await store.get(incident_id), await store.timeline(incident_id)


async def _run(**params: Any) -> tuple[ReconcileOutcome, str]:
    """Run reconcile; return its outcome and the markdown of the artifact its run published."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    state = await reconcile(ReconcileParams(**params), return_state=True)
    outcome: ReconcileOutcome = await state.aresult()
    async with get_client() as client:
        [artifact] = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["reconcile"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return outcome, str(artifact.data)


async def test_a_status_page_left_unresolved_at_resolve_time_is_resolved_later(drill_env: DrillStack) -> None:
    """Statuspage refuses the 'resolved' update; a reconcile within the minute leaves it to the response, a later
    one resolves it there (components operational) and says so on the timeline; a second run repairs nothing."""
    incident = await _declare("Database unavailable", Severity.P0, "database")
    await announce_status(incident, Status.INVESTIGATING, "We are investigating a service outage.")
    sp_id = (await _record(incident.id))[0].statuspage_incident_id
    assert sp_id and drill_env.statuspage.component_status("database") == "major_outage"
    page = drill_env.env["RUNBOOK_STATUSPAGE_PAGE_ID"]
    drill_env.statuspage.inject(Fault.error(401, times=None, path=f"/v1/pages/{page}/incidents/{sp_id}"))
    await announce_status(incident, Status.RESOLVED, "Issue resolved, normal operations restored.")
    await _resolve(incident.id)
    drill_env.statuspage.clear_faults()
    assert drill_env.statuspage.incident(sp_id)["status"] == "investigating"  # type: ignore[index]

    live, _ = await _run()
    assert live.nothing_to_repair and live.left_alone[0].startswith(f"{incident.id}: resolved")

    with use_clock(ManualClock(utcnow() + LATER)):
        repaired, markdown = await _run()
        again, again_markdown = await _run()
    [drift] = repaired.drifts
    assert drift.kind == "statuspage_unresolved" and drift.target == sp_id and drift.repaired
    assert repaired.summary == "repaired 1 of 1 drift(s), 1 incidents checked" and sp_id in markdown
    assert drill_env.statuspage.incident(sp_id)["status"] == "resolved"  # type: ignore[index]
    assert drill_env.statuspage.component_status("database") == "operational"
    _, timeline = await _record(incident.id)
    [event] = [e for e in timeline if e.kind == EventKind.DRIFT_REPAIRED]
    assert event.actor == "reconcile" and sp_id in event.summary and event.details["drift"] == drift.kind
    assert [e.details.get("sent", True) for e in timeline if e.kind == EventKind.STATUS_PAGE
            and e.details.get("status") == "resolved"] == [False, True]
    assert again.nothing_to_repair and again.summary == "nothing to repair, 1 incidents checked"
    assert "nothing to repair, 1 incidents checked" in again_markdown


async def test_an_open_p0_without_a_status_page_incident_gets_one(drill_env: DrillStack) -> None:
    """An open P0 declared ten minutes ago with no status page incident gets one (investigating, critical); a P0
    declared just now, whose response is still starting, is left alone."""
    old = await _declare("Checkout returns 500", Severity.P0, "payment", age=LATER)
    live = await _declare("Login fails", Severity.P0, "authentication")
    out, _ = await _run()
    [drift] = out.drifts
    assert drift.kind == "statuspage_missing" and drift.incident_id == old.id and drift.repaired
    assert any(line.startswith(f"{live.id}: open P0") for line in out.left_alone)
    repaired, timeline = await _record(old.id)
    public = drill_env.statuspage.incident(repaired.statuspage_incident_id or "")
    assert public is not None and public["status"] == "investigating" and public["impact"] == "critical"
    assert [e.kind for e in timeline][-2:] == [EventKind.STATUS_PAGE, EventKind.DRIFT_REPAIRED]
    assert (await _record(live.id))[0].statuspage_incident_id is None
    assert len(drill_env.statuspage.incidents) == 1


async def test_a_page_left_open_in_pagerduty_is_resolved(drill_env: DrillStack) -> None:
    """A resolved incident whose PagerDuty incident is still triggered (read through the REST API) has its page
    resolved; the dry run before it only reports it."""
    incident = await _declare("API latency", Severity.P1, "performance")
    await page_contact(incident, Policy().chain()[0])
    await _resolve(incident.id)
    with use_clock(ManualClock(utcnow() + LATER)):
        dry, _ = await _run(dry_run=True)
        assert [d.kind for d in dry.drifts] == ["pagerduty_open"] and not dry.drifts[0].repaired
        assert drill_env.pagerduty.incident(incident.id)["status"] == "triggered"  # type: ignore[index]
        out, _ = await _run()
    [drift] = out.drifts
    assert drift.target == incident.id and drift.repaired
    assert drill_env.pagerduty.incident(incident.id)["status"] == "resolved"  # type: ignore[index]
    _, timeline = await _record(incident.id)
    assert [e.details["drift"] for e in timeline if e.kind == EventKind.DRIFT_REPAIRED] == ["pagerduty_open"]


async def test_a_component_left_degraded_is_restored_unless_an_open_incident_explains_it(
        drill_env: DrillStack) -> None:
    """A component degraded with no incident behind it goes back to operational; one an open incident's status page
    names stays as it is."""
    from runbook.clients.statuspage import StatuspageClient

    open_one = await _declare("Login fails", Severity.P1, "authentication", age=LATER)
    await announce_status(open_one, Status.INVESTIGATING, "We are investigating degraded functionality.")
    async with open_client(StatuspageClient) as sp:
        await sp.set_component_status("payments", "degraded_performance")
    with use_clock(ManualClock(utcnow() + LATER)):
        out, _ = await _run()
    [drift] = out.drifts
    assert drift.kind == "component_degraded" and drift.target == "payments" and drift.incident_id is None
    assert drift.repaired and drill_env.statuspage.component_status("payments") == "operational"
    assert drill_env.statuspage.component_status("auth") == "partial_outage"


async def test_a_run_reads_at_most_its_budget_of_pages_newest_first(drill_env: DrillStack) -> None:
    """With more resolved incidents' pages in the lookback than one run may read in PagerDuty (its REST API allows
    960 requests a minute, shared with the escalations), the run reads the newest first, finds the newest one's page
    left open, stops at its budget and names what it did not read; PagerDuty never refuses it."""
    from flows.reconcile import PAGE_READS_PER_RUN

    old = []
    for n in range(PAGE_READS_PER_RUN + 5):
        inc = await _declare(f"Old incident {n}", Severity.P2, "performance", age=timedelta(hours=2, seconds=-n))
        async with open_store() as store:
            await store.append_event(inc.id, TimelineEvent(kind=EventKind.PAGED, actor="runbook", summary="Paged",
                                                           details={"dedup_key": inc.id, "role": "on-call"}))
        old.append(await _resolve(inc.id))
    newest = await _declare("API latency", Severity.P1, "performance")
    await page_contact(newest, Policy().chain()[0])
    await _resolve(newest.id)
    before = len([r for r in drill_env.pagerduty.requests if r.method == "GET" and r.path == "/incidents"])
    with use_clock(ManualClock(utcnow() + LATER)):
        out, _ = await _run(dry_run=True)
    reads = [r for r in drill_env.pagerduty.requests if r.method == "GET" and r.path == "/incidents"][before:]
    assert [d.target for d in out.drifts if d.kind == "pagerduty_open"] == [newest.id]
    assert len(reads) == PAGE_READS_PER_RUN and all(r.status == 200 for r in reads), len(reads)
    assert any("6 older resolved incident(s) not read" in line for line in out.not_checked), out.not_checked
