"""code-rollback against the drill stack: bad deploy repaired end to end, reject, timeout, stale plan, lock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flows.code_rollback import CodeRollbackParams, code_rollback
from runbook.drill import DrillStack
from runbook.models import EventKind
from runbook.store import open_store
from tests.flows.remediation_support import decide, drill_fixture, kinds, new_incident  # noqa: F401 - a fixture


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
