"""Escalation until acknowledged (the runbook's P0 "Escalation (15-30 minutes)"), running beside the response.

The run pauses for an `Acknowledge` input (the UI's Resume form: who). Meanwhile a clock in the same run pages the
chain from the policy: on-call, then the engineering lead, then the CTO. An acknowledgement from anywhere stops it:
the UI (resume this run), the CLI (`runbook ack ID --by NAME` writes the store; the clock sees it and resumes this
run), PagerDuty (the app's Acknowledge on any page of the chain: a V3 webhook to the intake writes the store; with
a REST API token the clock also reads the pages' status itself), or other automation. A response time that passes
without acknowledgement is recorded.

"Is it time for the next step?" is asked of `runbook.clock` (the system clock; a manual one in tests), re-read on
every poll, so a step fires because its time has come, not because the machine was slow to deliver an ack.
A person's set-severity re-plans the running escalation: from the change on it follows the new severity's steps
and response time (a P0 lowered to P2 pages no lead or CTO; a P2 raised to P0 pages the P0 chain), and a contact
already paged is not paged again.

The steps taken are counted from the timeline, not held in memory only: a re-run (its process died with its worker,
the Prefect server lost it; the follow-up sweep starts it again, `rerun_escalation`) pages no contact already paged
and posts no reminder or missed SLA twice. Each run records its flow run on the timeline (ESCALATION_RUN) so that the
sweep can ask Prefect whether it is still alive.
"""


import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run, aresume_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from runbook import clock
from runbook.escalation import Step, pending_steps, plan_of, step_key, wait_limit
from runbook.models import EventKind, Incident, IncidentId, Severity, TimelineEvent
from runbook.policy import Policy, get_policy
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.common import flow_run_id, run_parameter
from tasks.incident import read_incident, record
from tasks.pagerduty import (
    acknowledge_pages,
    page_contact,
    pager_acknowledgement,
    pager_poll_seconds,
    send_pending_pages,
)
from tasks.slack import post_ack_request, post_slack_message

RESOLVED_FIRST = "resolved before anyone acknowledged"
GAVE_UP = "nobody acknowledged within the escalation window"
ESCALATION_RUN = "escalation_run"  # details key: the flow run of an escalation of this incident (started or re-run)
STEP = "escalation_step"  # details key of a reminder / missed-SLA event: the step it took (step_key)
DEPLOYMENT = "escalate-incident/escalate-incident"


class Acknowledge(RunInput):
    """Take the incident (the Resume form in the Prefect UI)."""

    by: str = Field(min_length=1, max_length=100, description="Your name: you now own the response")
    note: str = Field("", max_length=500, description="Optional note for the timeline")


class EscalateParams(BaseModel):
    """Parameters of escalate-incident."""

    incident_id: IncidentId = Field(...,
                             description="The incident to escalate until acknowledged")


class EscalationOutcome(BaseModel):
    """Who acknowledged, when, and who was paged before that."""

    incident_id: str
    acknowledged_by: str | None
    via: str
    pages: list[str] = Field(default_factory=list)
    sla_missed: bool = False
    channel: str | None = Field(None, description="Where the acknowledgement was given (pagerduty, cli, …)")


async def _resume_when_paused(run_id: str, current: Incident | None, resumed: asyncio.Event) -> None:
    """Resume our own paused run with the acknowledgement (or resolution) that arrived through the store.

    `current` None: the escalation window ran out on the clock (the run stops waiting).
    """
    if current is None:
        run_input = {"by": "runbook", "note": GAVE_UP}
    elif current.acknowledged_by:
        run_input = {"by": current.acknowledged_by, "note": "acknowledged outside this run"}
    else:
        run_input = {"by": "runbook", "note": RESOLVED_FIRST}
    async with get_client() as client:
        while not resumed.is_set():
            run = await client.read_flow_run(run_id)  # type: ignore[arg-type]
            if run.state and run.state.is_paused():
                get_run_logger().info("resuming the wait: %s (%s)", run_input["note"], run_input["by"])
                try:
                    await aresume_flow_run(run.id, run_input=run_input)
                except Exception:  # resumed by someone else in between: fine
                    pass
                return
            await asyncio.sleep(0.5)


async def _clock(incident: Incident, run_id: str | None, stop: asyncio.Event, resumed: asyncio.Event,
                 outcome: EscalationOutcome) -> None:
    """Page, remind and record the SLA per the schedule until the incident is acknowledged.

    The schedule is that of the incident's severity now: a person's set-severity re-plans it from the change (a
    contact already paged is not paged again; the new severity's reminder, pages and SLA count from the change).
    """
    policy = get_policy()
    poll = policy.response.ack_poll_seconds
    async with open_store() as store:
        done = steps_taken(await store.timeline(incident.id), since=incident.reopened_at)
    current = incident
    while True:
        pending = pending_steps(current, policy, done)
        # After the last step keep watching, so a late acknowledgement still ends the wait, until the window (on
        # the injectable clock, like every step) runs out; then the run stops waiting.
        until = pending[0].at if pending else current.escalation_start + wait_limit(current, policy)
        seen = await _watch(current, until, poll, run_id, stop, resumed)
        if seen is None:
            return
        if plan_of(seen) != plan_of(current):
            current = seen
            await _record_replan(current, policy, done)
            continue
        current = seen
        if not pending:
            stop.set()
            if run_id:
                await _resume_when_paused(run_id, None, resumed)
            return
        step = pending[0]
        done.add(step_key(step, current))
        await _take(step, current, policy, outcome)


async def _take(step: Step, incident: Incident, policy: Policy, outcome: EscalationOutcome) -> None:
    """Take one step of the schedule: page a contact, post the reminder, or record the missed SLA."""
    if step.action == "page" and step.contact is not None:
        try:
            sent = await page_contact(incident, step.contact, reason="no acknowledgement yet"
                                      if step.contact.after_minutes else "")
        except Exception as exc:  # refused (400/401/403) or failing: recorded pending by page_contact, retried
            get_run_logger().warning("page to %s failed, still pending: %s", step.contact.role, exc)
            sent = {"pending": True}
        outcome.pages.append(step.contact.role)
        get_run_logger().info("paged %s (%s)%s", step.contact.role, sent.get("dedup_key"),
                              ", still pending: retried" if sent.get("pending") else "")
        await _offer_slack_ack(incident, step.contact.role + (f" ({step.contact.name})"
                                                              if step.contact.name else ""))
    elif step.action == "remind":
        await post_slack_message("#incidents", f"Reminder: {incident.severity} {incident.title} ({incident.id}) "
                                 f"is not acknowledged; respond by {policy.response_due(incident):%H:%M} UTC",
                                 incident_id=incident.id, kind=EventKind.REMINDER,
                                 details={STEP: list(step_key(step, incident))})
    elif step.action == "sla":
        outcome.sla_missed = True
        await record(incident.id, EventKind.SLA_MISSED,
                     f"Response time of {policy.response_time(incident.severity)} passed without acknowledgement",
                     {"response_due": policy.response_due(incident).isoformat(), "severity": incident.severity.value,
                      STEP: list(step_key(step, incident))})


def steps_taken(events: list[TimelineEvent], since: datetime | None = None) -> set[tuple[str, ...]]:
    """Return the step_key of every escalation step the timeline says was taken: a contact paged (sent, not merely
    pending: page_contact sends a pending one again), a reminder posted, a missed SLA recorded.

    `since`: the incident's last reopen; a reopen is a new response cycle, whose chain starts again (the lead paged
    for the first cycle is paged again if this one goes unacknowledged as long)."""
    done: set[tuple[str, ...]] = set()
    for e in events:
        if since is not None and e.at < since:
            continue
        if e.kind in {EventKind.PAGED, EventKind.ESCALATED} and e.details.get("role"):
            done.add(("page", str(e.details["role"])))
        elif e.kind in {EventKind.REMINDER, EventKind.SLA_MISSED} and e.details.get(STEP):
            done.add(tuple(str(part) for part in e.details[STEP]))
    return done


async def _record_replan(incident: Incident, policy: Policy, done: set[tuple[str, ...]]) -> None:
    """Record that the escalation now follows the incident's new severity, and what comes next."""
    ahead = pending_steps(incident, policy, done)
    nxt = ", ".join(f"{s.contact.role if s.contact else s.action} at {s.at:%H:%M}" for s in ahead) or "nothing"
    await record(incident.id, EventKind.NOTE,
                 f"Escalation re-planned for {incident.severity} (counted from the change): next {nxt} UTC",
                 {"escalation_replanned": True, "severity": incident.severity.value,
                  "escalation_start": incident.escalation_start.isoformat(),
                  "steps": [{"at": s.at.isoformat(), "action": s.action,
                             "role": s.contact.role if s.contact else None} for s in ahead]})
    get_run_logger().info("escalation re-planned for %s: next %s", incident.severity, nxt)


async def _offer_slack_ack(incident: Incident, who: str) -> None:
    """With the Slack app configured, post the page to #incidents with an Acknowledge button (once per contact).

    The first page may have gone out from the response before this run started; its button is posted here too.
    """
    if not get_settings().slack_bot_token:  # incoming webhooks only: no buttons (runbook check says so)
        return
    text = (f"Paged {who}: {incident.severity} {incident.title} ({incident.id}). "
            "Acknowledge to take the incident and stop the escalation.")
    async with open_store() as store:
        posted = [e for e in await store.timeline(incident.id, kind=EventKind.SLACK)
                  if e.details.get("acknowledge") and str(e.details.get("text", "")).startswith(f"Paged {who}:")]
    if posted:
        return
    try:
        await post_ack_request(incident.id, text)
    except Exception as exc:  # Slack down must not stop the escalation; the page went out anyway
        get_run_logger().warning("could not post the Acknowledge button to Slack: %s", exc)


async def _watch(incident: Incident, until: datetime, poll: float, run_id: str | None, stop: asyncio.Event,
                 resumed: asyncio.Event) -> Incident | None:
    """Wait until `until` or until the incident's severity changes; return the incident as it is then.

    None: acknowledged, closed or stopped meanwhile (the wait is over).
    """
    pager_every = pager_poll_seconds(poll)
    last_pager = float("-inf")
    while not stop.is_set():
        current = await read_incident(incident.id)
        await _pending_pages(current)  # due pages tried again; closed with a note once acknowledged or closed
        if current.acknowledged_at is not None or not current.status.is_open:
            stop.set()
            if run_id:
                await _resume_when_paused(run_id, current, resumed)
            return None
        if plan_of(current) != plan_of(incident):
            return current
        if pager_every is not None and time.monotonic() - last_pager >= pager_every:
            last_pager = time.monotonic()  # rate of the REST reads: real time, not the escalation's clock
            try:
                if await pager_acknowledgement(current):
                    continue  # the store now says acknowledged
            except Exception as exc:  # PagerDuty's REST API down or throttling: the next poll tries again
                get_run_logger().warning("could not read the pages' status in PagerDuty: %s", exc)
        wait = min(poll, (until - clock.now()).total_seconds())
        if wait <= 0:
            return current
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait)
    return None


async def _pending_pages(incident: Incident) -> None:
    """Send the pages whose retries gave up and are due again (they pace themselves); never stop the wait."""
    try:
        await send_pending_pages(incident)
    except Exception as exc:  # PagerDuty refusing or down: the page stays pending, the next poll tries again
        get_run_logger().warning("could not send the pending pages: %s", exc)


async def dead_escalation(incident: Incident) -> str | None:
    """Return why the incident's escalation has no live run, or None when it needs nothing from the sweep.

    Read from the runs the timeline names (ESCALATION_RUN), asked through Prefect's API as the remediation lock's
    takeover asks (`holder_run_ended`: the run, or the run whose process executes it, is over): the newest is
    Crashed, Cancelled or Failed, missing in Prefect, or not final while its process's run is over (a subflow of a
    crashed response). None: acknowledged or closed, never escalated by a run, a run still alive, the newest one
    Completed (the escalation finished: acknowledged, resolved first or given up), or Prefect unreachable.
    A dead run left not final (paused, its process gone) is set Crashed, so nobody takes it for a live one.
    """
    from uuid import UUID

    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    from runbook.store import holder_run_ended

    if incident.acknowledged_at is not None or not incident.status.is_open:
        return None
    async with open_store() as store:
        events = await store.timeline(incident.id, kind=EventKind.NOTE)
    run_ids = list(dict.fromkeys(str(e.details[ESCALATION_RUN]) for e in events if e.details.get(ESCALATION_RUN)))
    if not run_ids:
        return None
    why = None
    try:
        async with get_client() as client:
            for run_id in reversed(run_ids):  # the newest first
                try:
                    run = await client.read_flow_run(UUID(run_id))
                except ObjectNotFound:
                    why = why or f"its run {run_id} is missing in Prefect"
                    continue
                if run.state is not None and run.state.is_completed():
                    if why is None:
                        return None  # the newest run finished the escalation
                    continue
                if not await holder_run_ended(f"run {run_id}"):
                    return None  # still alive (or not known to be over)
                if run.state is not None and not run.state.is_final():
                    await client.set_flow_run_state(run.id, Crashed(
                        message="its process's run is over; the follow-up sweep re-runs the escalation"), force=True)
                why = why or f"its run {run.name} ({run_id}) is {run.state_name if run.state else 'gone'}"
    except Exception as exc:  # Prefect unreachable: not known to be dead, the next sweep looks again
        get_run_logger().warning("could not read the escalation runs of %s from Prefect: %s", incident.id, exc)
        return None
    return why


async def rerun_escalation(incident: Incident, why: str) -> str | None:
    """Start the escalation again as a deployment run (a worker executes it; it counts its steps from the
    timeline: nobody paged twice); record it on the timeline; return the new run's id (None: no deployment)."""
    from prefect.deployments.flow_runs import arun_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = await arun_deployment(DEPLOYMENT, timeout=0, as_subflow=False,
                                    parameters={"params": {"incident_id": incident.id}},
                                    flow_run_name=f"escalate {incident.id}",
                                    tags=["incident", incident.severity.value.lower()])
    except ObjectNotFound:
        get_run_logger().warning("deployment %s not found: the escalation of %s is not re-run", DEPLOYMENT,
                                 incident.id)
        return None
    await record(incident.id, EventKind.NOTE, f"Escalation re-run ({why}): run {run.id}",
                 {ESCALATION_RUN: str(run.id), "escalation_rerun": True, "why": why})
    return str(run.id)


def _run_name() -> str:
    return f"escalate {run_parameter('incident_id', '')}"


@flow(name="escalate-incident", flow_run_name=_run_name)
async def escalate_incident(params: EscalateParams) -> EscalationOutcome:
    """Page the escalation chain over time until someone acknowledges the incident."""
    incident = await read_incident(params.incident_id)
    outcome = EscalationOutcome(incident_id=incident.id, acknowledged_by=incident.acknowledged_by, via="store")
    if incident.acknowledged_at is not None:
        return outcome
    policy = get_policy()
    stop, resumed = asyncio.Event(), asyncio.Event()
    run_id = flow_run_id()
    if run_id:
        await record(incident.id, EventKind.NOTE, f"Escalation running until acknowledged (run {run_id})",
                     {ESCALATION_RUN: run_id})
    pager = asyncio.create_task(_clock(incident, run_id, stop, resumed, outcome))
    description = (f"## Acknowledge {incident.severity} {incident.id}\n\n**{incident.title}**\n\n"
                   f"Response due by {get_policy().response_due(incident):%Y-%m-%d %H:%M} UTC. Acknowledging stops the "
                   "escalation (engineering lead, then CTO) and makes you the owner of the response.")
    ack: Any = None
    try:
        ack = await apause_flow_run(
            wait_for_input=Acknowledge.with_initial_data(description=description, by=""),
            # A bound only: the window is ended by the clock above; this one ends a run whose clock died. It allows
            # the longest window of any severity, since a person may re-plan the escalation into it.
            timeout=int(2 * max(wait_limit(incident.model_copy(update={"severity": s}), policy)
                                for s in Severity).total_seconds()) + 60,
            poll_interval=max(1, int(policy.response.ack_poll_seconds)),
        )
    except FlowPauseTimeout:
        await record(incident.id, EventKind.NOTE, "Nobody acknowledged within the escalation window", {})
        outcome.via = "timeout"
    finally:
        resumed.set()
        stop.set()
        await pager
    if ack is not None and ack.note == GAVE_UP and ack.by == "runbook":
        await record(incident.id, EventKind.NOTE, "Nobody acknowledged within the escalation window", {})
        outcome.via = "timeout"
    elif ack is not None and ack.note == RESOLVED_FIRST:
        outcome.via = "resolved"
    elif ack is not None:
        async with open_store() as store:
            current, newly = await store.acknowledge(incident.id, ack.by, flow_run_id=run_id, via="prefect-ui")
        outcome.acknowledged_by = current.acknowledged_by
        outcome.via = "ui" if newly else "store"
        outcome.channel = current.acknowledged_via
        if ack.note and newly:
            await record(incident.id, EventKind.NOTE, f"Acknowledgement note: {ack.note}", {}, actor=ack.by)
        async with open_store() as store:
            paged = bool(await store.timeline(incident.id, kind=EventKind.PAGED))
        if paged:  # on-call may have been paged by the response itself, before this run started
            try:
                await acknowledge_pages(incident)
            except Exception as exc:  # PagerDuty down must not undo an acknowledgement
                get_run_logger().warning("could not acknowledge the page in PagerDuty: %s", exc)
    return outcome
