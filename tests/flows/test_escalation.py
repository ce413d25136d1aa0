"""Escalation until acknowledged: the chain is paged in order, and an acknowledgement from anywhere stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.escalate_incident import EscalateParams, escalate_incident
from flows.lifecycle import SetSeverityParams, set_incident_severity
from runbook.cli import main as cli_main
from runbook.clock import ManualClock
from runbook.drill import DrillStack
from runbook.drill.approver import pause_form, resume, wait_for_pause
from runbook.models import Incident, Severity, TimelineEvent
from runbook.store import open_store
from tests.conftest import write_policy
from tests.paging import clock_stopped_at_declaration, paged, paged_roles
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

# The runbook's own chain (on-call at 0, engineering lead at 15, CTO at 30 minutes; P0 response time 15 minutes),
# driven by a manual clock: a step fires when the test advances the clock past it, never because the machine was
# slow. Only the store poll is fast.
POLICY = """
response: {ack_poll_seconds: 0.2}
"""
LEAD_AT, CTO_AT = timedelta(minutes=15), timedelta(minutes=30)
P2_DUE = timedelta(hours=2)  # the runbook's P2 response time


@pytest.fixture
async def incident(drill_env: DrillStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Incident:
    """Declare a P0 with the runbook's escalation chain in force."""
    write_policy(tmp_path, monkeypatch, POLICY)
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Site completely down", severity=Severity.P0, fingerprint="esc"))
    return inc


@pytest.fixture
def manual(incident: Incident) -> Iterator[ManualClock]:
    """Stop the escalation's clock at the moment the incident was declared."""
    with clock_stopped_at_declaration(incident) as fixed:
        yield fixed


async def test_no_ack_pages_lead_then_cto_in_order(incident: Incident, drill_env: DrillStack,
                                                   manual: ManualClock) -> None:
    """Without an acknowledgement, on-call, the engineering lead and the CTO are paged in that order, each on time."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"], timeout=120)
    assert await paged(drill_env, 1) == ["On-Call Engineer"]
    manual.advance_to(incident.created_at + LEAD_AT)
    assert await paged(drill_env, 2) == ["On-Call Engineer", "Engineering Lead"]
    manual.advance_to(incident.created_at + CTO_AT)
    assert await paged(drill_env, 3) == ["On-Call Engineer", "Engineering Lead", "CTO"]
    await resume(paused, {"by": "chen"})
    outcome = await run
    assert outcome.acknowledged_by == "chen" and outcome.sla_missed
    assert outcome.pages == ["On-Call Engineer", "Engineering Lead", "CTO"]
    async with open_store() as store:
        kinds = [e.kind for e in await store.timeline(incident.id)]
    assert kinds.count("escalated") == 2 and "sla_missed" in kinds and "acknowledged" in kinds


async def test_a_reopened_incident_escalates_through_the_chain_again(incident: Incident, drill_env: DrillStack,
                                                                     manual: ManualClock) -> None:
    """A reopen is a new response cycle: the on-call is paged again, and with no acknowledgement for the lead's
    step, counted from the reopen, the engineering lead is paged again too (the first cycle's pages don't count)."""
    from runbook.models import Alert, Status

    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"], timeout=120)
    manual.advance_to(incident.created_at + LEAD_AT)
    assert await paged(drill_env, 2) == ["On-Call Engineer", "Engineering Lead"]
    await resume(paused, {"by": "chen"})
    await run
    manual.advance(timedelta(minutes=5))
    async with open_store() as store:
        await store.transition(incident.id, Status.RESOLVED, summary="verified")
        manual.advance(timedelta(minutes=5))
        admitted = await store.admit(incident, Alert(source="monitor", fingerprint="esc", summary="down again"))
    assert admitted.outcome == "reopened"
    reopened_at = admitted.incident.reopened_at
    assert reopened_at is not None
    again = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"], timeout=120)
    assert (await paged(drill_env, 3))[2] == "On-Call Engineer"
    manual.advance_to(reopened_at + LEAD_AT)
    assert await paged(drill_env, 4) == ["On-Call Engineer", "Engineering Lead"] * 2
    await resume(paused, {"by": "dana"})
    outcome = await again
    assert outcome.acknowledged_by == "dana"


async def test_ack_from_the_ui_after_first_page_stops_escalation(incident: Incident, drill_env: DrillStack,
                                                                  manual: ManualClock) -> None:
    """An acknowledgement given through Prefect's API after the first page means nobody else is paged."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"], timeout=120)
    schema, description = await pause_form(paused)
    assert "by" in schema["properties"] and incident.id in description
    await paged(drill_env, 1)
    await resume(paused, {"by": "ana", "note": "on it"})
    outcome = await run
    manual.advance(CTO_AT * 2)  # long past the lead's and the CTO's steps: the run has ended, nobody is paged
    assert paged_roles(drill_env) == ["On-Call Engineer"]
    assert outcome.acknowledged_by == "ana" and outcome.via == "ui" and not outcome.sla_missed
    assert outcome.pages == ["On-Call Engineer"]
    assert drill_env.pagerduty.alert(incident.id)["status"] == "acknowledged"


async def test_ack_from_the_cli_stops_escalation(incident: Incident, drill_env: DrillStack,
                                                 manual: ManualClock) -> None:
    """`runbook ack` writes the store; the waiting run notices, resumes itself and pages nobody else."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    await wait_for_pause(["escalate-incident"], timeout=120)
    await paged(drill_env, 1)
    code = await asyncio.get_running_loop().run_in_executor(None, cli_main, ["ack", incident.id, "--by", "ana"])
    assert code == 0
    outcome = await asyncio.wait_for(run, timeout=120)
    manual.advance(CTO_AT * 2)
    assert outcome.acknowledged_by == "ana" and outcome.via == "store"
    assert outcome.pages == ["On-Call Engineer"] and paged_roles(drill_env) == ["On-Call Engineer"]


async def test_rerun_does_not_page_twice(incident: Incident, drill_env: DrillStack, manual: ManualClock) -> None:
    """Running the escalation again for an acknowledged incident pages nobody (dedup by incident id)."""
    first = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"], timeout=120)
    await paged(drill_env, 1)
    await resume(paused, {"by": "ana"})
    await first
    manual.advance(CTO_AT * 2)
    again = await escalate_incident(EscalateParams(incident_id=incident.id))
    assert again.acknowledged_by == "ana" and again.pages == []
    assert paged_roles(drill_env) == ["On-Call Engineer"]


async def test_the_escalation_window_ends_on_the_clock(incident: Incident, drill_env: DrillStack,
                                                       manual: ManualClock) -> None:
    """Nobody acknowledges: when the clock passes the window, the run stops waiting and says so (no real wait)."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    await wait_for_pause(["escalate-incident"], timeout=120)
    await paged(drill_env, 1)
    manual.advance_to(incident.created_at + CTO_AT)
    await paged(drill_env, 3)
    assert not run.done()  # the window is open until the last step plus one response time
    manual.advance(timedelta(minutes=16))
    outcome = await asyncio.wait_for(run, timeout=120)
    assert outcome.via == "timeout" and outcome.acknowledged_by is None and outcome.sla_missed
    async with open_store() as store:
        notes = [e.summary for e in await store.timeline(incident.id, kind="note")]
    assert "Nobody acknowledged within the escalation window" in notes


# -- a person's set-severity re-plans the escalation that is already running -------------------------------------


async def _events(incident_id: str, kind: str) -> list[TimelineEvent]:
    async with open_store() as store:
        return await store.timeline(incident_id, kind=kind)


async def _replanned(incident_id: str) -> TimelineEvent:
    """Wait until the running escalation has re-planned itself; return that timeline event."""
    async def found() -> TimelineEvent | None:
        return next((e for e in await _events(incident_id, "note") if e.details.get("escalation_replanned")), None)

    return await eventually(found, "the escalation's re-plan")


async def test_a_p0_lowered_to_p2_follows_p2s_schedule(incident: Incident, drill_env: DrillStack,
                                                        manual: ManualClock) -> None:
    """Lowered to P2 after the first page, the running escalation pages no lead or CTO on the P0 schedule: it
    reminds at P2's reminder time and records P2's missed response time, counted from the change."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    await wait_for_pause(["escalate-incident"], timeout=120)
    assert await paged(drill_env, 1) == ["On-Call Engineer"]
    await set_incident_severity(SetSeverityParams(incident_id=incident.id, severity="P2", by="ana",
                                                  reason="only the course list is slow"))
    replan = await _replanned(incident.id)
    changed = (await _events(incident.id, "severity_changed"))[-1].at
    assert replan.details["severity"] == "P2" and [s["action"] for s in replan.details["steps"]] == ["remind", "sla"]
    manual.advance_to(incident.created_at + CTO_AT + timedelta(minutes=1))  # past P0's lead and CTO steps
    manual.advance_to(changed + P2_DUE / 2)  # P2's reminder, counted from the change
    await eventually(lambda: _events(incident.id, "reminder"), "P2's reminder")
    manual.advance_to(changed + P2_DUE)
    missed = await eventually(lambda: _events(incident.id, "sla_missed"), "P2's missed response time")
    manual.advance_to(changed + P2_DUE * 2)  # P2's window is over: the run stops waiting
    outcome = await asyncio.wait_for(run, timeout=120)
    assert paged_roles(drill_env) == ["On-Call Engineer"]  # no lead, no CTO, on-call not paged twice
    assert outcome.via == "timeout" and outcome.pages == ["On-Call Engineer"]
    assert len(await _events(incident.id, "reminder")) == 1
    assert [e.details["severity"] for e in missed] == ["P2"] and len(await _events(incident.id, "sla_missed")) == 1


async def test_a_p2_raised_to_p0_follows_p0s_chain(drill_env: DrillStack, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised to P0 while its P2 escalation waits, the same run pages the P0 chain from the change (on-call once,
    then the lead at 15 and the CTO at 30 minutes); no second escalation is started and P2's reminder never comes."""
    write_policy(tmp_path, monkeypatch, POLICY)
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Course list slow", severity=Severity.P2, fingerprint="esc-up"))
    with clock_stopped_at_declaration(inc) as manual:
        run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=inc.id)))
        await wait_for_pause(["escalate-incident"], timeout=120)
        assert paged_roles(drill_env) == []  # P2: nobody is paged at once
        await set_incident_severity(SetSeverityParams(incident_id=inc.id, severity="P0", by="ana",
                                                      reason="the whole site is down"))
        assert await paged(drill_env, 1) == ["On-Call Engineer"]  # by the change itself, at once
        replan = await _replanned(inc.id)
        changed = (await _events(inc.id, "severity_changed"))[-1].at
        # P0's chain (on-call too, unless the change's own page was recorded first: it is sent once either way)
        assert [s["role"] for s in replan.details["steps"] if s["action"] == "page"][-2:] == ["Engineering Lead", "CTO"]
        manual.advance_to(changed + LEAD_AT)
        assert await paged(drill_env, 2) == ["On-Call Engineer", "Engineering Lead"]
        manual.advance_to(changed + CTO_AT)
        assert await paged(drill_env, 3) == ["On-Call Engineer", "Engineering Lead", "CTO"]
        manual.advance_to(inc.created_at + P2_DUE)  # past P2's reminder and past P0's window from the change
        outcome = await asyncio.wait_for(run, timeout=120)
    assert paged_roles(drill_env) == ["On-Call Engineer", "Engineering Lead", "CTO"]
    assert outcome.via == "timeout" and outcome.sla_missed
    assert [e.details["severity"] for e in await _events(inc.id, "sla_missed")] == ["P0"]
    assert await _events(inc.id, "reminder") == []
    async with get_client() as client:  # the change found the running escalation and started no other
        escalations = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"escalate {inc.id}"])))
    assert len(escalations) == 1


async def test_a_refused_first_page_does_not_stop_the_escalation_and_is_sent_again(
        incident: Incident, drill_env: DrillStack, manual: ManualClock) -> None:
    """PagerDuty refuses the first page once (400): the escalation goes on waiting, the page stays pending, and the
    wait loop sends it again when it is due on the runbook clock; it lands once."""
    from runbook.drill.faults import Fault

    refused = drill_env.pagerduty.inject(Fault.error(400, times=1))
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"], timeout=120)

    async def failed_once() -> bool:
        async with open_store() as store:
            return any(e.details.get("page_failed") for e in await store.timeline(incident.id))

    await eventually(failed_once, "the refused page recorded as not delivered", timeout=120)
    assert refused.used == 1 and drill_env.pagerduty.alert(incident.id) is None and not run.done()
    manual.advance(timedelta(minutes=6))  # past the next try of a refused page (5 min, on the runbook clock)
    assert await paged(drill_env, 1) == ["On-Call Engineer"]
    await resume(paused, {"by": "ana"})
    outcome = await asyncio.wait_for(run, timeout=120)
    assert outcome.acknowledged_by == "ana"
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind="paged")) == 1
