"""code-rollback against the drill stack: bad deploy repaired end to end, reject, timeout, stale plan, lock, and
re-runs after a completed or a killed run (no second rollback)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import aresume_flow_run
from prefect.states import Crashed

from flows.code_rollback import CodeRollbackParams, code_rollback
from runbook.drill import DrillStack
from runbook.models import EventKind
from runbook.store import open_store
from tests.flows.remediation_support import (  # noqa: F401 - drill_fixture is a fixture
    decide,
    drill_fixture,
    kinds,
    new_incident,
    paused_run,
    plan_hash_of,
    timeline,
)


def rollback_requests(stack: DrillStack) -> list[str]:
    """Return the paths of rollback/promote requests the Vercel stand-in received."""
    return [r.path for r in stack.vercel.requests if "/rollback/" in r.path or "/promote/" in r.path]


async def test_bad_deploy_is_rolled_back_and_verified(drill: DrillStack) -> None:
    """An approved code rollback returns production to the previous deployment and health recovers."""
    previous = drill.vercel.production().id
    drill.inject("bad-deploy")
    assert not drill.healthy("bad-deploy")
    incident = await new_incident()
    result = await decide(code_rollback(CodeRollbackParams(incident_id=incident, verify_within_seconds=20)),
                          incident)
    assert result.outcome == "verified", result.detail
    assert drill.vercel.production().id == previous
    assert drill.healthy("bad-deploy")
    assert EventKind.REMEDIATION_APPLIED in await kinds(incident)


async def test_rejection_changes_nothing(drill: DrillStack) -> None:
    """A rejected code rollback sends no rollback request and leaves the bad deployment in production."""
    drill.inject("bad-deploy")
    bad = drill.vercel.production().id
    incident = await new_incident()
    result = await decide(code_rollback(CodeRollbackParams(incident_id=incident)), incident, decision="reject")
    assert result.outcome == "rejected"
    assert rollback_requests(drill) == []
    assert drill.vercel.production().id == bad
    assert EventKind.REMEDIATION_ABORTED in await kinds(incident)


async def test_timeout_changes_nothing(drill: DrillStack) -> None:
    """An approval that times out sends no rollback request."""
    drill.inject("bad-deploy")
    bad = drill.vercel.production().id
    incident = await new_incident()
    result = await code_rollback(CodeRollbackParams(incident_id=incident, approval_timeout_minutes=2 / 60))
    assert result.outcome == "timed_out"
    assert rollback_requests(drill) == []
    assert drill.vercel.production().id == bad


async def test_plan_changed_after_approval_aborts(drill: DrillStack) -> None:
    """Another deployment promoted during the approval makes the approved plan stale: nothing is rolled back."""
    drill.inject("bad-deploy")
    incident = await new_incident()

    def promote_another() -> None:
        drill.vercel.deploy("ok", message="hotfix by someone else")
        drill.vercel.wait_idle()

    result = await decide(code_rollback(CodeRollbackParams(incident_id=incident)), incident,
                          meanwhile=promote_another)
    assert result.outcome == "plan_changed"
    assert rollback_requests(drill) == []


async def test_second_remediation_is_refused(drill: DrillStack) -> None:
    """While another remediation holds the environment's lock, a code rollback is refused and changes nothing."""
    drill.inject("bad-deploy")
    bad = drill.vercel.production().id
    incident = await new_incident()
    async with open_store() as store:
        await store.acquire_lock("remediation:drill", "database-rollback by alice", timedelta(minutes=5))
    try:
        result = await code_rollback(CodeRollbackParams(incident_id=incident))
    finally:
        async with open_store() as store:
            await store.release_lock("remediation:drill", "database-rollback by alice")
    assert result.outcome == "refused"
    assert "database-rollback by alice" in result.detail
    assert drill.vercel.production().id == bad
    assert rollback_requests(drill) == []


async def test_dry_run_returns_the_plan_only(drill: DrillStack) -> None:
    """A dry run returns the plan naming the target deployment and sends no rollback request."""
    previous = drill.vercel.production().id
    drill.inject("bad-deploy")
    result = await code_rollback(CodeRollbackParams(dry_run=True))
    assert result.outcome == "dry_run"
    assert result.plan is not None and result.plan.state["target"] == previous
    assert rollback_requests(drill) == []


async def test_already_on_target_is_nothing_to_do(drill: DrillStack) -> None:
    """Rolling back to the deployment production already serves is a named success without an approval."""
    current = drill.vercel.production().id
    result = await code_rollback(CodeRollbackParams(target_deployment_id=current))
    assert result.outcome == "nothing_to_do"
    assert rollback_requests(drill) == []


@pytest.mark.parametrize("bad", ["../x", "dpl_1; rm", ""])
def test_bad_deployment_ids_are_rejected(bad: str) -> None:
    """A target that is not a deployment id is rejected by the parameters model."""
    with pytest.raises(ValueError):
        CodeRollbackParams(target_deployment_id=bad)


async def test_rerun_after_a_completed_rollback_does_not_roll_back_again(drill: DrillStack) -> None:
    """Re-running the rollback of an incident after it completed verifies the result and rolls back nothing more."""
    previous = drill.vercel.production().id
    drill.inject("bad-deploy")
    incident = await new_incident()
    params = CodeRollbackParams(incident_id=incident, verify_within_seconds=20, approval_timeout_minutes=1)
    first = await decide(code_rollback(params), incident)
    assert first.outcome == "verified", first.detail
    again = await code_rollback(params)
    assert again.outcome == "nothing_to_do", again.detail
    assert again.plan is not None and again.plan.done_by is not None
    assert f"already rolled back to {previous} by run {again.plan.done_by}" in again.detail
    assert again.verification.get("passed") is True
    assert drill.vercel.production().id == previous
    assert len(rollback_requests(drill)) == 1
    assert (await kinds(incident)).count(EventKind.APPROVAL_REQUESTED) == 1


async def test_rerun_after_a_run_killed_mid_rollback_does_not_roll_back_again(drill: DrillStack) -> None:
    """A run killed after Vercel took its approved rollback leaves the lock and production on its target; the
    operator's re-run takes the lock over, records that, and only verifies: no second rollback, no approval."""
    previous = drill.vercel.production().id
    drill.inject("bad-deploy")
    incident = await new_incident()
    params = CodeRollbackParams(incident_id=incident, verify_within_seconds=20, approval_timeout_minutes=1)
    drill.vercel.answer_delays.append(30)  # the rollback runs on Vercel; its answer is held back: the run sits in act
    first = asyncio.ensure_future(code_rollback(params))
    try:
        run = None
        while run is None and not first.done():
            run = await paused_run(incident, timeout=0.5)
        assert run is not None, "the first run never asked for approval"
        await aresume_flow_run(run.id, run_input={"decision": "approve", "approver": "bob", "reason": "go",
                                                  "plan_hash": await plan_hash_of(run)})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not rollback_requests(drill):
            assert loop.time() < deadline and not first.done(), "the approved rollback never reached Vercel"
            await asyncio.sleep(0.1)
        await asyncio.to_thread(drill.vercel.wait_idle)
        assert drill.vercel.production().id == previous
    finally:
        first.cancel()  # the process dies here: nothing after the rollback request runs
        with contextlib.suppress(BaseException):
            await first
        drill.vercel.answer_delays.clear()
    # What a SIGKILL leaves behind: the lock still names the dead run, and Prefect has that run Crashed (the
    # cancellation already ended it; a killed worker's run is marked Crashed by Prefect).
    async with get_client() as client:
        ended = await client.read_flow_run(run.id)
        if ended.state is None or not ended.state.is_final():
            await client.set_flow_run_state(run.id, Crashed(message="worker killed"), force=True)
    holder = f"code-rollback {incident} run {run.id}"
    async with open_store() as store:
        await store.acquire_lock("remediation:drill", holder, timedelta(hours=2), holder_gone=_never_gone)
    again = await code_rollback(params)
    assert again.outcome == "nothing_to_do", again.detail
    assert again.plan is not None and again.plan.done_by == str(run.id)
    assert f"already rolled back to {previous} by run {run.id}" in again.detail
    assert drill.vercel.production().id == previous
    assert len(rollback_requests(drill)) == 1  # no second rollback
    events = await timeline(incident)
    assert [e.kind for e in events].count(EventKind.APPROVAL_REQUESTED) == 1  # no approval for nothing
    takeover = [e for e in events if e.kind == EventKind.NOTE and "taken over from" in e.summary]
    assert len(takeover) == 1 and takeover[0].details["taken_over_from"] == holder, [e.summary for e in events]
    assert f"run {run.id}" in takeover[0].summary
    assert any(e.kind == EventKind.NOTE and "already rolled back" in e.summary and e.details["done_by"] == str(run.id)
               for e in events)
    async with open_store() as store:
        assert await store.active_locks("remediation:") == []


async def _never_gone(holder: str) -> bool:
    """Say no lock holder is gone (the test puts the dead run's lock back as the kill left it)."""
    return False
