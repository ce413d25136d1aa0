"""Escalation until acknowledged: the chain is paged in order, and an acknowledgement from anywhere stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from flows.escalate_incident import EscalateParams, escalate_incident
from runbook.cli import main as cli_main
from runbook.clock import ManualClock
from runbook.drill import DrillStack
from runbook.drill.approver import pause_form, resume, wait_for_pause
from runbook.models import Incident, Severity
from runbook.store import open_store
from tests.conftest import write_policy
from tests.paging import clock_stopped_at_declaration, paged, paged_roles

pytestmark = pytest.mark.usefixtures("prefect_harness")

# The runbook's own chain (on-call at 0, engineering lead at 15, CTO at 30 minutes; P0 response time 15 minutes),
# driven by a manual clock: a step fires when the test advances the clock past it, never because the machine was
# slow. Only the store poll is fast.
POLICY = """
response: {ack_poll_seconds: 0.2}
"""
LEAD_AT, CTO_AT = timedelta(minutes=15), timedelta(minutes=30)


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
