"""Escalation until acknowledged: the chain is paged in order, and an acknowledgement from anywhere stops it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flows.escalate_incident import EscalateParams, escalate_incident
from runbook.cli import main as cli_main
from runbook.drill import DrillStack
from runbook.drill.approver import pause_form, resume, wait_for_pause
from runbook.models import Incident, Severity
from runbook.store import open_store
from tests.conftest import write_policy

pytestmark = pytest.mark.usefixtures("prefect_harness")

# The runbook's 0 / 15 / 30 minutes, scaled down to 0 / 1.5 / 3 seconds; SLA after 2.4 s.
FAST_POLICY = """
severities:
  P0: {response_minutes: 0.04}
escalation:
  - {role: On-Call Engineer, name: Ana, after_minutes: 0}
  - {role: Engineering Lead, name: Ben, after_minutes: 0.025}
  - {role: CTO, name: Chen, after_minutes: 0.05}
response: {ack_poll_seconds: 0.2}
"""


@pytest.fixture
async def incident(drill_env: DrillStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Incident:
    """Declare a P0 with the fast escalation policy in force."""
    write_policy(tmp_path, monkeypatch, FAST_POLICY)
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Site completely down", severity=Severity.P0, fingerprint="esc"))
    return inc


def _paged_roles(stack: DrillStack) -> list[str]:
    return [r.body["payload"]["custom_details"]["role"] for r in stack.pagerduty.requests
            if r.path.endswith("/enqueue") and r.body.get("event_action") == "trigger"]


async def test_no_ack_pages_lead_then_cto_in_order(incident: Incident, drill_env: DrillStack) -> None:
    """Without an acknowledgement, on-call, the engineering lead and the CTO are paged in that order."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"])
    await asyncio.sleep(3.6)
    assert _paged_roles(drill_env) == ["On-Call Engineer", "Engineering Lead", "CTO"]
    await resume(paused, {"by": "chen"})
    outcome = await run
    assert outcome.acknowledged_by == "chen" and outcome.sla_missed
    async with open_store() as store:
        kinds = [e.kind for e in await store.timeline(incident.id)]
    assert kinds.count("escalated") == 2 and "sla_missed" in kinds and "acknowledged" in kinds


async def test_ack_from_the_ui_after_first_page_stops_escalation(incident: Incident, drill_env: DrillStack) -> None:
    """An acknowledgement given through Prefect's API after the first page means nobody else is paged."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"])
    schema, description = await pause_form(paused)
    assert "by" in schema["properties"] and incident.id in description
    await resume(paused, {"by": "ana", "note": "on it"})
    outcome = await run
    await asyncio.sleep(2.0)  # past the lead's 1.5 s
    assert _paged_roles(drill_env) == ["On-Call Engineer"]
    assert outcome.acknowledged_by == "ana" and outcome.via == "ui" and not outcome.sla_missed
    assert drill_env.pagerduty.alert(incident.id)["status"] == "acknowledged"


async def test_ack_from_the_cli_stops_escalation(incident: Incident, drill_env: DrillStack) -> None:
    """`runbook ack` writes the store; the waiting run notices, resumes itself and pages nobody else."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    await wait_for_pause(["escalate-incident"])
    code = await asyncio.get_running_loop().run_in_executor(None, cli_main, ["ack", incident.id, "--by", "ana"])
    assert code == 0
    outcome = await asyncio.wait_for(run, timeout=10)
    await asyncio.sleep(1.5)
    assert outcome.acknowledged_by == "ana" and outcome.via == "store"
    assert _paged_roles(drill_env) == ["On-Call Engineer"]


async def test_rerun_does_not_page_twice(incident: Incident, drill_env: DrillStack) -> None:
    """Running the escalation again for an acknowledged incident pages nobody (dedup by incident id)."""
    first = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    await resume(await wait_for_pause(["escalate-incident"]), {"by": "ana"})
    await first
    again = await escalate_incident(EscalateParams(incident_id=incident.id))
    assert again.acknowledged_by == "ana" and again.pages == []
    assert _paged_roles(drill_env) == ["On-Call Engineer"]
