"""A person steering an incident: resolve, set status, set severity, link, merge, note — one flow (form) each.

The record changes are runbook/lifecycle.py's (each a timeline event with who and via); these flows add what a
change sets in motion outside the record, through tasks/ as the response flows do:
- resolve-incident: refused while a remediation is in flight; then status page "resolved", pages resolved,
  #incidents, follow-ups scheduled, draft report (each once: a re-run sends nothing twice).
- set-incident-status: the status page and #incidents follow the new status (resolved = resolve-incident).
- set-incident-severity: the new severity's rules run again — #incidents and stakeholders told, the status page
  (its impact follows the severity), the customer notice for P0/P1, and while nobody has acknowledged, a raised
  severity pages on-call now (P0/P1); a running escalation re-plans itself for the new severity (counted from the
  change), and a raised one with none running starts the new severity's escalation.
- link-incidents, merge-incidents (one record with both timelines; the duplicate closes pointing at the
  survivor, its status page and pages are closed), note-incident.
`runbook resolve|set-status|set-severity|link|merge|note` make the same record changes from the command line and
hand the rest to these deployments (via "cli").
"""


from collections.abc import Callable
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows._response import announce_status, close_out
from runbook import lifecycle
from runbook.errors import IntegrationError
from runbook.models import EventKind, Incident, IncidentId, Severity, Status
from runbook.policy import get_policy
from runbook.store import open_store
from tasks.common import flow_run_id, run_parameter
from tasks.incident import read_incident, record
from tasks.pagerduty import page_contact, resolve_pages
from tasks.slack import post_slack_message
from tasks.statuspage import post_status_update

Via = Literal["prefect-ui", "cli", "api"]
StatusChoice = Literal["investigating", "identified", "monitoring", "resolved"]
SeverityChoice = Literal["P0", "P1", "P2", "P3"]
EscalateChoice = Literal["deployment", "inline", "none"]

def _by() -> Any:
    return Field(..., min_length=1, max_length=100, title="Your name",
                 description="Who makes the change (recorded on the timeline)")


def _via() -> Any:
    return Field("prefect-ui", title="Via", description="Where the change is made (the CLI passes cli)")


class ResolveParams(BaseModel):
    """Resolve an incident by hand."""

    incident_id: IncidentId = Field(..., title="Incident", description="The incident to resolve")
    reason: str = Field(..., min_length=1, max_length=1000, title="Reason",
                        description="What restored the service (or why it was not an incident)")
    by: str = _by()
    via: Via = _via()


class SetStatusParams(BaseModel):
    """Move an incident along investigating → identified → monitoring → resolved (or back) by hand."""

    incident_id: IncidentId = Field(..., title="Incident", description="The incident to change")
    status: StatusChoice = Field(..., title="Status", description="The new status (resolved needs a reason)")
    reason: str = Field("", max_length=1000, title="Reason", description="Why (shown on the timeline)")
    by: str = _by()
    via: Via = _via()


class SetSeverityParams(BaseModel):
    """Change an incident's severity; the new severity's escalation and communication rules run."""

    incident_id: IncidentId = Field(..., title="Incident", description="The incident to change")
    severity: SeverityChoice = Field(..., title="Severity",
                                     description="P0 complete outage, P1 major, P2 minor, P3 cosmetic")
    reason: str = Field("", max_length=1000, title="Reason", description="Why (shown on the timeline)")
    escalate: EscalateChoice = Field(
        "deployment", title="Escalation",
        description="Unacknowledged and raised: start the new severity's escalation as its own run, in this run, "
        "or not at all")
    by: str = _by()
    via: Via = _via()


class LinkParams(BaseModel):
    """Relate two incidents (both timelines say so)."""

    incident_id: IncidentId = Field(..., title="Incident", description="One incident")
    other_id: IncidentId = Field(..., title="Other incident", description="The related incident")
    by: str = _by()
    via: Via = _via()


class MergeParams(BaseModel):
    """Merge a duplicate (e.g. a person's report of the monitor's outage) into the incident that carries on."""

    survivor_id: IncidentId = Field(..., title="Survivor", description="The incident that carries on")
    duplicate_id: IncidentId = Field(..., title="Duplicate",
                              description="The incident merged away (closed, pointing at the survivor)")
    reason: str = Field("", max_length=1000, title="Reason", description="Why they are the same outage")
    by: str = _by()
    via: Via = _via()


class NoteParams(BaseModel):
    """Add a note to an incident's timeline."""

    incident_id: IncidentId = Field(..., title="Incident", description="The incident")
    text: str = Field(..., min_length=1, max_length=2000, title="Note", description="What to record")
    by: str = _by()
    via: Via = _via()


class LifecycleOutcome(BaseModel):
    """The incident after a hand change."""

    incident_id: str
    status: Status
    severity: Severity
    changed: bool = Field(description="False when the record already was so (a re-run changes nothing)")
    summary: str


def _outcome(incident: Incident, changed: bool) -> LifecycleOutcome:
    return LifecycleOutcome(incident_id=incident.id, status=incident.status, severity=incident.severity,
                            changed=changed, summary=lifecycle.describe(incident))


def _run_name(verb: str) -> Callable[[], str]:
    def name() -> str:
        return f"{verb} {run_parameter('incident_id') or run_parameter('survivor_id') or ''}".strip()

    return name


@flow(name="resolve-incident", flow_run_name=_run_name("resolve"))
async def resolve_incident(params: ResolveParams) -> LifecycleOutcome:
    """Resolve by hand with a reason (refused while a remediation is in flight); close out everywhere."""
    async with open_store() as store:
        incident, changed = await lifecycle.resolve(store, params.incident_id, reason=params.reason, by=params.by,
                                                    via=params.via, flow_run_id=flow_run_id())
    incident = await close_out(incident.id, f"Issue resolved: {params.reason.strip()}")
    return _outcome(incident, changed)


@flow(name="set-incident-status", flow_run_name=_run_name("set status of"))
async def set_incident_status(params: SetStatusParams) -> LifecycleOutcome:
    """Set the status by hand; the status page and #incidents follow."""
    async with open_store() as store:
        incident, changed = await lifecycle.set_status(store, params.incident_id, params.status, by=params.by,
                                                       reason=params.reason, via=params.via,
                                                       flow_run_id=flow_run_id())
    if incident.status is Status.RESOLVED:
        incident = await close_out(incident.id, f"Issue resolved: {params.reason.strip() or 'confirmed by hand'}")
    else:
        await announce_status(incident, incident.status, params.reason.strip() or incident.status.meaning)
    return _outcome(incident, changed)


async def _told_of(incident_id: str, change_id: str) -> set[str]:
    """Return who was already told of one severity change (sent messages carrying its event id)."""
    async with open_store() as store:
        events = await store.timeline(incident_id)
    return {str(e.details["told"]) for e in events
            if str(e.details.get("severity_change")) == change_id and e.details.get("sent") and e.details.get("told")}


async def _running_escalation(incident_id: str) -> str | None:
    """Return the name of an escalate-incident run of this incident that is still going (paused for an ack)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    going = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.SCHEDULED]
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[f"escalate {incident_id}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=going))), limit=1)
    return f"{runs[0].name} ({runs[0].id})" if runs else None


async def _start_escalation(incident: Incident, mode: EscalateChoice) -> str | None:
    """Start escalate-incident for the new severity: a deployment run (inline when none is registered)."""
    from flows.escalate_incident import EscalateParams, escalate_incident

    if mode == "none":
        return None
    if mode == "deployment":
        from prefect.deployments.flow_runs import arun_deployment
        from prefect.exceptions import ObjectNotFound

        try:
            run = await arun_deployment("escalate-incident/escalate-incident", timeout=0,
                                       parameters={"params": {"incident_id": incident.id}},
                                       flow_run_name=f"escalate {incident.id}",
                                       tags=["incident", incident.severity.value.lower()])
            return str(run.id)
        except ObjectNotFound:
            get_run_logger().warning("deployment escalate-incident not found; escalating in this run")
    await escalate_incident(EscalateParams(incident_id=incident.id))
    return None


@flow(name="set-incident-severity", flow_run_name=_run_name("set severity of"))
async def set_incident_severity(params: SetSeverityParams) -> LifecycleOutcome:
    """Change the severity; tell #incidents and stakeholders, and run the new severity's comms and escalation."""
    async with open_store() as store:
        incident, changed = await lifecycle.set_severity(store, params.incident_id, params.severity, by=params.by,
                                                         reason=params.reason, via=params.via,
                                                         flow_run_id=flow_run_id())
        changes = await store.timeline(incident.id, kind=EventKind.SEVERITY_CHANGED)
    if not changes:  # never changed by hand and the same severity asked for: nothing set in motion
        return _outcome(incident, changed)
    last = changes[-1]
    old, new = Severity(last.details["from"]), incident.severity
    raised = new.rank < old.rank
    comms = get_policy().communication
    why = f": {params.reason.strip()}" if params.reason.strip() else ""
    change = str(last.id if last.id is not None else last.at.isoformat())
    told = await _told_of(incident.id, change)  # each message once per change: a re-run posts nothing again
    if "incidents" not in told:
        await post_slack_message(comms.incidents_channel,
                                 f"[{new}] {incident.title} ({incident.id}) — severity "
                                 f"{'RAISED' if raised else 'lowered'} {old} → {new} ({new.label}) "
                                 f"by {last.actor}{why}",
                                 incident_id=incident.id, details={"severity_change": change, "told": "incidents"})
    if "stakeholders" not in told:
        await post_slack_message(comms.operations_channel,
                                 f"Stakeholder notice: {incident.id} is now {new} ({new.description}) — "
                                 f"{incident.title}. Updates follow in {comms.incidents_channel}.",
                                 incident_id=incident.id, kind=EventKind.NOTIFIED,
                                 details={"audience": "stakeholders", "severity": new.value,
                                          "severity_change": change, "told": "stakeholders"})
    if not incident.status.is_open:
        return _outcome(incident, changed)
    if new in comms.status_page_for or incident.statuspage_incident_id:
        try:  # the same status again, with the new impact: once per change (a re-run posts nothing)
            await post_status_update(incident.id, incident.status,
                                     f"{incident.status.meaning}. Impact: {new.description.lower()}.", since=last.at)
        except IntegrationError as exc:  # a status page outage must not stop the change
            await record(incident.id, EventKind.STATUS_PAGE, f"Status page update FAILED: {exc}",
                         {"status": incident.status.value, "sent": False, "error": str(exc)})
    if new in comms.customer_notice_for:
        async with open_store() as store:
            notices = [e for e in await store.timeline(incident.id, kind=EventKind.NOTIFIED)
                       if e.details.get("audience") == "customers"]
        if not notices:
            await record(incident.id, EventKind.NOTIFIED,
                         f"Customer notice: status page incident published to subscribers ({new})",
                         {"audience": "customers", "via": "status page"})
    if incident.acknowledged_at is None:
        running = await _running_escalation(incident.id)
        if raised and new in (Severity.P0, Severity.P1):
            chain = get_policy().chain()
            if chain:
                await page_contact(incident, chain[0], reason=f"severity raised to {new}")
        if running:  # it re-plans itself for the new severity (flows/escalate_incident.py); one chain, not two
            get_run_logger().info("the running escalation (%s) now follows %s's steps", running, new)
        elif raised:
            await _start_escalation(incident, params.escalate)
    return _outcome(await read_incident(incident.id), changed)


@flow(name="link-incidents", flow_run_name=_run_name("link"))
async def link_incidents(params: LinkParams) -> LifecycleOutcome:
    """Relate two incidents (each timeline names the other)."""
    async with open_store() as store:
        incident, _, changed = await lifecycle.link(store, params.incident_id, params.other_id, by=params.by,
                                                    via=params.via, flow_run_id=flow_run_id())
    return _outcome(incident, changed)


@flow(name="merge-incidents", flow_run_name=_run_name("merge into"))
async def merge_incidents(params: MergeParams) -> LifecycleOutcome:
    """Merge a duplicate into the survivor; close the duplicate's status page incident and pages.

    Run again after the record was merged (by the CLI, via "cli"), it still closes what the duplicate left open
    outside the record: its own status page incident ("resolved" posts once) and its pages.
    """
    async with open_store() as store:
        survivor, duplicate, changed = await lifecycle.merge(store, params.survivor_id, params.duplicate_id,
                                                             by=params.by, reason=params.reason, via=params.via,
                                                             flow_run_id=flow_run_id())
    if changed or params.via == "cli":
        await post_slack_message(get_policy().communication.incidents_channel,
                                 f"{duplicate.id} ({duplicate.title}) merged into {survivor.id} ({survivor.severity} "
                                 f"{survivor.title}) by {params.by}: one outage, one incident — continue there.",
                                 incident_id=survivor.id)
    if duplicate.statuspage_incident_id and duplicate.statuspage_incident_id != survivor.statuspage_incident_id:
        try:
            await post_status_update(duplicate.id, Status.RESOLVED,
                                     "This report is a duplicate; updates continue on the main incident.")
        except IntegrationError as exc:
            get_run_logger().warning("could not close the duplicate's status page incident: %s", exc)
    try:
        await resolve_pages(duplicate)
    except IntegrationError as exc:
        get_run_logger().warning("could not resolve the duplicate's pages in PagerDuty: %s", exc)
    return _outcome(survivor, changed)


@flow(name="note-incident", flow_run_name=_run_name("note on"))
async def note_incident(params: NoteParams) -> LifecycleOutcome:
    """Add a person's note to the timeline."""
    async with open_store() as store:
        await lifecycle.note(store, params.incident_id, params.text, by=params.by, via=params.via,
                             flow_run_id=flow_run_id())
        incident = await store.get(params.incident_id)
    return _outcome(incident, True)
