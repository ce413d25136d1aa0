"""The runbook's "Response Procedures": P0 (15 min), P1 (30 min) and P2/P3, one flow each, plus the dispatcher.

P0  acknowledge checks → page on-call (escalation beside: lead at 15 min, CTO at 30, until acknowledged) → initial
    assessment → communication (status page "investigating", #incidents, stakeholders, customers) → diagnose →
    remediation (plan, approval, act, verify) → monitor until stable → resolve.
P1  investigate the root cause first (diagnose: deployments, database performance, error rates) → page and escalate
    → communicate → workaround (the matching remediation, approved) → monitor impact → resolve.
P2/P3  communicate → acknowledge within the SLA (reminder, then page) → investigate → stakeholder update →
    follow-up for the next regular release; resolved only when a verification passes.
"resolved" is only ever reached after a verification passed; an incident a person declared (source "manual": the
UI, the CLI) is then only moved to monitoring and resolved when a person confirms (a pause with a confirm form,
announced in #incidents) or resolves it by hand. The monitor's and other automation's incidents resolve on it.
"""


import asyncio
from datetime import timedelta
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from flows._response import (
    FIRST_WORDS,
    acknowledge_checks,
    communicate,
    initial_assessment,
    is_urgent,
    mark_identified,
    mark_monitoring,
    monitor_until_stable,
    remediate,
    resolve_or_confirm,
    run_diagnosis,
    stay_open,
)
from flows.escalate_incident import EscalateParams, EscalationOutcome, escalate_incident
from runbook.models import (
    ActionItem,
    Diagnosis,
    Incident,
    IncidentId,
    Severity,
    Status,
    utcnow,
)
from runbook.policy import get_policy
from runbook.store import open_store
from tasks.common import run_parameter
from tasks.incident import read_incident
from tasks.pagerduty import first_page_tried
from tasks.slack import post_slack_message


class RespondParams(BaseModel):
    """Parameters of the severity procedures."""

    incident_id: IncidentId = Field(..., description="The incident to respond to")
    remediate: bool = Field(True, description="Start the suggested remediation (it still asks a human to approve)")
    requested_by: str = Field("runbook", min_length=1, max_length=100,
                              description="Recorded as the requester of remediations (two-person rule)")
    confirm_within_minutes: float = Field(
        240, gt=0, le=7 * 24 * 60, title="Confirmation window (minutes)",
        description="A person-declared incident is resolved only when a person confirms; without an answer by "
        "then it stays in monitoring")


class ResponseOutcome(BaseModel):
    """What the response did."""

    incident_id: str
    severity: Severity
    status: Status
    finding: str | None = None
    remediation: str | None = Field(None, description="The remediation flow and its outcome")
    resolved: bool = False
    acknowledged_by: str | None = None
    escalation: dict[str, Any] = Field(default_factory=dict)


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"{flow_run.flow_name} {run_parameter('incident_id', '')}"


async def _fix_and_verify(incident: Incident, diagnosis: Diagnosis | None, params: RespondParams
                          ) -> tuple[str | None, bool]:
    """Remediate what the diagnosis found, verify, monitor until stable and resolve; else keep it open."""
    result = None
    if diagnosis is not None and diagnosis.found:
        await mark_identified(incident, diagnosis)
        if params.remediate:
            result = await remediate(incident, diagnosis, params.requested_by)
    approval = getattr(result, "approval", None)
    if approval is not None and approval.decision == "approve":
        async with open_store() as store:  # approving the fix is taking the incident
            await store.acknowledge(incident.id, approval.approver, via=approval.via, identity=approval.identity)
    label = f"{result.action}: {result.outcome}" if result is not None else None
    if result is not None and result.outcome not in {"verified", "nothing_to_do"}:
        await stay_open(incident, f"remediation {label} — {result.detail or 'see the timeline'}")
        return label, False
    if result is not None:
        await mark_monitoring(incident, label or "")
    stable = await monitor_until_stable(incident, diagnosis.scenario if diagnosis else incident.scenario)
    if stable.passed:  # a person's report is resolved only when a person confirms it
        return label, await resolve_or_confirm(incident.id, stable, params.confirm_within_minutes)
    await stay_open(incident, f"verification still failing ({stable.summary()})")
    return label, False


async def _finish(incident_id: str, escalation: asyncio.Task[EscalationOutcome] | None, finding: str | None,
                  remediation: str | None, resolved: bool) -> ResponseOutcome:
    esc = await escalation if escalation is not None else None
    current = await read_incident(incident_id)
    return ResponseOutcome(incident_id=incident_id, severity=current.severity, status=current.status,
                           finding=finding, remediation=remediation, resolved=resolved,
                           acknowledged_by=current.acknowledged_by,
                           escalation=esc.model_dump() if esc is not None else {})


async def _page_and_escalate(incident: Incident) -> asyncio.Task[EscalationOutcome]:
    """Start the escalation beside the response: its first step pages on-call at once, later steps the lead and
    the CTO until someone acknowledges. The response does not wait for the page: with PagerDuty throttling or down
    the page is retried for minutes (pending on the timeline) while the status page, Slack and the diagnosis go on."""
    escalation = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    await _first_page_tried(incident.id, escalation)
    return escalation


FIRST_PAGE_WAIT_S = 15.0  # at most: the page goes out before the status page and Slack, nothing waits for minutes


async def _first_page_tried(incident_id: str, escalation: asyncio.Task[EscalationOutcome]) -> None:
    """Wait until the first page was sent or its first try failed (it is then retried, pending, beside the response);
    at once when the declaration's first response paged already."""
    await first_page_tried(incident_id, within=FIRST_PAGE_WAIT_S, until=escalation)


@flow(name="respond-p0", flow_run_name=_run_name)
async def respond_p0(params: RespondParams) -> ResponseOutcome:
    """P0 - Critical: complete service outage, 15-minute response."""
    incident = await read_incident(params.incident_id)
    await acknowledge_checks(incident)
    escalation = await _page_and_escalate(incident)  # lead and CTO later unless acknowledged
    await initial_assessment(incident)
    await communicate(incident, Status.INVESTIGATING, FIRST_WORDS[incident.severity])
    diagnosis = await run_diagnosis(incident)
    remediation, resolved = await _fix_and_verify(incident, diagnosis, params)
    return await _finish(incident.id, escalation, diagnosis.finding if diagnosis else None, remediation, resolved)


@flow(name="respond-p1", flow_run_name=_run_name)
async def respond_p1(params: RespondParams) -> ResponseOutcome:
    """P1 - High: major functionality broken, 30-minute response."""
    incident = await read_incident(params.incident_id)
    escalation = await _page_and_escalate(incident)
    diagnosis = await run_diagnosis(incident)  # investigate the root cause first
    await communicate(incident, Status.INVESTIGATING,
                      FIRST_WORDS[incident.severity] + (f" {diagnosis.finding}" if diagnosis else ""))
    remediation, resolved = await _fix_and_verify(incident, diagnosis, params)
    return await _finish(incident.id, escalation, diagnosis.finding if diagnosis else None, remediation, resolved)


@flow(name="respond-p2-p3", flow_run_name=_run_name)
async def respond_p2_p3(params: RespondParams) -> ResponseOutcome:
    """P2/P3 - Medium/Low: acknowledge within the SLA, investigate, update stakeholders, fix in the next release."""
    policy = get_policy()
    incident = await read_incident(params.incident_id)
    await communicate(incident, Status.INVESTIGATING, FIRST_WORDS[incident.severity])
    # A reminder in #incidents, then a page when the SLA runs out.
    escalation = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    diagnosis = await run_diagnosis(incident)
    finding = diagnosis.finding if diagnosis else "no cause identified yet"
    await post_slack_message(policy.communication.operations_channel,
                             f"Update on {incident.severity} {incident.id} ({incident.title}): {finding}. "
                             "A fix ships in the next regular release unless it recovers sooner.",
                             incident_id=incident.id)
    async with open_store() as store:
        if not await store.action_items(incident.id):
            owner = policy.chain()[0].name or policy.chain()[0].role
            due = (utcnow() + timedelta(days=policy.post_incident.follow_up_after_days)).date()
            await store.add_action_item(incident.id, ActionItem(title=f"Deploy a fix in the next regular release: "
                                                                f"{incident.title}"[:300], owner=owner, due=due))
    stable = await monitor_until_stable(incident, diagnosis.scenario if diagnosis else incident.scenario)
    resolved = False
    if stable.passed:
        resolved = await resolve_or_confirm(incident.id, stable, params.confirm_within_minutes)
    return await _finish(incident.id, escalation, finding, None, resolved)


PROCEDURES = {Severity.P0: respond_p0, Severity.P1: respond_p1, Severity.P2: respond_p2_p3, Severity.P3: respond_p2_p3}


async def respond_inline(incident: Incident, **options: Any) -> ResponseOutcome:
    """Run the incident's severity procedure in the current run."""
    outcome: ResponseOutcome = await PROCEDURES[incident.severity](RespondParams(incident_id=incident.id, **options))
    return outcome


__all__ = ["RespondParams", "ResponseOutcome", "respond_p0", "respond_p1", "respond_p2_p3", "respond_inline",
           "is_urgent"]
