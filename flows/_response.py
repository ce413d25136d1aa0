"""Steps shared by the severity procedures (respond-p0, respond-p1, respond-p2-p3); not a procedure itself.

Each step records what it did on the incident timeline through the tasks it calls; each checks before it acts, so a
re-run of a response never pages, posts or resolves twice.
"""

from __future__ import annotations

import asyncio
import importlib
import typing
from typing import Any

from prefect import get_run_logger

from flows.verification import Verification, VerifyParams, verify_service
from runbook.errors import IntegrationError
from runbook.models import Diagnosis, EventKind, Incident, Severity, Status
from runbook.policy import get_policy
from tasks.health import check_app_health
from tasks.incident import read_incident, record, transition_status
from tasks.pagerduty import resolve_pages
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


async def communicate(incident: Incident, status: Status, message: str) -> None:
    """Post the status page update, tell #incidents, and notify stakeholders and customers per the matrix."""
    policy = get_policy()
    comms = policy.communication
    if incident.severity in comms.status_page_for:
        try:
            await post_status_update(incident.id, status, message)
        except IntegrationError as exc:  # a status page outage must not stop the response
            await record(incident.id, EventKind.STATUS_PAGE, f"Status page update FAILED: {exc}",
                         {"status": status.value, "sent": False, "error": str(exc)})
    await post_slack_message(comms.incidents_channel,
                             f"[{incident.severity}] {incident.title} ({incident.id}) — {status.value}: {message}",
                             incident_id=incident.id)
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
    await communicate(incident, Status.RESOLVED, "Issue resolved, normal operations restored.")
    incident = await transition_status(incident_id, Status.RESOLVED,
                                       summary=f"Resolved after verification ({verification.summary()})")
    try:
        await resolve_pages(incident)
    except IntegrationError as exc:
        get_run_logger().warning("could not resolve pages in PagerDuty: %s", exc)
    from flows.post_incident import schedule_follow_ups_task, write_incident_report

    await schedule_follow_ups_task(incident_id)
    await write_incident_report(incident_id, "draft")
    return await read_incident(incident_id)


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
