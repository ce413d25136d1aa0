"""Code rollback (runbook "Rollback Procedures > Code Rollback"): production back to a previous READY deployment.

Plan: the current production deployment → the previous READY rollback candidate (or a named deployment). After
approval the plan is re-read (another promotion in between aborts), Vercel rolls back, the alias job is polled
until it succeeded or failed, and /api/health is verified within a bounded window. Already on the target is a
named success (nothing_to_do); a failed verification leaves the incident open and says so.

A re-run for the same incident (the operator's, after a run crashed with its worker mid-rollback, was cancelled, or
completed) does not roll back again: when production serves the target of an earlier run's plan that got past its
approval, the plan is "already rolled back to <target> by run <id>" and the run only verifies.
"""

from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field

from flows._remediation import (
    Checked,
    Plan,
    Remediation,
    RemediationParams,
    RemediationResult,
    earlier_runs,
    run_name,
    run_remediation,
    verify_scenario,
)
from runbook.clients.types import Deployment
from runbook.errors import RemediationError, UnsafeOperation
from runbook.models import ONE_LINE, Approval
from runbook.settings import get_settings
from tasks.vercel import find_rollback_target, rollback_deployment

ACTION = "code-rollback"


class CodeRollbackParams(RemediationParams):
    """Roll production back to a previous deployment (a form in the Prefect UI)."""

    target_deployment_id: Annotated[str, ONE_LINE] | None = Field(
        None, pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="Deployment to roll back to (e.g. dpl_…); empty: the previous READY production deployment")
    alias_timeout_seconds: float = Field(300, gt=0, le=1800, description="How long to wait for the alias job")
    verify_scenario: Literal["performance", "configuration", "database", "authentication", "payment"] = Field(
        "performance", description="Which runbook verification proves the rollback worked (/api/health always)")


def _describe(d: Deployment) -> str:
    created = d.created_at.strftime("%Y-%m-%d %H:%M UTC") if d.created_at else "unknown time"
    commit = f", commit {d.commit_sha[:7]}" if d.commit_sha else ""
    return f"{d.id} ({created}{commit})"


async def plan_code_rollback(params: CodeRollbackParams) -> Plan:
    """Compute the rollback plan from Vercel's current state."""
    environment = get_settings().environment
    current, target = await find_rollback_target(params.target_deployment_id)
    if current is not None and params.target_deployment_id in (None, current.id):
        # A re-run for the incident (after an earlier run crashed mid-rollback, was cancelled, or completed):
        # "the deployment before what production serves now" would roll back one deployment further.
        done = next((r for r in reversed(await earlier_runs(params.incident_id, ACTION))
                     if r.may_have_acted and r.state.get("target") == current.id), None)
        if done is not None:
            return Plan(action=ACTION, environment=environment, noop=True, done_by=done.flow_run_id,
                        state={"current": current.id, "target": current.id, "earlier_plan": done.plan_hash},
                        summary=f"already rolled back to {current.id} by {done.describe()}")
    if target is None:
        raise UnsafeOperation("no previous READY production deployment to roll back to; redeploy a known-good "
                              "commit instead")
    if (target.state or "").upper() != "READY":
        raise UnsafeOperation(f"deployment {target.id} is {target.state}, not READY; refusing to roll back to it")
    state: dict[str, Any] = {"current": current.id if current else None, "target": target.id}
    if current is not None and current.id == target.id:
        return Plan(action=ACTION, environment=environment, noop=True, state=state,
                    summary=f"production already serves {target.id}")
    return Plan(
        action=ACTION, environment=environment, state=state,
        summary=f"roll production back from {current.id if current else '(none)'} to {target.id}",
        steps=[
            f"Roll production back from {_describe(current) if current else '(unknown)'} to {_describe(target)}",
            f"Wait up to {params.alias_timeout_seconds:g} s for the alias job to succeed",
            f"Verify /api/health ({params.verify_scenario}) within {params.verify_within_seconds:g} s",
        ],
        warnings=["A Vercel rollback turns off auto-assignment of production domains until the next promote"],
    )


@flow(name=ACTION, flow_run_name=run_name(ACTION), log_prints=False)
async def code_rollback(params: CodeRollbackParams) -> RemediationResult:
    """Roll production back to a previous deployment: plan, approve, roll back, wait, verify."""

    async def plan() -> Plan:
        return await plan_code_rollback(params)

    async def act(plan: Plan, approval: Approval) -> dict[str, Any]:
        target = plan.state["target"]
        job = await rollback_deployment(params.incident_id, target, timeout_s=params.alias_timeout_seconds)
        if not job.succeeded:
            raise RemediationError(f"Vercel alias job to {target} ended {job.job_status}")
        return {"from": plan.state["current"], "to": target, "job_status": job.job_status}

    async def verify(plan: Plan, applied: dict[str, Any]) -> Checked:
        current, _ = await find_rollback_target(plan.state["target"])
        extra = {"production_is_target": {"ok": current is not None and current.id == plan.state["target"],
                                          "production": current.id if current else None}}
        return await verify_scenario(params.verify_scenario, params.incident_id, params.verify_within_seconds,
                                     extra)

    return await run_remediation(Remediation(ACTION, plan, act, verify), params)
