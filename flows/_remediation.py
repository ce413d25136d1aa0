"""Shared machinery of every remediation flow: plan → approve → re-check → act → verify (DESIGN safety 1–5).

Not a runbook procedure itself; the procedures in flows/ use it:
- `Plan`: what will change, as data; its hash is what a human approves.
- `request_approval`: a typed `ApprovalInput` RunInput whose description shows the plan in Markdown with its hash.
  Deployment runs suspend (no worker held; a resume re-runs the flow from the top, so earlier steps are idempotent);
  direct calls pause in-process. Rejection, timeout, a two-person-rule violation or a stale plan hash change nothing.
  The request is registered in the store (one decision per run and plan hash) and posted to #incidents with
  Approve / Reject buttons (Slack Web API). A decision from Slack is claimed in the store by the intake (verified
  Slack user, compare-and-set) before it resumes the run with the same ApprovalInput; the flow reads the claim to
  record `via` (slack, drill) and the verified identity; an unclaimed resume came from the Prefect UI's form.
  After the decision the Slack message is updated in place (buttons removed).
- `ensure_unchanged`: after approval the plan is recomputed; a different hash aborts before anything changes.
- `remediation_lock`: one remediation per environment at a time (a second is refused naming the holder).
- `run_remediation`: the one control flow every remediation follows, over the pieces above.
- `resolve_requester`: who asked, for the two-person rule and the record. Automation (no name, or "runbook", as
  respond passes) is "runbook/<the flow that started it>", so a human approver is always a second person; a name
  typed into the UI form is that name (via prefect-ui); `runbook remediate --by NAME [--as SLACK_ID]` sets the name,
  the approvers-map identity and the OS user (via cli); a Slack "Request" click on a dry run's plan sets the
  verified Slack user and their approvers-map name (via slack).

      dry run:  plan → publish → return "dry_run"                      (no lock, nothing changes)
      else:     lock → plan → nothing to do? → started → approval → re-plan (ensure_unchanged) → act → applied → verify

  Re-runs (issue 21): a lock whose holder's flow run ended (crashed with its worker, cancelled) is taken over by the
  store and the takeover is recorded ("lock … taken over from crashed run X"). `earlier_runs` reads what earlier
  runs of the action for the incident planned, got approved, applied or stopped on from the timeline; a planner
  uses it to see that the state it would change is already the one an earlier run aimed at (`Plan.done_by`). A
  plan with nothing to do after an earlier run acted (done, or crashed/cancelled mid-act) is not repeated: the new
  run only verifies (nothing_to_do when verification passes, else verification_failed), no approval needed.

  Guardrails (issue 19, runbook.guardrails): while a freeze holds the environment (`runbook freeze`, the
  freeze-remediations deployment) a remediation stops after its plan as a dry run would, and says why (outcome
  frozen; also when the freeze came while it waited for approval). The circuit breaker refuses a remediation past
  the policy's applied remediations per environment per hour, or past one applied run of the same action on the same
  target (`Plan.target`, default the environment) per incident: outcome refused, the reason on the timeline, and
  on-call paged once (a `guard:circuit_breaker:<environment>` incident). Checked before the approval request and
  again before acting; each applied remediation is counted in the store, on the runbook clock.

  Outcomes: refused (another remediation holds the environment, or the circuit breaker), frozen, nothing_to_do,
  rejected / timed_out (the approval), plan_changed, failed (the action raised; what it reports), verified /
  verification_failed. A plan that a safety rule refuses (UnsafeOperation) is recorded and raised: the run fails
  with the rule's message.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from flows._guard import page_oncall_about
from runbook import clock
from runbook.errors import ApprovalDenied, PlanChanged, RemediationLocked, RunbookError, UnsafeOperation
from runbook.guardrails import WINDOW, breaker_refusal, freeze_line
from runbook.models import Approval, ApprovalRequest, EventKind, IncidentId
from runbook.policy import get_policy, two_person_violation
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.common import flow_run_id, flow_run_url
from tasks.incident import record, record_once
from tasks.slack import post_approval_request, post_remediation_offer, show_decision

AUTOMATION = "runbook"  # the requester name of runs no person asked for (respond's default)
RequestedVia = Literal["form", "slack", "cli"]  # who filled in the request: this form (UI / API), Slack, the CLI
RequesterChannel = Literal["prefect-ui", "slack", "cli", "api", "runbook"]

Outcome = Literal[
    "dry_run", "nothing_to_do", "verified", "verification_failed", "rejected", "timed_out", "plan_changed",
    "refused", "failed", "frozen",
]


class Plan(BaseModel):
    """A remediation plan: what will change, shown to the approver and hashed."""

    action: str
    environment: str
    summary: str
    steps: list[str] = Field(default_factory=list)
    state: dict[str, Any] = Field(default_factory=dict, description="The facts the plan stands on (hashed)")
    noop: bool = Field(False, description="True when there is nothing to do")
    done_by: str | None = Field(None, description="With noop: the earlier run of this remediation for the "
                                "incident that already did it (the new run only verifies)")
    warnings: list[str] = Field(default_factory=list)
    target: str | None = Field(None, description="What the action changes, for the circuit breaker's one run of "
                                                 "an action on a target per incident (default: the environment)")

    @property
    def hash(self) -> str:
        """Return a short hash of what will change and the state it stands on."""
        canonical = json.dumps({"action": self.action, "environment": self.environment, "steps": self.steps,
                                "state": self.state}, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def markdown(self) -> str:
        """Render the plan for the approval dialog and the artifact."""
        lines = [f"## Plan: {self.action} ({self.environment})", "", self.summary, ""]
        if self.steps:
            lines += ["### Steps", *[f"{i}. {s}" for i, s in enumerate(self.steps, 1)], ""]
        if self.warnings:
            lines += ["### Warnings", *[f"- ⚠️ {w}" for w in self.warnings], ""]
        lines += [f"**Plan hash:** `{self.hash}` — approve only this plan; it is re-checked before acting."]
        return "\n".join(lines)


class ApprovalInput(RunInput):
    """A human decision on a plan (the Resume form in the Prefect UI)."""

    decision: Literal["approve", "reject"] = Field(description="approve to act on exactly this plan; reject to stop")
    approver: str = Field(min_length=1, max_length=100, description="Your name (recorded on the incident)")
    reason: str = Field("", max_length=500, description="Why (recorded on the incident)")
    plan_hash: str = Field(min_length=8, max_length=64, description="Hash of the plan you approve (pre-filled)")


class RemediationResult(BaseModel):
    """What a remediation flow did."""

    action: str
    incident_id: str | None
    outcome: Outcome
    plan: Plan | None = None
    approval: Approval | None = None
    detail: str = ""
    verification: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome in {"verified", "nothing_to_do", "dry_run"}


def _in_deployment() -> bool:
    """Return True when this flow run was created from a deployment (it can suspend and be re-run later)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)


async def publish_plan(plan: Plan, incident_id: str | None) -> None:
    """Publish the plan as a markdown artifact keyed by incident and action."""
    from prefect.artifacts import acreate_markdown_artifact

    key = f"plan-{plan.action}-{incident_id or 'adhoc'}".lower().replace("_", "-")
    await acreate_markdown_artifact(markdown=plan.markdown(), key=key, description=f"{plan.action} plan")


async def request_approval(
    plan: Plan,
    *,
    incident_id: str | None,
    requested_by: str | None = None,
    requester_identity: str | None = None,
    requested_via: str | None = None,
    timeout: timedelta = timedelta(hours=1),
    two_person: bool = False,
    poll_interval: int = 1,
) -> Approval:
    """Ask a human to approve the plan; return the approval or raise ApprovalDenied (nothing changed)."""
    run_id = flow_run_id() or f"adhoc-{uuid.uuid4().hex}"
    async with open_store() as store:
        request, newly = await store.open_approval_request(ApprovalRequest(
            flow_run_id=run_id, action=plan.action, plan_hash=plan.hash, incident_id=incident_id,
            summary=plan.summary, requested_by=requested_by, requester_identity=requester_identity,
            two_person=two_person))
    requested_at = request.requested_at
    already = not newly  # a suspended run resumed and re-ran from the top: the request was already made
    if not already:
        await record(incident_id, EventKind.APPROVAL_REQUESTED,
                     f"Approval requested for {plan.action}: {plan.summary}",
                     {"plan_hash": plan.hash, "action": plan.action, "steps": plan.steps,
                      "requested_by": requested_by, "requester_identity": requester_identity,
                      "requested_via": requested_via, "two_person": two_person}, actor=requested_by or AUTOMATION)
    link = flow_run_url(run_id)
    waiting = f"waiting for approval of {plan.action}: {plan.summary} (plan {plan.hash}): {link or 'this run'}"
    get_run_logger().info(waiting)  # the run log says what it waits for and where to decide, at INFO
    if not already:
        try:
            posted = await post_approval_request(
                action=plan.action, summary=plan.summary, steps=plan.steps, warnings=plan.warnings,
                plan_hash=plan.hash, flow_run_id=run_id, url=link, incident_id=incident_id,
                two_person_requester=requested_by if two_person else None)
            if posted.channel_id and posted.ts:
                async with open_store() as store:
                    await store.set_approval_message(run_id, plan.hash, {"channel_id": posted.channel_id,
                                                                         "ts": posted.ts})
        except Exception as exc:  # Slack down must not stop the request: the run still waits and says so
            get_run_logger().warning("could not post the approval request to Slack: %s", exc)
    description = plan.markdown()
    if two_person:
        description += f"\n\n**Two-person rule:** the approver must not be the requester ({requested_by})."
    form = ApprovalInput.with_initial_data(description=description, decision="reject", approver="",
                                           plan_hash=plan.hash)
    try:
        if _in_deployment():
            answer = await asuspend_flow_run(wait_for_input=form, timeout=int(timeout.total_seconds()),
                                            key=f"approval-{plan.action}")
        else:
            answer = await apause_flow_run(wait_for_input=form, timeout=int(timeout.total_seconds()),
                                          poll_interval=poll_interval)
    except FlowPauseTimeout:
        approval = Approval(decision="timeout", approver="(nobody)", reason=f"no decision within {timeout}",
                            plan_hash=plan.hash, action=plan.action, requested_by=requested_by,
                            requested_at=requested_at, via="runbook")
        await _settle(run_id, plan, incident_id, approval)
        raise ApprovalDenied(f"{plan.action}: no decision within {timeout}; nothing was changed") from None
    via, identity, at = await _channel_of(run_id, answer)
    approval = Approval(decision=answer.decision, approver=answer.approver.strip(), reason=answer.reason,
                        plan_hash=answer.plan_hash, action=plan.action, requested_by=requested_by,
                        requested_at=requested_at, via=via, identity=identity, **({"at": at} if at else {}))
    refusal = two_person_violation(approval.approver, approval.identity, requested_by, requester_identity)
    if two_person and answer.decision == "approve" and refusal:
        approval = approval.model_copy(update={"decision": "reject", "reason": refusal})
    await _settle(run_id, plan, incident_id, approval)
    if approval.decision != "approve":
        raise ApprovalDenied(f"{plan.action} rejected by {approval.approver}: {approval.reason or 'no reason'}; "
                             "nothing was changed")
    return approval


async def _channel_of(run_id: str, answer: ApprovalInput) -> tuple[Any, str | None, Any]:
    """Return (via, verified identity, decided at) of a resume: a matching claim in the store, else the UI form."""
    async with open_store() as store:
        request = await store.approval_request(run_id, answer.plan_hash)
    claim = request.claim if request is not None and request.status == "claimed" else None
    if claim is not None and claim.approver == answer.approver.strip() and claim.decision == answer.decision:
        return claim.via, claim.identity, claim.at
    return "prefect-ui", None, None


def decision_line(approval: Approval) -> str:
    """Return one line for people: 'Approved by Ben at 03:12 UTC via slack (plan db79ac80…)'."""
    verb = {"approve": "Approved", "reject": "Rejected", "timeout": "No decision"}[approval.decision]
    who = "" if approval.decision == "timeout" else f" by {approval.approver}"
    why = f": {approval.reason}" if approval.reason else ""
    return (f"{verb}{who} at {approval.at:%H:%M} UTC via {approval.via} (plan {approval.plan_hash[:8]}…)"
            f"{why}" + ("" if approval.decision == "approve" else " — nothing was changed"))


async def _settle(run_id: str, plan: Plan, incident_id: str | None, approval: Approval) -> None:
    """Record the decision (store request, incident) and update the Slack message in place, buttons removed."""
    async with open_store() as store:
        await store.settle_approval(run_id, plan.hash, approval)
        request = await store.approval_request(run_id, plan.hash)
    await _record_approval(incident_id, approval)
    message = request.message if request is not None else {}
    if message.get("channel_id") and message.get("ts"):
        line = decision_line(approval)
        await show_decision(message["channel_id"], message["ts"], f"*{plan.action}*: {line}", plan.summary)


async def _record_approval(incident_id: str | None, approval: Approval) -> None:
    if incident_id:
        async with open_store() as store:
            await store.record_approval(incident_id, approval, flow_run_id=flow_run_id())


async def ensure_unchanged(approved: Approval, current: Plan, incident_id: str | None) -> None:
    """Abort (PlanChanged) when the recomputed plan differs from the approved one."""
    if current.hash != approved.plan_hash:
        await record(incident_id, EventKind.REMEDIATION_ABORTED,
                     f"{current.action} aborted: the plan changed after approval ({approved.plan_hash} → "
                     f"{current.hash}); nothing was changed",
                     {"approved_hash": approved.plan_hash, "current_hash": current.hash, "steps": current.steps})
        raise PlanChanged(f"{current.action}: state changed since approval (approved {approved.plan_hash}, now "
                          f"{current.hash}); nothing was changed — review the new plan")


@asynccontextmanager
async def remediation_lock(action: str, incident_id: str | None, ttl: timedelta = timedelta(hours=2)
                           ) -> AsyncIterator[str]:
    """Hold the environment's remediation lock for the duration (RemediationLocked if another run has it)."""
    environment = get_settings().environment
    name = f"remediation:{environment}"
    holder = f"{action} {incident_id or ''} run {flow_run_id() or uuid.uuid4().hex[:8]}".strip()
    async with open_store() as store:
        taken_over = await store.acquire_lock(name, holder, ttl)
    if taken_over is not None:
        await _record_takeover(incident_id, name, taken_over)
    try:
        yield holder
    except Pause:
        # Suspended for approval: the run ends here and resumes later with the same holder name, so the lock
        # stays taken (an abandoned suspension frees it when the TTL runs out).
        raise
    except BaseException:
        await _release(name, holder)
        raise
    else:
        await _release(name, holder)


async def _release(name: str, holder: str) -> None:
    async with open_store() as store:
        await store.release_lock(name, holder)


_HOLDER_RUN = re.compile(r"\brun ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")


async def _record_takeover(incident_id: str | None, name: str, holder: str) -> None:
    """Record that the lock was taken over from a holder whose Prefect flow run ended without releasing it."""
    found = _HOLDER_RUN.search(holder)
    run = found[1] if found else None
    state = await _run_state_name(run) if run else None
    how = (state or "ended").lower()
    line = f"lock {name} taken over from {how} run {run or holder}"
    get_run_logger().warning("%s (holder: %s)", line, holder)
    await record(incident_id, EventKind.NOTE, line,
                 {"lock": name, "taken_over_from": holder, "holder_run": run, "holder_state": state})


async def _run_state_name(run_id: str) -> str | None:
    """Return the state name of a flow run (None when Prefect cannot say); for the record only."""
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(run_id))
    except Exception:  # the takeover already happened; its record must not fail on the lookup
        return None
    return run.state.name if run.state is not None else None


# -- what earlier runs of a remediation for the incident did (a re-run must not repeat it) --------------------------

class EarlierRun(BaseModel):
    """What one earlier run of a remediation for an incident recorded on the timeline."""

    flow_run_id: str
    plan_hash: str
    summary: str = ""
    state: dict[str, Any] = Field(default_factory=dict)
    steps: list[str] = Field(default_factory=list)
    approved_by: str | None = None
    applied: dict[str, Any] | None = None
    stopped: str | None = Field(None, description="Why it stopped before acting (rejected, timed_out, "
                                                  "plan_changed, unsafe, locked), or failed while acting")

    @property
    def may_have_acted(self) -> bool:
        """Return True when the run got past its approval into acting (done, crashed or failed while at it)."""
        return self.applied is not None or (self.approved_by is not None
                                            and self.stopped not in {"plan_changed", "unsafe"})

    def describe(self) -> str:
        """Return how the run ended, for a plan's summary."""
        if self.applied is not None:
            return f"run {self.flow_run_id}"
        if self.stopped == "failed":
            return f"run {self.flow_run_id} (it failed while acting)"
        return f"run {self.flow_run_id} (approved by {self.approved_by}; it ended before recording the result: " \
               "crashed or cancelled)"


async def earlier_runs(incident_id: str | None, action: str) -> list[EarlierRun]:
    """Return the earlier runs of an action for the incident that planned to change something, oldest first.

    Read from the timeline: each run's remediation_started (its plan), its approval, remediation_applied and
    remediation_aborted events. The current run is left out (a suspended run resumed re-runs from the top).
    """
    if not incident_id:
        return []
    async with open_store() as store:
        events = await store.timeline(incident_id)
    me = flow_run_id()
    runs: dict[str, EarlierRun] = {}
    for e in events:
        run, details = e.flow_run_id, e.details
        if not run or run == me or details.get("action") != action:
            continue
        if e.kind == EventKind.REMEDIATION_STARTED:
            runs.setdefault(run, EarlierRun(flow_run_id=run, plan_hash=str(details.get("plan_hash", "")),
                                            summary=e.summary, state=dict(details.get("state") or {}),
                                            steps=list(details.get("steps") or [])))
            continue
        earlier = runs.get(run)
        if earlier is None:
            continue
        if e.kind == EventKind.APPROVAL and details.get("decision") == "approve" \
                and details.get("plan_hash") == earlier.plan_hash:
            earlier.approved_by = str(details.get("approver") or "?")
        elif e.kind == EventKind.REMEDIATION_APPLIED:
            earlier.applied = dict(details)
        elif e.kind == EventKind.REMEDIATION_ABORTED:
            earlier.stopped = str(details.get("reason") or ("plan_changed" if "approved_hash" in details else
                                                            "aborted"))
    return list(runs.values())


async def latest_that_acted(incident_id: str | None, action: str) -> EarlierRun | None:
    """Return the newest earlier run of the action for the incident that may have acted, if any."""
    acted = [r for r in await earlier_runs(incident_id, action) if r.may_have_acted]
    return acted[-1] if acted else None


# -- the driver every remediation flow runs -------------------------------------------------------------------------

class RemediationParams(BaseModel):
    """Fields every remediation form has."""

    incident_id: IncidentId | None = Field(None,
                                    description="The incident this remediates (recorded on its timeline)")
    dry_run: bool = Field(False, description="Only compute and publish the plan; change nothing")
    approval_timeout_minutes: float = Field(60, gt=0, le=24 * 60,
                                            description="Without a decision by then nothing changes")
    requested_by: str | None = Field(None, min_length=1, max_length=100,
                                     description="Who asks for this remediation (recorded)")
    requester_identity: str | None = Field(
        None, min_length=1, max_length=100,
        description="The requester's identity in the policy's approvers map (a Slack user id), set by the channel "
                    "that started the run (a Slack click, `runbook remediate --as`); the two-person rule compares "
                    "identities when both sides have one")
    requested_via: RequestedVia = Field(
        "form", description="Where the request came from: form (this form, or the API), or slack / cli (set by them)")
    requester_os_user: str | None = Field(None, max_length=100,
                                          description="`runbook remediate`: the operating-system user who ran it")
    verify_within_seconds: float = Field(60, ge=0, le=1800,
                                         description="How long verification keeps re-checking before it fails")


class Requester(BaseModel):
    """Who asked for a remediation, as the two-person rule and the record see it."""

    name: str | None = None
    identity: str | None = None
    via: RequesterChannel = "api"
    os_user: str | None = None

    def details(self) -> dict[str, Any]:
        """Return the timeline fields of the requester."""
        return {"requested_by": self.name, "requester_identity": self.identity, "requested_via": self.via,
                **({"requester_os_user": self.os_user} if self.os_user else {})}


def requester_of(params: RemediationParams, *, starter: str | None, from_deployment: bool) -> Requester:
    """Return the requester of a run: automation is 'runbook/<starter>' (no identity, so any person approving is a
    second person); a person keeps their name, identity and channel (default: the UI form, or the API)."""
    name = (params.requested_by or "").strip()
    automated = name.casefold() == AUTOMATION or name.casefold().startswith(AUTOMATION + "/")
    if automated or (not name and starter is not None):
        label = name if "/" in name else f"{AUTOMATION}/{starter or 'automation'}"
        return Requester(name=label, via="runbook")
    via: RequesterChannel = params.requested_via if params.requested_via != "form" else (
        "prefect-ui" if from_deployment else "api")
    return Requester(name=name or None, identity=params.requester_identity if name else None, via=via,
                     os_user=params.requester_os_user)


async def resolve_requester(params: RemediationParams, action: str) -> Requester:
    """Return the requester of the current run (the parent flow's name is the starter of a subflow)."""
    from prefect.runtime import flow_run

    starter: str | None = None
    parent = flow_run.parent_flow_run_id
    if parent:
        starter = await _flow_name_of(str(parent))
    elif (params.requested_by or "").strip().casefold() == AUTOMATION:
        starter = action
    from_deployment = _in_deployment() or bool(flow_run.parent_deployment_id)
    return requester_of(params, starter=starter, from_deployment=from_deployment)


async def _flow_name_of(run_id: str) -> str | None:
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(run_id))
            return (await client.read_flow(run.flow_id)).name
    except Exception:  # the name is for the record only: automation stays automation without it
        return "automation"


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
        if not plan.noop:
            await _offer(plan, incident)
        return RemediationResult(action=spec.action, incident_id=incident, outcome="dry_run", plan=plan,
                                 detail="dry run: nothing was changed")
    if (frozen := await _frozen(spec, incident)) is not None:
        return frozen
    try:
        async with remediation_lock(spec.action, incident):
            return await _locked(spec, params, logger)
    except RemediationLocked as exc:
        await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} refused: {exc}",
                     {"action": spec.action, "reason": "locked"})
        logger.warning("%s refused: %s", spec.action, exc)
        return RemediationResult(action=spec.action, incident_id=incident, outcome="refused", detail=str(exc))


async def _frozen(spec: Remediation, incident: str | None, plan: Plan | None = None,
                  approval: Approval | None = None) -> RemediationResult | None:
    """While a freeze holds the environment: stop after the plan (published, as a dry run), say why; else None."""
    async with open_store() as store:
        freeze = await store.freeze_of(get_settings().environment)
    if freeze is None:
        return None
    if plan is None:
        plan = await _plan(spec, incident)
        await publish_plan(plan, incident)
    why = f"remediations are {freeze_line(freeze)}"
    detail = f"{spec.action} stopped after its plan ({plan.summary}): {why}; nothing was changed"
    await record(incident, EventKind.REMEDIATION_ABORTED, detail,
                 {"action": spec.action, "reason": "frozen", "plan_hash": plan.hash, "freeze": freeze})
    get_run_logger().warning(detail)
    return RemediationResult(action=spec.action, incident_id=incident, outcome="frozen", plan=plan,
                             approval=approval, detail=detail)


async def _guarded(spec: Remediation, plan: Plan, incident: str | None,
                   approval: Approval | None = None) -> RemediationResult | None:
    """Return the result of a remediation the freeze or the circuit breaker stops now, else None (it goes on)."""
    if (frozen := await _frozen(spec, incident, plan, approval)) is not None:
        return frozen
    environment, target = get_settings().environment, plan.target or plan.environment
    now = clock.now()
    async with open_store() as store:
        last_hour = await store.applications(environment, since=now - WINDOW)
        of_incident = await store.applications(environment, incident_id=incident) if incident else []
    reason = breaker_refusal(environment=environment, action=spec.action, target=target, incident_id=incident,
                             last_hour=last_hour, of_incident=of_incident, now=now, limits=get_policy().guardrails)
    if reason is None:
        return None
    get_run_logger().error("%s refused: %s", spec.action, reason)
    page, paged = await page_oncall_about(
        "circuit_breaker", f"Remediation circuit breaker open in {environment}",
        f"{spec.action} for {incident or 'no incident'} refused: {reason}", actor="circuit-breaker")
    await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} refused: {reason}",
                 {"action": spec.action, "reason": "circuit_breaker", "plan_hash": plan.hash, "target": target,
                  "breaker_incident": page.id, "paged": paged})
    return RemediationResult(action=spec.action, incident_id=incident, outcome="refused", plan=plan,
                             approval=approval, detail=f"{reason} (on-call paged: {page.id})")


async def _count_applied(plan: Plan, incident: str | None) -> None:
    """Count an applied remediation for the circuit breaker (on the runbook clock)."""
    async with open_store() as store:
        await store.record_application(get_settings().environment, plan.action, plan.target or plan.environment,
                                       incident_id=incident, flow_run_id=flow_run_id(), at=clock.now())


async def _offer(plan: Plan, incident: str | None) -> None:
    """Post a dry run's plan to #incidents with a Request button (Slack app only); a failure is only logged."""
    run_id = flow_run_id()
    if not run_id:
        return
    try:
        await post_remediation_offer(action=plan.action, summary=plan.summary, steps=plan.steps,
                                     warnings=plan.warnings, plan_hash=plan.hash, flow_run_id=run_id,
                                     url=flow_run_url(run_id), incident_id=incident)
    except Exception as exc:  # a dry run's result does not depend on Slack
        get_run_logger().warning("could not post the plan to Slack: %s", exc)


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
    if plan.noop and plan.done_by is None:
        done = await latest_that_acted(incident, spec.action)
        if done is not None:  # nothing left to do because an earlier run did it: that run's result is verified
            plan = plan.model_copy(update={"done_by": done.flow_run_id,
                                           "summary": f"{plan.summary}: done by {done.describe()}"})
    await publish_plan(plan, incident)
    if plan.noop:
        await record(incident, EventKind.NOTE, f"{spec.action}: nothing to do — {plan.summary}",
                     {"action": spec.action, "plan_hash": plan.hash, "state": plan.state, "done_by": plan.done_by})
        if plan.done_by is None:
            return result("nothing_to_do", plan, detail=plan.summary)
        # A re-run after an earlier run acted (and may have crashed before verifying): verify, change nothing.
        checked = await spec.verify(plan, {})
        if checked.passed:
            return result("nothing_to_do", plan, verification=checked.model_dump(),
                          detail=f"{plan.summary}; verified: {checked.summary}")
        detail = (f"{plan.summary}, but verification FAILED ({checked.summary}); the incident stays open — "
                  "investigate before resolving")
        logger.error("%s: %s", spec.action, detail)
        return result("verification_failed", plan, verification=checked.model_dump(), detail=detail)
    if (refused := await _guarded(spec, plan, incident)) is not None:
        return refused
    requester = await resolve_requester(params, spec.action)
    # Once per remediation: a deployment run suspended for approval re-runs from the top when resumed.
    await record_once(incident, EventKind.REMEDIATION_STARTED, f"{spec.action} started: {plan.summary}",
                      {"action": spec.action, "plan_hash": plan.hash, "steps": plan.steps, "state": plan.state,
                       **requester.details()},
                      actor=requester.name or AUTOMATION, same=("action", "plan_hash"))
    try:
        approval = await request_approval(
            plan, incident_id=incident, requested_by=requester.name, requester_identity=requester.identity,
            requested_via=requester.via, two_person=spec.two_person,
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
    if (stopped := await _guarded(spec, current, incident, approval=approval)) is not None:
        return stopped  # frozen or the breaker tripped while the plan waited for its approval
    try:
        applied = await spec.act(current, approval)
    except RunbookError as exc:
        await record(incident, EventKind.REMEDIATION_ABORTED, f"{spec.action} failed: {exc}",
                     {"action": spec.action, "reason": "failed", "error": str(exc), "plan_hash": current.hash})
        logger.error("%s failed: %s", spec.action, exc)
        return result("failed", current, approval=approval, detail=str(exc))
    await _count_applied(current, incident)
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
