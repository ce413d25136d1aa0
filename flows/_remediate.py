"""The one control flow every remediation follows, over the machinery in flows/_remediation.py.

    dry run:  plan → publish → return "dry_run"                      (no lock, nothing changes)
    else:     lock → plan → nothing to do? → started → approval → re-plan (ensure_unchanged) → act → applied → verify

Outcomes: refused (another remediation holds the environment), nothing_to_do, rejected / timed_out (the approval),
plan_changed, failed (the action raised; what it reports), verified / verification_failed. A plan that a safety
rule refuses (UnsafeOperation) is recorded and raised: the run fails with the rule's message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field

from flows._remediation import (
    Plan,
    RemediationResult,
    ensure_unchanged,
    publish_plan,
    remediation_lock,
    request_approval,
)
from runbook.errors import ApprovalDenied, PlanChanged, RemediationLocked, RunbookError, UnsafeOperation
from runbook.models import Approval, EventKind
from tasks.incident import record

INCIDENT_ID_PATTERN = r"^inc-[0-9]{8}-[0-9a-f]{6}$"


class RemediationParams(BaseModel):
    """Fields every remediation form has."""

    incident_id: str | None = Field(None, pattern=INCIDENT_ID_PATTERN,
                                    description="The incident this remediates (recorded on its timeline)")
    dry_run: bool = Field(False, description="Only compute and publish the plan; change nothing")
    approval_timeout_minutes: float = Field(60, gt=0, le=24 * 60,
                                            description="Without a decision by then nothing changes")
    requested_by: str | None = Field(None, min_length=1, max_length=100,
                                     description="Who asks for this remediation (recorded)")
    verify_within_seconds: float = Field(60, ge=0, le=1800,
                                         description="How long verification keeps re-checking before it fails")


class Checked(BaseModel):
    """A verification's verdict: passed, its checks, and one line for people."""

    passed: bool
    checks: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""


Planner = Callable[[], Awaitable[Plan]]
Actor = Callable[[Plan, Approval], Awaitable[dict[str, Any]]]
Verifier = Callable[[Plan, dict[str, Any]], Awaitable[Checked]]


@dataclass
class Remediation:
    """One remediation: how to plan it, act on the approved plan, and verify the result."""

    action: str
    plan: Planner
    act: Actor
    verify: Verifier
    two_person: bool = False


def run_name(action: str) -> Callable[[], str]:
    """Return a flow_run_name callable: '<action> <incident id | adhoc>'."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters or {}
        model = params.get("params")
        incident = getattr(model, "incident_id", None) if not isinstance(model, dict) else model.get("incident_id")
        return f"{action} {incident or 'adhoc'}"

    return name


async def run_remediation(spec: Remediation, params: RemediationParams) -> RemediationResult:
    """Plan, approve, re-check, act and verify one remediation; return what happened."""
    incident = params.incident_id
    logger = get_run_logger()
    if params.dry_run:
        plan = await _plan(spec, incident)
        await publish_plan(plan, incident)
        logger.info("Dry run of %s: %s", spec.action, plan.summary)
        return RemediationResult(action=spec.action, incident_id=incident, outcome="dry_run", plan=plan,
                                 detail="dry run: nothing was changed")
    try:
        async with remediation_lock(spec.action, incident):
            return await _locked(spec, params, logger)
    except RemediationLocked as exc:
        await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} refused: {exc}",
                     {"action": spec.action, "reason": "locked"})
        logger.warning("%s refused: %s", spec.action, exc)
        return RemediationResult(action=spec.action, incident_id=incident, outcome="refused", detail=str(exc))


async def _plan(spec: Remediation, incident: str | None) -> Plan:
    try:
        return await spec.plan()
    except UnsafeOperation as exc:
        await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} refused: {exc}",
                     {"action": spec.action, "reason": "unsafe", "error": str(exc)})
        raise


async def _locked(spec: Remediation, params: RemediationParams, logger: Any) -> RemediationResult:
    incident = params.incident_id

    def result(outcome: Any, plan: Plan, **kw: Any) -> RemediationResult:
        return RemediationResult(action=spec.action, incident_id=incident, outcome=outcome, plan=plan, **kw)

    plan = await _plan(spec, incident)
    await publish_plan(plan, incident)
    if plan.noop:
        await record(incident, EventKind.NOTE, f"{spec.action}: nothing to do — {plan.summary}",
                     {"action": spec.action, "plan_hash": plan.hash, "state": plan.state})
        return result("nothing_to_do", plan, detail=plan.summary)
    await record(incident, EventKind.REMEDIATION_STARTED, f"{spec.action} started: {plan.summary}",
                 {"action": spec.action, "plan_hash": plan.hash, "steps": plan.steps, "state": plan.state},
                 actor=params.requested_by or "runbook")
    try:
        approval = await request_approval(
            plan, incident_id=incident, requested_by=params.requested_by, two_person=spec.two_person,
            timeout=timedelta(minutes=params.approval_timeout_minutes))
    except ApprovalDenied as exc:
        outcome = "timed_out" if "no decision" in str(exc) else "rejected"
        await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} not applied ({outcome}): {exc}",
                     {"action": spec.action, "reason": outcome, "plan_hash": plan.hash})
        return result(outcome, plan, detail=str(exc))
    try:
        current = await spec.plan()
        await ensure_unchanged(approval, current, incident)
    except (PlanChanged, UnsafeOperation) as exc:
        if isinstance(exc, UnsafeOperation):
            await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} refused after approval: {exc}",
                         {"action": spec.action, "reason": "unsafe"})
        return result("plan_changed", plan, approval=approval, detail=str(exc))
    try:
        applied = await spec.act(current, approval)
    except RunbookError as exc:
        await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} failed: {exc}",
                     {"action": spec.action, "reason": "failed", "error": str(exc), "plan_hash": current.hash})
        logger.error("%s failed: %s", spec.action, exc)
        return result("failed", current, approval=approval, detail=str(exc))
    await record(incident, EventKind.REMEDIATION_APPLIED, f"{spec.action} applied: {current.summary}",
                 {"action": spec.action, "plan_hash": current.hash, "approved_by": approval.approver, **applied},
                 actor=approval.approver)
    checked = await spec.verify(current, applied)
    if checked.passed:
        return result("verified", current, approval=approval, verification=checked.model_dump(),
                      detail=f"applied and verified: {checked.summary}")
    detail = (f"applied, but verification FAILED ({checked.summary}); the incident stays open — investigate "
              "before resolving")
    logger.error("%s: %s", spec.action, detail)
    return result("verification_failed", current, approval=approval, verification=checked.model_dump(),
                  detail=detail)


async def verify_scenario(scenario: str, incident_id: str | None, within_seconds: float,
                          extra: dict[str, Any] | None = None) -> Checked:
    """Run verify-service for a runbook scenario, combined with remediation-specific checks (each has 'ok')."""
    from flows.verification import VerifyParams, verify_service

    verification = await verify_service(VerifyParams(scenario=scenario,  # type: ignore[arg-type]
                                                     incident_id=incident_id, within_seconds=within_seconds,
                                                     interval_seconds=1))
    checks: dict[str, Any] = {f"{scenario}:{k}": v for k, v in verification.checks.items()}
    checks.update(extra or {})
    failing = [k for k, v in (extra or {}).items() if not v.get("ok")]
    passed = verification.passed and not failing
    summary = verification.summary() if not failing else f"{verification.summary()}; failing: {', '.join(failing)}"
    if extra:
        await record(incident_id, EventKind.CHECK, f"Remediation checks {'passed' if not failing else 'FAILED'}: "
                     + ", ".join(f"{k}={'ok' if v.get('ok') else 'FAIL'}" for k, v in extra.items()),
                     {"check": "remediation", "ok": not failing, "checks": extra})
    return Checked(passed=passed, checks=checks, summary=summary)
