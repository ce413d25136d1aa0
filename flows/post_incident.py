"""Post-incident procedures: the 24-hour review and the 1-week follow-up, scheduled when the incident is resolved.

    resolve ──► schedule_follow_ups(incident_id)
                  ├─ post-incident-review     at resolved + 24 h  (draft report → remind #incidents → wait for the
                  │                                                Review form → record → report; deadline → lead)
                  └─ post-incident-follow-up  at resolved + 7 d   (final report, overdue action items, runbook
                                                                   update reminder, learnings, executive summary)

Both runs are created as scheduled deployment runs named after the incident, so the UI lists them as upcoming.
A FollowUp row per incident and kind (unique in the store) is written before the run is created and gets the run's
id after, and a run with the same name is looked up before one is created: scheduling twice, or the sweep racing a
resolve, never makes a second run.
"""


from datetime import date, datetime, timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterName
from prefect.context import FlowRunContext
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import BaseModel, Field

from runbook.errors import InputError
from runbook.models import (
    ActionItem,
    EventKind,
    FollowUp,
    FollowUpKind,
    Incident,
    IncidentId,
    TimelineEvent,
    utcnow,
)
from runbook.policy import Policy, get_policy
from runbook.report import ReportFiles, build_report, fmt_duration, write_report
from runbook.store import IncidentStore, open_store
from tasks.common import flow_run_id
from tasks.incident import get_incident
from tasks.slack import SlackResult, post_slack_message

# -- names: the one place that knows them ----------------------------------------------------------------------

REVIEW_FLOW = "post-incident-review"
FOLLOW_UP_FLOW = "post-incident-follow-up"
# Deployments are named like their flow, so "<flow>/<deployment>" repeats the name.
REVIEW_DEPLOYMENT = f"{REVIEW_FLOW}/{REVIEW_FLOW}"
FOLLOW_UP_DEPLOYMENT = f"{FOLLOW_UP_FLOW}/{FOLLOW_UP_FLOW}"
FOLLOW_UP_FLOWS: dict[FollowUpKind, tuple[str, str]] = {
    FollowUpKind.REVIEW_24H: (REVIEW_FLOW, REVIEW_DEPLOYMENT),
    FollowUpKind.FOLLOW_UP_1W: (FOLLOW_UP_FLOW, FOLLOW_UP_DEPLOYMENT),
}


# details.purpose of the messages these flows send; a re-run (or a resume) checks them before sending again.
PURPOSE_REVIEW_REMINDER = "review-reminder"
PURPOSE_REVIEW_ESCALATION = "review-escalation"
PURPOSE_ACTION_REMINDER = "action-item-reminder"
PURPOSE_ACTION_ESCALATION = "action-item-escalation"
PURPOSE_RUNBOOK_UPDATE = "runbook-update"
PURPOSE_LEARNINGS = "learnings"
PURPOSE_EXECUTIVE_SUMMARY = "executive-summary"


def follow_up_run_name(kind: FollowUpKind, incident_id: str) -> str:
    """Return the flow-run name of a follow-up: the flow name and the incident id."""
    return f"{FOLLOW_UP_FLOWS[kind][0]} {incident_id}"


def follow_up_due(kind: FollowUpKind, resolved_at: datetime, policy: Policy) -> datetime:
    """Return when a follow-up is due: resolved + 24 h for the review, resolved + 7 days for the follow-up."""
    if kind is FollowUpKind.REVIEW_24H:
        return resolved_at + timedelta(hours=policy.post_incident.review_after_hours)
    return resolved_at + timedelta(days=policy.post_incident.follow_up_after_days)


# -- parameters and the review form ----------------------------------------------------------------------------


class IncidentParams(BaseModel):
    """Which incident."""

    incident_id: IncidentId = Field(..., description="The incident id, e.g. inc-20261126-1a2b3c")


class PostIncidentReviewParams(IncidentParams):
    """Parameters of the 24-hour post-incident review."""

    review_deadline_hours: float | None = Field(
        None, gt=0, le=24 * 30,
        description="How long to wait for the review form before escalating; default: the policy's value (48 h)",
    )
    poll_interval_seconds: int = Field(
        10, ge=1, le=300, description="How often a waiting (paused, not suspended) run checks for the review form"
    )


class PostIncidentFollowUpParams(IncidentParams):
    """Parameters of the 1-week post-incident follow-up."""


class ActionItemInput(BaseModel):
    """One action item from the review."""

    title: str = Field(..., min_length=1, max_length=300, pattern=r"\S", description="What must be done")
    owner: str = Field(..., min_length=1, max_length=100, pattern=r"\S",
                       description="Who owns it (Slack handle, e.g. @alex)")
    due: date = Field(..., description="Due date (YYYY-MM-DD)",
                      json_schema_extra={"pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"})


class Review(RunInput):
    """The post-incident review's findings; every rule is in the JSON schema (the server checks it at resume)."""

    reviewed_by: str = Field(..., min_length=1, max_length=100, pattern=r"\S", title="Reviewed by",
                             description="Who held the review (Prefect does not record who resumed a run)")
    root_cause: str = Field(..., min_length=1, max_length=10_000, pattern=r"\S", title="Root cause",
                            description="Detailed analysis of what caused the incident")
    lessons_learned: str = Field(..., min_length=1, max_length=10_000, pattern=r"\S", title="Lessons learned",
                                 description="What went well and what could be improved")
    preventive_measures: str = Field(..., min_length=1, max_length=10_000, pattern=r"\S",
                                     title="Preventive measures",
                                     description="Actions to prevent similar incidents")
    action_items: list[ActionItemInput] = Field(default_factory=list, max_length=50, title="Action items",
                                                description="Follow-up work: title, owner, due date")
    financial_impact: str | None = Field(None, max_length=2000, title="Financial impact",
                                         description="Revenue lost, refunds, credits (optional)")


# -- outcomes ---------------------------------------------------------------------------------------------------


class FollowUpRun(BaseModel):
    """What scheduling did for one follow-up."""

    kind: FollowUpKind
    due: datetime
    flow_run_name: str
    flow_run_id: str | None = None
    scheduled_time: datetime | None = None
    status: Literal["created", "attached", "exists", "done", "deployment-missing"]


class ReviewOutcome(BaseModel):
    """How the review ended."""

    incident_id: str
    outcome: Literal["recorded", "already-recorded", "escalated"]
    report_path: str
    action_items: int = 0


class FollowUpOutcome(BaseModel):
    """What the 1-week follow-up did."""

    incident_id: str
    report_path: str
    reminded_items: list[int] = Field(default_factory=list)
    escalated_items: list[int] = Field(default_factory=list)
    messages: list[SlackResult] = Field(default_factory=list)


# -- scheduling -------------------------------------------------------------------------------------------------


async def _run_exists(client: Any, run_id: str) -> bool:
    try:
        await client.read_flow_run(run_id)
        return True
    except ObjectNotFound:
        return False


async def ensure_follow_up_run(store: IncidentStore, incident: Incident, kind: FollowUpKind, *,
                               now: datetime | None = None, policy: Policy | None = None) -> FollowUpRun:
    """Make sure one scheduled run exists for this follow-up (row first, then the run); never create two."""
    if incident.resolved_at is None:
        raise InputError(f"{incident.id} is not resolved: nothing to follow up yet")
    policy = policy or get_policy()
    now = now or utcnow()
    flow_name, deployment_name = FOLLOW_UP_FLOWS[kind]
    due = follow_up_due(kind, incident.resolved_at, policy)
    name = follow_up_run_name(kind, incident.id)
    row, _ = await store.add_follow_up(incident.id, FollowUp(kind=kind, due=due))
    out = FollowUpRun(kind=kind, due=row.due, flow_run_name=name, flow_run_id=row.flow_run_id, status="exists")
    if row.done:
        out.status = "done"
        return out
    async with get_client() as client:
        if row.flow_run_id and await _run_exists(client, row.flow_run_id):
            return out
        try:
            deployment = await client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            _warn(f"deployment {deployment_name} not found: {name} not scheduled yet "
                                   "(the follow-up sweep will create it once the deployment exists)")
            out.status = "deployment-missing"
            return out
        # A run with this name may exist without its id on the row (a crash, or another scheduler just now).
        found = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            limit=1,
        )
    if found:
        run = found[0]
        out.status = "attached"
    else:
        scheduled = max(row.due, now)
        run = await arun_deployment(
            deployment_name,
            parameters={"params": {"incident_id": incident.id}},
            scheduled_time=scheduled,
            timeout=0,
            flow_run_name=name,
            as_subflow=False,
            idempotency_key=f"{kind.value}:{incident.id}",
        )
        out.status = "created"
    out.flow_run_id = str(run.id)
    out.scheduled_time = run.expected_start_time or (run.state.state_details.scheduled_time if run.state else None)
    await store.set_follow_up(incident.id, kind, flow_run_id=out.flow_run_id)
    overdue = " (overdue: runs now)" if out.scheduled_time and out.scheduled_time > row.due else ""
    await store.append_event(incident.id, TimelineEvent(
        kind=EventKind.FOLLOW_UP_SCHEDULED,
        actor="runbook",
        summary=f"{flow_name} scheduled for {out.scheduled_time:%Y-%m-%d %H:%M} UTC{overdue}"
        if out.scheduled_time else f"{flow_name} scheduled",
        details={"follow_up": kind.value, "due": row.due.isoformat(), "flow_run_id": out.flow_run_id,
                 "flow_run_name": name, "deployment": deployment_name, "status": out.status,
                 "scheduled_time": out.scheduled_time.isoformat() if out.scheduled_time else None},
        flow_run_id=flow_run_id(),
    ))
    return out


def _warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except Exception:
        import logging

        logging.getLogger("runbook.flows.post_incident").warning(message)


async def schedule_follow_ups(incident_id: str, *, now: datetime | None = None) -> list[FollowUpRun]:
    """Schedule the 24-hour review and the 1-week follow-up of a resolved incident (idempotent)."""
    policy = get_policy()
    async with open_store() as store:
        incident = await store.get(incident_id)
        return [await ensure_follow_up_run(store, incident, kind, now=now, policy=policy) for kind in FollowUpKind]


@task(name="schedule_follow_ups", retries=0, cache_policy=NO_CACHE, timeout_seconds=120)
async def schedule_follow_ups_task(incident_id: str) -> list[FollowUpRun]:
    """Schedule the incident's post-incident review and follow-up runs (task wrapper of schedule_follow_ups)."""
    return await schedule_follow_ups(incident_id)


# -- shared steps -----------------------------------------------------------------------------------------------


def _sent(timeline: list[TimelineEvent], purpose: str, *, run_id: str | None = None,
          sent_only: bool = True) -> bool:
    return any(e.details.get("purpose") == purpose and (not sent_only or e.details.get("sent") is True)
               and (run_id is None or e.flow_run_id == run_id) for e in timeline)


@task(name="read_timeline", retries=0, cache_policy=NO_CACHE)
async def read_timeline(incident_id: str) -> list[TimelineEvent]:
    """Return the incident's timeline."""
    async with open_store() as store:
        return await store.timeline(incident_id)


@task(name="write_incident_report", retries=0, cache_policy=NO_CACHE, timeout_seconds=120)
async def write_incident_report(incident_id: str, stage: Literal["draft", "reviewed", "final"]) -> ReportFiles:
    """Render the report (Markdown + timeline SVG + artifact) and record it once per run and stage."""
    async with open_store() as store:
        files = await write_report(store, incident_id)
        run_id = flow_run_id()
        done = [e for e in await store.timeline(incident_id, kind=EventKind.REPORT_WRITTEN)
                if e.details.get("stage") == stage and e.flow_run_id == run_id]
        if not done:
            await store.append_event(incident_id, TimelineEvent(
                kind=EventKind.REPORT_WRITTEN, actor="runbook",
                summary=f"Incident report ({stage}) written: {files.markdown_path}",
                details={"stage": stage, "path": str(files.markdown_path), "picture": str(files.picture_path),
                         "artifact_key": files.artifact_key},
                flow_run_id=run_id,
            ))
    return files


@task(name="record_review", retries=0, cache_policy=NO_CACHE)
async def record_review(incident_id: str, review: dict[str, Any]) -> int:
    """Write the review's findings and action items on the record; once per run. Return the new item count."""
    data = Review.model_validate(review)
    run_id = flow_run_id()
    async with open_store() as store:
        if any(e.flow_run_id == run_id for e in await store.timeline(incident_id, kind=EventKind.REVIEW_RECORDED)):
            return 0
        fields: dict[str, Any] = {"root_cause": data.root_cause.strip(),
                                  "lessons_learned": data.lessons_learned.strip(),
                                  "preventive_measures": data.preventive_measures.strip()}
        if data.financial_impact and data.financial_impact.strip():
            fields["financial_impact"] = data.financial_impact.strip()
        await store.update(incident_id, **fields)
        existing = {(i.title, i.owner) for i in await store.action_items(incident_id)}
        added = 0
        for item in data.action_items:
            if (item.title.strip(), item.owner.strip()) in existing:
                continue
            await store.add_action_item(incident_id, ActionItem(title=item.title.strip(), owner=item.owner.strip(),
                                                                due=item.due))
            added += 1
        await store.append_event(incident_id, TimelineEvent(
            kind=EventKind.REVIEW_RECORDED, actor=data.reviewed_by.strip(),
            summary=f"Post-incident review recorded by {data.reviewed_by.strip()} "
                    f"({len(data.action_items)} action item(s))",
            details={"action_items": [i.model_dump(mode="json") for i in data.action_items]},
            flow_run_id=run_id,
        ))
        await store.set_follow_up(incident_id, FollowUpKind.REVIEW_24H, done=True)
    return added


async def escalate_missed_review(incident: Incident, deadline_hours: float, policy: Policy) -> SlackResult | None:
    """Tell #incidents that the review got no input in time, naming the engineering lead; once per incident."""
    async with open_store() as store:
        timeline = await store.timeline(incident.id)
    if _sent(timeline, PURPOSE_REVIEW_ESCALATION, sent_only=False):
        return None
    lead = policy.chain()[1] if len(policy.chain()) > 1 else policy.chain()[0]
    who = f"{lead.role}{f' ({lead.name})' if lead.name else ''}"
    return await post_slack_message(
        "incidents",
        f"Escalation to the {who}: the post-incident review of {incident.id} ({incident.severity}: "
        f"{incident.title}) got no input within {deadline_hours:g} h. Please hold the review and record it.",
        incident_id=incident.id, kind=EventKind.ESCALATED,
        summary=f"Review not recorded within {deadline_hours:g} h: escalated to the {who}",
        details={"purpose": PURPOSE_REVIEW_ESCALATION, "role": lead.role, "name": lead.name,
                 "deadline_hours": deadline_hours},
    )


def review_overdue(incident: Incident, timeline: list[TimelineEvent], follow_ups: list[FollowUp],
                   policy: Policy, now: datetime) -> bool:
    """Return True when the review's input deadline passed with no review recorded and no escalation yet."""
    if incident.resolved_at is None or any(e.kind == EventKind.REVIEW_RECORDED for e in timeline):
        return False
    if any(f.kind is FollowUpKind.REVIEW_24H and f.done for f in follow_ups):
        return False
    deadline = follow_up_due(FollowUpKind.REVIEW_24H, incident.resolved_at, policy) + timedelta(
        hours=policy.post_incident.review_input_deadline_hours)
    return now > deadline and not _sent(timeline, PURPOSE_REVIEW_ESCALATION, sent_only=False)


# -- the 24-hour review -----------------------------------------------------------------------------------------


def _run_name(prefix: str) -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters.get("params")
    incident_id = params.get("incident_id") if isinstance(params, dict) else getattr(params, "incident_id", None)
    return f"{prefix} {incident_id}"


def _review_run_name() -> str:
    return _run_name(REVIEW_FLOW)


def _follow_up_run_name() -> str:
    return _run_name(FOLLOW_UP_FLOW)


def _review_form_description(incident: Incident, draft: str, deadline_hours: float) -> str:
    return (
        f"## Post-incident review of `{incident.id}`\n\n"
        f"Hold the review, then fill in the findings below within {deadline_hours:g} h "
        "(after that the engineering lead is asked to step in). They go into the incident report; "
        "action items are followed up after a week.\n\n---\n\n" + draft
    )


@flow(name=REVIEW_FLOW, flow_run_name=_review_run_name, persist_result=True,
      description="Post-incident review (resolved + 24 h): draft report, reminder, review form, final report.")
async def post_incident_review(params: PostIncidentReviewParams) -> ReviewOutcome:
    """Draft the report, remind #incidents to hold the review, wait for the Review form, record it, re-render."""
    logger = get_run_logger()
    policy = get_policy()
    incident_id = params.incident_id
    incident = await get_incident(incident_id)
    deadline_hours = params.review_deadline_hours or policy.post_incident.review_input_deadline_hours
    files = await write_incident_report(incident_id, "draft")
    timeline = await read_timeline(incident_id)
    ctx = FlowRunContext.get()
    assert ctx is not None and ctx.flow_run is not None
    this_run = str(ctx.flow_run.id)

    if any(e.kind == EventKind.REVIEW_RECORDED and e.flow_run_id == this_run for e in timeline):
        return ReviewOutcome(incident_id=incident_id, outcome="already-recorded", report_path=str(files.markdown_path))

    # A resumed suspension re-runs the flow from the top: the reminder goes out once per run.
    if not _sent(timeline, PURPOSE_REVIEW_REMINDER, run_id=this_run, sent_only=False):
        await post_slack_message(
            "incidents",
            f"Post-incident review due for {incident.id} ({incident.severity}: {incident.title}). "
            f"Hold the review and fill in the form on flow run '{ctx.flow_run.name}' within {deadline_hours:g} h "
            f"(root cause, lessons learned, preventive measures, action items). Draft report: {files.markdown_path}",
            incident_id=incident_id, kind=EventKind.REMINDER,
            summary="Reminded #incidents to hold the post-incident review",
            details={"purpose": PURPOSE_REVIEW_REMINDER, "deadline_hours": deadline_hours},
        )

    form = Review.with_initial_data(description=_review_form_description(incident, files.markdown, deadline_hours))
    timeout = max(1, int(round(deadline_hours * 3600)))
    try:
        if ctx.flow_run.deployment_id is not None:
            # From a deployment: free the worker while people meet; the resume re-runs this flow from the top.
            review = await asuspend_flow_run(wait_for_input=form, timeout=timeout, key="post-incident-review")
        else:
            review = await apause_flow_run(wait_for_input=form, timeout=timeout, key="post-incident-review",
                                          poll_interval=params.poll_interval_seconds)
    except FlowPauseTimeout:
        logger.warning("No review recorded within %g h: escalating to the engineering lead", deadline_hours)
        # The server refuses every transition out of an expired pause (it would end the run Failed and no task
        # could run): take the run back to Running explicitly, so the escalation runs and the run ends honestly.
        async with get_client() as client:
            await client.set_flow_run_state(ctx.flow_run.id, Running(message="Review deadline passed: escalating"),
                                            force=True)
        await escalate_missed_review(incident, deadline_hours, policy)
        return ReviewOutcome(incident_id=incident_id, outcome="escalated", report_path=str(files.markdown_path))

    added = await record_review(incident_id, review.model_dump(mode="json", exclude={"metadata"}))
    files = await write_incident_report(incident_id, "reviewed")
    logger.info("Review of %s recorded; %d action item(s) added", incident_id, added)
    return ReviewOutcome(incident_id=incident_id, outcome="recorded", report_path=str(files.markdown_path),
                         action_items=added)


# -- the 1-week follow-up ---------------------------------------------------------------------------------------


@task(name="list_action_items", retries=0, cache_policy=NO_CACHE)
async def list_action_items(incident_id: str) -> list[ActionItem]:
    """Return the incident's action items."""
    async with open_store() as store:
        return await store.action_items(incident_id)


@task(name="mark_action_item", retries=0, cache_policy=NO_CACHE)
async def mark_action_item(item_id: int, **fields: Any) -> None:
    """Record reminded_at / escalated_at on an action item."""
    async with open_store() as store:
        await store.update_action_item(item_id, **fields)


@task(name="complete_follow_up", retries=0, cache_policy=NO_CACHE)
async def complete_follow_up(incident_id: str, kind: FollowUpKind) -> None:
    """Mark a follow-up done."""
    async with open_store() as store:
        await store.set_follow_up(incident_id, kind, done=True)


def _mention(owner: str) -> str:
    return owner if owner.startswith(("@", "<@")) else f"@{owner}"


def executive_summary(incident: Incident, timeline: list[TimelineEvent]) -> str:
    """Return the short executive summary: severity, duration, impact, root cause, MTTA/MTTR."""
    report = build_report(incident, timeline)
    cause = (incident.root_cause or "not recorded yet").strip().splitlines()[0]
    return (
        f"Executive summary: {incident.id} ({incident.severity} {incident.severity.label}): {incident.title}\n"
        f"- Duration: {fmt_duration(report.mttr)}\n"
        f"- Impact: users {incident.impact.user.value}, business {incident.impact.business.value}"
        + (f", financial: {incident.financial_impact}" if incident.financial_impact else "") + "\n"
        f"- Root cause: {cause}\n"
        f"- MTTA {fmt_duration(report.mtta)}, MTTR {fmt_duration(report.mttr)}"
    )


@flow(name=FOLLOW_UP_FLOW, flow_run_name=_follow_up_run_name, persist_result=True,
      description="Post-incident follow-up (resolved + 1 week): action items, runbook update, learnings, summary.")
async def post_incident_follow_up(params: PostIncidentFollowUpParams) -> FollowUpOutcome:
    """Check action items (remind, escalate), remind the runbook update, share learnings, send the summary."""
    policy = get_policy()
    incident_id = params.incident_id
    incident = await get_incident(incident_id)
    timeline = await read_timeline(incident_id)
    out = FollowUpOutcome(incident_id=incident_id, report_path="")
    lead = policy.chain()[1] if len(policy.chain()) > 1 else policy.chain()[0]
    lead_name = f"{lead.role}{f' ({lead.name})' if lead.name else ''}"
    today = utcnow().date()
    grace = policy.post_incident.action_item_grace_days

    for item in await list_action_items(incident_id):
        if item.done or item.due >= today or item.id is None:
            continue
        late = (today - item.due).days
        if item.reminded_at is None:
            out.messages.append(await post_slack_message(
                "engineering",
                f"{_mention(item.owner)}: action item \"{item.title}\" from {incident_id} was due on "
                f"{item.due.isoformat()} ({late} day(s) overdue). Please finish it or update its due date.",
                incident_id=incident_id, kind=EventKind.REMINDER,
                summary=f"Reminded {item.owner}: action item \"{item.title}\" {late} day(s) overdue",
                details={"purpose": PURPOSE_ACTION_REMINDER, "action_item_id": item.id, "owner": item.owner},
            ))
            await mark_action_item(item.id, reminded_at=utcnow())
            out.reminded_items.append(item.id)
        if late > grace and item.escalated_at is None:
            out.messages.append(await post_slack_message(
                "engineering",
                f"Escalation to the {lead_name}: action item \"{item.title}\" from {incident_id} "
                f"(owner {_mention(item.owner)}) is {late} day(s) overdue, past the {grace:g}-day grace.",
                incident_id=incident_id, kind=EventKind.ESCALATED,
                summary=f"Action item \"{item.title}\" {late} day(s) overdue: escalated to the {lead_name}",
                details={"purpose": PURPOSE_ACTION_ESCALATION, "action_item_id": item.id, "owner": item.owner,
                         "role": lead.role, "name": lead.name},
            ))
            await mark_action_item(item.id, escalated_at=utcnow())
            out.escalated_items.append(item.id)

    from runbook.settings import get_settings

    report_path = get_settings().reports_dir / f"{incident_id}.md"
    if not _sent(timeline, PURPOSE_RUNBOOK_UPDATE):
        out.messages.append(await post_slack_message(
            "operations",
            f"Runbook update due after {incident_id} ({incident.severity}: {incident.title}): update the runbooks "
            f"and procedures with what this incident taught us (owner: {policy.review.owner}). "
            f"Report: {report_path}",
            incident_id=incident_id, kind=EventKind.REMINDER, summary="Reminded #operations to update the runbook",
            details={"purpose": PURPOSE_RUNBOOK_UPDATE},
        ))
    if not _sent(timeline, PURPOSE_LEARNINGS):
        out.messages.append(await post_slack_message(
            "engineering",
            f"Learnings from {incident_id} ({incident.severity}: {incident.title})\n"
            f"Lessons learned: {incident.lessons_learned or 'not recorded yet'}\n"
            f"Preventive measures: {incident.preventive_measures or 'not recorded yet'}\n"
            f"Report: {report_path}",
            incident_id=incident_id, kind=EventKind.SLACK, summary="Shared the learnings in #engineering",
            details={"purpose": PURPOSE_LEARNINGS},
        ))
    if incident.severity in policy.communication.executive_summary_for and not _sent(
        timeline, PURPOSE_EXECUTIVE_SUMMARY
    ):
        out.messages.append(await post_slack_message(
            "operations", executive_summary(incident, timeline),
            incident_id=incident_id, kind=EventKind.NOTIFIED,
            summary=f"Executive summary of the {incident.severity} incident sent to #operations",
            details={"purpose": PURPOSE_EXECUTIVE_SUMMARY},
        ))

    files = await write_incident_report(incident_id, "final")
    out.report_path = str(files.markdown_path)
    await complete_follow_up(incident_id, FollowUpKind.FOLLOW_UP_1W)
    return out


__all__ = [
    "FOLLOW_UP_DEPLOYMENT", "FOLLOW_UP_FLOW", "FOLLOW_UP_FLOWS", "REVIEW_DEPLOYMENT", "REVIEW_FLOW",
    "PostIncidentFollowUpParams", "PostIncidentReviewParams", "Review", "ActionItemInput", "FollowUpRun",
    "ReviewOutcome", "FollowUpOutcome", "schedule_follow_ups", "schedule_follow_ups_task", "ensure_follow_up_run",
    "post_incident_review", "post_incident_follow_up", "escalate_missed_review", "review_overdue",
]
