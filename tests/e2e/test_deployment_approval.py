"""A remediation deployment triggered through Prefect's API suspends for approval and finishes after a resume."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments.flow_runs import arun_deployment
from prefect.runner import Runner

from flows.code_rollback import code_rollback
from runbook.drill import DrillStack
from runbook.drill.approver import pause_form, resume
from runbook.models import Incident, Severity
from runbook.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def _runner(tag: str) -> Runner:
    """Return a runner serving the code-rollback deployment (adding it registers the deployment)."""
    runner = Runner(name=f"e2e-{tag}", query_seconds=1)
    await runner.aadd_flow(code_rollback, name="code-rollback")
    return runner


async def _execute_due_runs(tag: str) -> None:
    """Run whatever is due for the code-rollback deployment in a subprocess, as a worker would, then stop."""
    await (await _runner(tag)).start(run_once=True)


async def test_deployment_run_suspends_for_approval_and_finishes_after_resume(drill_env: DrillStack) -> None:
    """bad-deploy: the deployment run suspends (no process held), a second client approves, the re-run rolls back."""
    drill_env.inject("bad-deploy")
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Site completely down", severity=Severity.P0, fingerprint="e2e"))
    await _runner("register")
    run = await arun_deployment("code-rollback/code-rollback", timeout=0, as_subflow=False,
                                parameters={"params": {"incident_id": inc.id, "requested_by": "alice"}},
                                flow_run_name=f"code-rollback {inc.id}")
    await _execute_due_runs("first")
    async with get_client() as client:
        suspended = await client.read_flow_run(run.id)
    assert suspended.state is not None and suspended.state.is_paused()
    assert suspended.state.name == "Suspended" and not drill_env.healthy("bad-deploy")
    schema, description = await pause_form(suspended)
    plan_hash = schema["properties"]["plan_hash"]["default"]
    assert plan_hash in description
    await resume(suspended, {"decision": "approve", "approver": "bob", "reason": "e2e", "plan_hash": plan_hash})
    await _execute_due_runs("second")
    async with get_client() as client:
        finished = await client.read_flow_run(run.id)
    assert finished.state is not None and finished.state.is_completed(), finished.state
    assert drill_env.healthy("bad-deploy")
    async with open_store() as store:
        approvals = await store.approvals(inc.id)
        kinds = [e.kind for e in await store.timeline(inc.id)]
    assert [(a.decision, a.approver, a.plan_hash) for a in approvals] == [("approve", "bob", plan_hash)]
    assert kinds.count("approval_requested") == 1 and kinds.count("remediation_applied") == 1
    assert kinds.count("remediation_started") == 1  # not again when the resumed run re-runs from the top
