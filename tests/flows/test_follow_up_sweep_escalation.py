"""A dead escalation is re-run by the follow-up sweep (issue 16): the escalation's run dies (its process killed, the
Prefect server lost it) while nobody has acknowledged; the sweep finds its run over through Prefect's API and starts
it again, once; the re-run counts the steps already taken from the timeline (nobody paged twice, no second missed
SLA)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.escalate_incident import ESCALATION_RUN, EscalateParams, escalate_incident
from flows.follow_up_sweep import FollowUpSweepParams, follow_up_sweep
from runbook.clock import ManualClock
from runbook.drill import DrillStack
from runbook.drill.approver import wait_for_pause
from runbook.models import EventKind, Incident, Severity
from runbook.store import open_store
from tests.conftest import write_policy
from tests.flows.test_escalation import CTO_AT, LEAD_AT, POLICY
from tests.paging import clock_stopped_at_declaration, paged, paged_roles
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")
SWEEP = FollowUpSweepParams(lookback_days=1)


@pytest.fixture(scope="module")
async def escalate_deployment(prefect_harness: None) -> None:
    """Register escalate-incident as prefect.yaml names it (the sweep starts its re-runs there)."""
    await (await escalate_incident.to_deployment(name="escalate-incident")).apply()


@pytest.fixture
async def incident(drill_env: DrillStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Incident:
    """Declare a P0 with the runbook's escalation chain in force."""
    write_policy(tmp_path, monkeypatch, POLICY)
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Checkout down", severity=Severity.P0, fingerprint="sweep-esc"))
    return inc


async def _runs_named(name: str) -> list[Any]:
    async with get_client() as client:
        return list(await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))))


async def _killed_after_on_call_and_sla(incident: Incident, drill_env: DrillStack, manual: ManualClock) -> str:
    """Run the escalation until it paged on-call and the lead and recorded the missed SLA, then kill it; return
    its run id."""
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    paused = await wait_for_pause(["escalate-incident"], timeout=120)
    assert await paged(drill_env, 1) == ["On-Call Engineer"]
    manual.advance_to(incident.created_at + LEAD_AT)  # the lead's step and P0's 15-minute response time

    async def sla_recorded() -> bool:
        async with open_store() as store:
            return bool(await store.timeline(incident.id, kind=EventKind.SLA_MISSED))

    assert await paged(drill_env, 2) == ["On-Call Engineer", "Engineering Lead"]
    await eventually(sla_recorded, "the missed SLA on the timeline")
    run.cancel()  # the run dies (its worker killed): Prefect ends it
    with contextlib.suppress(asyncio.CancelledError, BaseException):
        await run

    async def over() -> bool:
        async with get_client() as client:
            state = (await client.read_flow_run(paused.id)).state
        return state is not None and state.is_final() and not state.is_completed()

    await eventually(over, "the killed escalation run to end in Prefect")
    return str(paused.id)


async def test_the_sweep_reruns_a_dead_escalation_once(incident: Incident, drill_env: DrillStack,
                                                       escalate_deployment: None) -> None:
    """The escalation dies after paging on-call and the lead: the sweep starts `escalate <id>` again (one new run,
    recorded on the timeline), the next sweep leaves it (alive: scheduled); the re-run pages the CTO when due, and
    neither pages anyone twice nor records the missed SLA again."""
    with clock_stopped_at_declaration(incident) as manual:
        dead = await _killed_after_on_call_and_sla(incident, drill_env, manual)
        first = await follow_up_sweep(SWEEP)
        second = await follow_up_sweep(SWEEP)
        assert first.escalations_rerun == [incident.id] and second.escalations_rerun == []
        runs = [r for r in await _runs_named(f"escalate {incident.id}") if str(r.id) != dead]
        assert len(runs) == 1 and runs[0].deployment_id is not None and runs[0].state.is_scheduled(), runs
        async with open_store() as store:
            notes = [e for e in await store.timeline(incident.id, kind=EventKind.NOTE) if e.details.get(ESCALATION_RUN)]
        assert [n.details[ESCALATION_RUN] for n in notes] == [dead, str(runs[0].id)]
        assert "Escalation re-run" in notes[-1].summary and dead in notes[-1].summary, notes[-1].summary
        # The re-run executes (here in this process, as a worker would): on-call and the lead were paged, the CTO
        # is next.
        rerun = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
        await wait_for_pause(["escalate-incident"], timeout=120, exclude={UUID(dead)})
        manual.advance_to(incident.created_at + CTO_AT)
        assert await paged(drill_env, 3) == ["On-Call Engineer", "Engineering Lead", "CTO"]
        async with open_store() as store:
            await store.acknowledge(incident.id, "ana", via="cli")
        outcome = await asyncio.wait_for(rerun, timeout=120)
    assert outcome.pages == ["CTO"], outcome  # on-call's and the lead's steps were taken by the dead run
    assert paged_roles(drill_env) == ["On-Call Engineer", "Engineering Lead", "CTO"]
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind=EventKind.SLA_MISSED)) == 1
    assert (await follow_up_sweep(SWEEP)).escalations_rerun == []  # acknowledged: nothing to re-run


async def test_an_escalation_still_paused_in_a_live_run_is_left_to_it(incident: Incident, drill_env: DrillStack,
                                                                      escalate_deployment: None) -> None:
    """While the escalation's run is alive (paused for an acknowledgement), the sweep starts no second one."""
    with clock_stopped_at_declaration(incident):
        run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
        try:
            await wait_for_pause(["escalate-incident"], timeout=120)
            await paged(drill_env, 1)
            assert (await follow_up_sweep(SWEEP)).escalations_rerun == []
            assert len(await _runs_named(f"escalate {incident.id}")) == 1
        finally:
            async with open_store() as store:
                await store.acknowledge(incident.id, "ana", via="cli")
            await asyncio.wait_for(run, timeout=120)
