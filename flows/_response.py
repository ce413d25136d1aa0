"""Steps shared by the severity procedures (respond-p0, respond-p1, respond-p2-p3); not a procedure itself.

Each step records what it did on the incident timeline through the tasks it calls; each checks before it acts, so a
re-run of a response never pages, posts or resolves twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import typing
from typing import Any, Literal

from prefect import get_run_logger
from prefect.input import RunInput
from pydantic import Field

from flows.verification import Verification, VerifyParams, verify_service
from runbook.errors import IntegrationError
from runbook.escalation import escalation_schedule
from runbook.models import Diagnosis, EventKind, Incident, Severity, Status, TimelineEvent, utcnow
from runbook.policy import get_policy
from runbook.store import open_store
from tasks.health import check_app_health
from tasks.incident import read_incident, record, transition_status
from tasks.pagerduty import page_contact, resolve_pages
from tasks.sentry import read_error_rate
from tasks.slack import post_slack_message
from tasks.statuspage import post_status_update
from tasks.supabase import check_database_connectivity, check_database_health, check_project_health, check_rest_count

VERIFY_SCENARIOS = {"database", "authentication", "payment", "performance", "configuration"}


async def _guarded(label: str, coro: Any) -> tuple[Any, str | None]:
    """Run a check; a vendor failure becomes evidence instead of stopping the response."""
    try:
        return await coro, None
    except IntegrationError as exc:
        return None, str(exc)


async def acknowledge_checks(incident: Incident) -> dict[str, Any]:
    """Run the runbook's first curls: the app's /api/health and Supabase REST."""
    health, health_err = await _guarded("app_health", check_app_health(incident.id, purpose="acknowledge"))
    rest, rest_err = await _guarded("rest", check_rest_count(incident.id))
    if health_err:
        await record(incident.id, EventKind.CHECK, f"/api/health unreachable: {health_err}",
                     {"check": "app_health", "ok": False, "error": health_err})
    if rest_err:
        await record(incident.id, EventKind.CHECK, f"Supabase REST failed: {rest_err}",
                     {"check": "rest_count", "ok": False, "error": rest_err})
    return {"app_health": health.status_code if health else None, "rest_count": rest.count if rest else None}


async def initial_assessment(incident: Incident) -> dict[str, Any]:
    """Check database connectivity and health, project health, and recent errors from Sentry."""
    conn, conn_err = await _guarded("db", check_database_connectivity())
    dbh, dbh_err = await _guarded("db_health", check_database_health())
    proj, proj_err = await _guarded("project", check_project_health())
    errors, err_err = await _guarded("sentry", read_error_rate(get_policy().monitoring.sentry_window_minutes))
    found = {
        "database_connectivity": conn.ok if conn else conn_err,
        "active_connections": dbh.active_connections if dbh else dbh_err,
        "pool_utilisation_pct": dbh.pool_utilisation_pct if dbh else None,
        "long_running_queries": len(dbh.long_running) if dbh else None,
        "mean_query_ms": dbh.mean_query_ms if dbh else None,
        "project_health": {s.name: s.status for s in proj.services} if proj else proj_err,
        "sentry_errors": errors.count if errors else err_err,
        "sentry_errors_per_minute": errors.per_minute if errors else None,
    }
    db_line = "reachable" if conn else f"UNREACHABLE ({conn_err})"
    err_line = f"{errors.count} errors in Sentry" if errors else f"Sentry unavailable ({err_err})"
    await record(incident.id, EventKind.ASSESSMENT, f"Initial assessment: database {db_line}; {err_line}", found)
    return found


async def announce_status(incident: Incident, status: Status, message: str) -> None:
    """Post the status page update (for the severities that have one) and tell #incidents."""
    comms = get_policy().communication
    if incident.severity in comms.status_page_for:
        try:
            await post_status_update(incident.id, status, message)
        except IntegrationError as exc:  # a status page outage must not stop the response
            await record(incident.id, EventKind.STATUS_PAGE, f"Status page update FAILED: {exc}",
                         {"status": status.value, "sent": False, "error": str(exc)})
    await post_slack_message(comms.incidents_channel,
                             f"[{incident.severity}] {incident.title} ({incident.id}) — {status.value}: {message}",
                             incident_id=incident.id)


async def _first_announcement_made(incident_id: str) -> bool:
    """Whether the incident's first communication (the stakeholder notice that ends it) already went out."""
    async with open_store() as store:
        return any(e.details.get("audience") == "stakeholders" and e.details.get("sent")
                   for e in await store.timeline(incident_id, kind=EventKind.NOTIFIED))


async def communicate(incident: Incident, status: Status, message: str) -> None:
    """Post the status page update, tell #incidents, and notify stakeholders and customers per the matrix.

    The first announcement ("investigating") is made once per incident: a re-run of the response (a crash, an
    operator's retry) does not post it again. A reopen announces through `announce_status`, not through here.
    """
    comms = get_policy().communication
    if status is Status.INVESTIGATING and await _first_announcement_made(incident.id):
        get_run_logger().info("the first announcement of %s was already made; not posted again", incident.id)
        return
    await announce_status(incident, status, message)
    if status is Status.INVESTIGATING:
        await post_slack_message(comms.operations_channel,
                                 f"Stakeholder notice: {incident.severity} incident {incident.id} declared — "
                                 f"{incident.title}. Updates follow in {comms.incidents_channel}.",
                                 incident_id=incident.id, kind=EventKind.NOTIFIED,
                                 details={"audience": "stakeholders"})
        if incident.severity in comms.customer_notice_for:
            await record(incident.id, EventKind.NOTIFIED,
                         "Customer notice: status page incident published to subscribers (P0/P1)",
                         {"audience": "customers", "via": "status page"})


# The first "investigating" words per severity (the procedures' own, so a later procedure run finds them posted).
FIRST_WORDS = {Severity.P0: "We are investigating a service outage.",
               Severity.P1: "We are investigating degraded functionality.",
               Severity.P2: "We are looking into reports of degraded service.",
               Severity.P3: "We are looking into reports of degraded service."}


async def first_response(incident: Incident) -> dict[str, Any]:
    """Page on-call now (P0/P1: the escalation's first step) and announce "investigating" (status page, #incidents,
    stakeholders), before anything else of the response; each once per incident, whoever runs it again.

    The page's first try is short (FIRST_TRY_POLICY): a page PagerDuty does not take stays pending on the timeline
    and the escalation's wait loop, a re-run or the sweep sends it; the announcement goes out meanwhile.
    """
    page: dict[str, Any] = {}
    first = escalation_schedule(incident, get_policy())[0]
    if first.action == "page" and first.contact is not None and first.at <= utcnow():
        try:
            page = await page_contact(incident, first.contact, quick=True)
        except Exception as exc:  # refused: recorded on the timeline and pending; the announcement still goes out
            get_run_logger().warning("first page to %s not delivered, still pending: %s", first.contact.role, exc)
            page = {"sent": False, "pending": True, "error": str(exc)}
    await communicate(incident, Status.INVESTIGATING, FIRST_WORDS[incident.severity])
    return page


REOPEN_WORDS = "The problem returned"


async def _reopen_event(incident_id: str) -> TimelineEvent | None:
    async with open_store() as store:
        reopens = await store.timeline(incident_id, kind=EventKind.REOPENED)
    return reopens[-1] if reopens else None


async def reopen_response(incident: Incident, reopened: TimelineEvent | None = None) -> dict[str, Any]:
    """A resolved incident's fault returned and the store reopened it: page on-call again (the same dedup key,
    triggered anew in PagerDuty), say "the problem returned" on the status page and in #incidents, and withdraw
    the follow-up runs scheduled from the resolution (the final resolution schedules them again); each once per
    reopen, whoever runs it again. Return the page's result."""
    reopened = reopened or await _reopen_event(incident.id)
    alert = (reopened.details.get("alert") if reopened else None) or {}
    why = str(alert.get("summary") or incident.title)
    ago = reopened.details.get("minutes_after_resolution") if reopened else None
    policy = get_policy()
    page: dict[str, Any] = {}
    first = escalation_schedule(incident, policy)[0]
    async with open_store() as store:
        paged_before = any(e.details.get("dedup_key") == incident.dedup_key
                           for e in await store.timeline(incident.id, kind=EventKind.PAGED))
    contact = policy.chain()[0] if policy.chain() else None
    if contact is not None and (first.action == "page" or paged_before):
        try:
            page = await page_contact(incident, contact, reason=f"{REOPEN_WORDS.lower()}: {why}", quick=True)
        except Exception as exc:  # refused: on the timeline and pending; the announcement still goes out
            get_run_logger().warning("reopen page to %s not delivered, still pending: %s", contact.role, exc)
            page = {"sent": False, "pending": True, "error": str(exc)}
    when = f" {ago:.0f} min after it was resolved" if isinstance(ago, int | float) else ""
    message = f"{REOPEN_WORDS}{when}: {why}. We are investigating again."
    comms = policy.communication
    if incident.severity in comms.status_page_for:
        try:  # once per status since the reopen (post_status_update counts from it)
            await post_status_update(incident.id, Status.INVESTIGATING, message)
        except IntegrationError as exc:  # a status page outage must not stop the response
            await record(incident.id, EventKind.STATUS_PAGE, f"Status page update FAILED: {exc}",
                         {"status": Status.INVESTIGATING.value, "sent": False, "error": str(exc)})
    reopen_id = reopened.id if reopened else None
    async with open_store() as store:
        told = any(e.details.get("reopen") == reopen_id and e.details.get("sent")
                   for e in await store.timeline(incident.id, kind=EventKind.SLACK))
    if not told:
        await post_slack_message(comms.incidents_channel,
                                 f"[{incident.severity}] {incident.title} ({incident.id}) — REOPENED, "
                                 f"investigating: {message}", incident_id=incident.id,
                                 details={"reopen": reopen_id})
    if reopened is not None:
        await withdraw_follow_up_runs(incident, reopened)
    return page


async def withdraw_follow_up_runs(incident: Incident, reopened: TimelineEvent) -> list[str]:
    """Delete the scheduled review and follow-up runs of the resolution a reopen undid (the store withdrew their
    rows); a run that started already is left alone. Return the deleted run ids; each once (the timeline)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    runs = [str(w["flow_run_id"]) for w in reopened.details.get("withdrawn_follow_ups") or [] if w.get("flow_run_id")]
    async with open_store() as store:
        done = {str(r) for e in await store.timeline(incident.id, kind=EventKind.NOTE)
                for r in e.details.get("withdrawn_runs") or []}
    deleted: list[str] = []
    left: list[str] = []
    try:
        async with get_client() as client:
            for run_id in (r for r in runs if r not in done):
                try:
                    run = await client.read_flow_run(UUID(run_id))
                except ObjectNotFound:
                    deleted.append(run_id)  # gone already
                    continue
                if run.state is not None and run.state.is_scheduled():
                    await client.delete_flow_run(run.id)
                    deleted.append(run_id)
                else:
                    left.append(f"{run.name} ({run.state.name if run.state else 'no state'})")
    except Exception as exc:  # Prefect unreachable: the runs stay scheduled; said on the timeline and the log
        get_run_logger().warning("could not withdraw the follow-up runs of %s: %s", incident.id, exc)
        await record(incident.id, EventKind.NOTE, f"Follow-up runs of the undone resolution NOT withdrawn: {exc}",
                     {"withdraw_failed": runs})
        return deleted
    if deleted or left:
        await record(incident.id, EventKind.NOTE,
                     f"Withdrew {len(deleted)} follow-up run(s) scheduled from the resolution the reopen undid; "
                     "they are scheduled again from the final resolution"
                     + (f" (already started, left alone: {', '.join(left)})" if left else ""),
                     {"withdrawn_runs": deleted, "left": left})
    return deleted


async def run_diagnosis(incident: Incident) -> Diagnosis | None:
    """Run the scenario's diagnostic (or all of them without a hint)."""
    try:
        module = importlib.import_module("flows.diagnose")
    except ModuleNotFoundError:
        return None
    diagnosis: Diagnosis = await module.diagnose(incident.scenario, incident.id)
    return diagnosis


def _remediation_flow(name: str) -> tuple[Any, type[Any]]:
    module = importlib.import_module(f"flows.{name.replace('-', '_')}")
    fn = getattr(module, name.replace("-", "_"))
    hints = typing.get_type_hints(fn.fn)
    params_type = next(v for k, v in hints.items() if k != "return")
    return fn, params_type


async def remediate(incident: Incident, diagnosis: Diagnosis, requested_by: str = "runbook") -> Any:
    """Start the remediation the diagnosis suggests (it plans, asks for approval, acts and verifies)."""
    suggestion = diagnosis.suggestion
    if suggestion is None or suggestion.flow in {"", "none"}:
        return None
    try:
        fn, params_type = _remediation_flow(suggestion.flow)
    except (ModuleNotFoundError, AttributeError, StopIteration):
        await record(incident.id, EventKind.NOTE, f"No remediation flow {suggestion.flow!r} available; act manually",
                     {"suggestion": suggestion.model_dump()})
        return None
    fields = getattr(params_type, "model_fields", {})
    params: dict[str, Any] = {k: v for k, v in suggestion.parameters.items() if k in fields}
    if "incident_id" in fields:
        params["incident_id"] = incident.id
    if "requested_by" in fields and "requested_by" not in params:
        params["requested_by"] = requested_by
    return await fn(params_type(**params))  # the remediation records its own start, plan and approval


async def monitor_until_stable(incident: Incident, scenario: str | None) -> Verification:
    """Re-check the service until it passes N consecutive verifications (the runbook's "Monitor Impact")."""
    policy = get_policy()
    scen = scenario if scenario in VERIFY_SCENARIOS else "performance"
    passes, last = 0, None
    for _ in range(policy.response.stable_checks * 5):
        last = await verify_service(VerifyParams(scenario=scen, incident_id=incident.id, within_seconds=0))  # type: ignore[arg-type]
        passes = passes + 1 if last.passed else 0
        if passes >= policy.response.stable_checks:
            break
        await asyncio.sleep(policy.response.stable_interval_seconds)
    assert last is not None
    return last.model_copy(update={"passed": passes >= policy.response.stable_checks})


async def resolve(incident_id: str, verification: Verification) -> Incident:
    """Resolve after a passed verification: status page, record, pages, Slack, follow-ups, report."""
    if not verification.passed:
        raise ValueError("resolve() needs a passed verification")
    incident = await read_incident(incident_id)
    if incident.status is Status.RESOLVED:
        return incident
    await transition_status(incident_id, Status.RESOLVED,
                            summary=f"Resolved after verification ({verification.summary()})")
    return await close_out(incident_id)  # it announces "resolved" (status page, #incidents) once


async def close_out(incident_id: str, message: str = "Issue resolved, normal operations restored.") -> Incident:
    """Finish a resolution already on the record: status page, pages, follow-ups, report (each once)."""
    incident = await read_incident(incident_id)
    await communicate(incident, Status.RESOLVED, message)  # the status page posts "resolved" once
    try:
        await resolve_pages(incident)
    except IntegrationError as exc:
        get_run_logger().warning("could not resolve pages in PagerDuty: %s", exc)
    from flows.post_incident import schedule_follow_ups_task, write_incident_report

    await schedule_follow_ups_task(incident_id)
    await write_incident_report(incident_id, "draft")
    return await read_incident(incident_id)


class ConfirmResolution(RunInput):
    """Is it resolved for the people who reported it? (the Resume form of a person-declared incident)."""

    decision: Literal["resolved", "not resolved"] = Field(
        title="Decision", description="resolved: close the incident; not resolved: back to investigating")
    by: str = Field(min_length=1, max_length=100, title="Your name", description="Who confirms (recorded)")
    reason: str = Field("", max_length=500, title="Reason",
                        description="What you checked, or what is still broken")


RESOLVED_BY_HAND = "resolved outside this run"


async def _resume_on_hand_resolution(incident_id: str, run_id: str, done: asyncio.Event) -> None:
    """Resume our own pause when the incident is resolved by hand meanwhile (CLI, the resolve-incident form)."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import aresume_flow_run

    poll = get_policy().response.ack_poll_seconds
    while not done.is_set():
        current = await read_incident(incident_id)
        if not current.status.is_open:
            async with get_client() as client:
                while not done.is_set():
                    run = await client.read_flow_run(run_id)  # type: ignore[arg-type]
                    if run.state and run.state.is_paused():
                        with contextlib.suppress(Exception):  # resumed by someone else in between: fine
                            await aresume_flow_run(run.id, run_input={"decision": "resolved", "by": "runbook",
                                                                      "reason": RESOLVED_BY_HAND})
                        return
                    await asyncio.sleep(0.5)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=poll)


def _declarer(timeline: list[Any]) -> str | None:
    declared = [e for e in timeline if e.kind == EventKind.DECLARED]
    return declared[0].actor if declared else None


async def confirm_resolution(incident_id: str, verification: Verification, within_minutes: float = 240) -> bool:
    """A person declared it: verification passing moves it to monitoring and asks them to confirm; return resolved.

    An automated check that finds nothing wrong does not disprove a person's report: the declarer (or whoever
    acknowledged) confirms in the run's Resume form, answers "not resolved" (back to investigating), or resolves by
    hand (`runbook resolve`, the resolve-incident form), which ends the wait too. Without an answer within the
    confirmation window (`within_minutes`) the incident stays in monitoring and #incidents says so.
    """
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import apause_flow_run

    from runbook.store import open_store
    from tasks.common import flow_run_id, flow_run_url

    policy = get_policy()
    incident = await mark_monitoring(await read_incident(incident_id), f"verification passed: {verification.summary()}")
    if not incident.status.is_open:
        await close_out(incident_id)
        return True
    async with open_store() as store:
        declarer = _declarer(await store.timeline(incident_id, kind=EventKind.DECLARED))
    asked = incident.acknowledged_by or declarer or "the declarer"
    run_id = flow_run_id()
    link = flow_run_url(run_id)
    where = f"confirm in Prefect: {link}" if link else "confirm in this run's Resume form"
    await record(incident_id, EventKind.CONFIRMATION_REQUESTED,
                 f"Verification passed ({verification.summary()}); waiting for {asked} to confirm it is resolved",
                 {"asked": asked, "declared_by": declarer, "acknowledged_by": incident.acknowledged_by, "url": link})
    await post_slack_message(
        policy.communication.incidents_channel,
        f"[{incident.severity}] {incident.id} ({incident.title}): verification passed, now MONITORING. {asked}: you "
        f"reported it — is it resolved for you? {where}, or `runbook resolve {incident.id} --by NAME --reason ...`; "
        "answer 'not resolved' to keep working on it.", incident_id=incident_id, kind=EventKind.SLACK,
        details={"asked": asked, "url": link, "confirmation": True})
    get_run_logger().info("waiting for %s to confirm that %s is resolved: %s", asked, incident_id, link or "this run")
    description = (f"## Is {incident.severity} {incident.id} resolved?\n\n**{incident.title}**\n\n"
                   f"Verification passed: {verification.summary()}. You declared or acknowledged this incident; "
                   "an automated check that finds nothing wrong does not disprove your report. Choose **resolved** "
                   "to close it (status page, pages, follow-ups), or **not resolved** to reopen the investigation.")
    done = asyncio.Event()
    watcher = asyncio.create_task(_resume_on_hand_resolution(incident_id, run_id, done)) if run_id else None
    answer: Any = None
    try:
        answer = await apause_flow_run(
            wait_for_input=ConfirmResolution.with_initial_data(description=description, decision="resolved", by=""),
            timeout=int(within_minutes * 60),
            poll_interval=max(1, int(policy.response.ack_poll_seconds)))
    except FlowPauseTimeout:
        await stay_open(incident, f"verification passed but nobody confirmed within "
                        f"{within_minutes:g} min; it stays in monitoring — "
                        f"`runbook resolve {incident_id}` when the reporter confirms")
        return False
    finally:
        done.set()
        if watcher is not None:
            await watcher
    current = await read_incident(incident_id)
    if not current.status.is_open:  # resolved by hand meanwhile: finish what a resolution sets in motion
        await close_out(incident_id)
        return True
    if answer.decision == "resolved":
        await transition_status(incident_id, Status.RESOLVED, actor=answer.by.strip(),
                                summary=f"Resolved: confirmed by {answer.by.strip()} via prefect-ui after "
                                f"verification ({verification.summary()})" + (f": {answer.reason}" if answer.reason
                                                                               else ""),
                                details={"confirmed_by": answer.by.strip(), "via": "prefect-ui",
                                         "reason": answer.reason})
        await close_out(incident_id)
        return True
    await transition_status(incident_id, Status.INVESTIGATING, actor=answer.by.strip(),
                            summary=f"Not resolved, says {answer.by.strip()} (via prefect-ui)"
                            + (f": {answer.reason}" if answer.reason else ""),
                            details={"via": "prefect-ui", "reason": answer.reason})
    await stay_open(current, f"{answer.by.strip()} says it is not resolved: {answer.reason or 'no reason given'}")
    return False


async def resolve_or_confirm(incident_id: str, verification: Verification, confirm_within_minutes: float = 240
                             ) -> bool:
    """After a passed verification: the monitor's incidents resolve; a person's wait for them to confirm."""
    incident = await read_incident(incident_id)
    if incident.declared_by_person:
        return await confirm_resolution(incident_id, verification, confirm_within_minutes)
    await resolve(incident_id, verification)
    return True


async def stay_open(incident: Incident, why: str) -> None:
    """Say clearly that the incident stays open and a human must act."""
    await post_slack_message(get_policy().communication.incidents_channel,
                             f"[{incident.severity}] {incident.id} stays OPEN: {why}", incident_id=incident.id)


async def mark_identified(incident: Incident, diagnosis: Diagnosis) -> Incident:
    """Move to 'identified' with the finding, on the record and the status page."""
    current = await read_incident(incident.id)
    if current.status is Status.INVESTIGATING:
        current = await transition_status(incident.id, Status.IDENTIFIED, summary=f"Identified: {diagnosis.finding}")
        await communicate(current, Status.IDENTIFIED, f"Root cause identified; implementing a fix. {diagnosis.finding}")
    return current


async def mark_monitoring(incident: Incident, what: str) -> Incident:
    """Move to 'monitoring' after a fix, on the record and the status page."""
    current = await read_incident(incident.id)
    if current.status in (Status.INVESTIGATING, Status.IDENTIFIED):
        current = await transition_status(incident.id, Status.MONITORING, summary=f"Fix applied: {what}")
        await communicate(current, Status.MONITORING, f"A fix has been applied ({what}); monitoring the results.")
    return current


def is_urgent(severity: Severity) -> bool:
    """Return True for P0/P1."""
    return severity in (Severity.P0, Severity.P1)
