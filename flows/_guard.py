"""Pages about the runbook's own health (issue 19): the circuit breaker tripping, the monitor not running or blind.

Not a runbook procedure; the remediation driver and the watchdog flow use it. `page_oncall_about` declares (or
attaches to) the open P2 incident of a guard fingerprint (`guard:<what>:<environment>`) in the store and pages
on-call for it through tasks/ (PagerDuty, dedup key = that incident's id), so a condition that holds is paged once,
however many times it is noticed, until that incident is resolved.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from flows._response import close_out
from runbook.errors import IncidentNotFound, IntegrationError
from runbook.models import Alert, Incident, Severity, Status
from runbook.policy import get_policy
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.incident import declare_record, transition_status
from tasks.pagerduty import page_contact


def guard_fingerprint(what: str) -> str:
    """Return the fingerprint of a guard condition's incident in this environment."""
    return f"guard:{what}:{get_settings().environment}"


async def page_oncall_about(what: str, title: str, detail: str, *, actor: str) -> tuple[Incident, bool]:
    """Page on-call once about a guard condition; return (its incident, whether a page was sent now)."""
    settings = get_settings()
    fingerprint = guard_fingerprint(what)
    alert = Alert(source=actor, fingerprint=fingerprint, summary=title[:200], severity=Severity.P2,
                  labels={"environment": settings.environment, "guard": what}, raw={"detail": detail})
    incident = Incident(title=title[:200], severity=Severity.P2, fingerprint=fingerprint, source=actor,
                        summary=detail, environment=settings.environment, drill=settings.drill)
    incident, _created = await declare_record(incident, alert, actor)
    return incident, await page_oncall(incident, detail)


async def page_oncall(incident: Incident, reason: str) -> bool:
    """Page the first contact of the escalation chain for an incident (once: its dedup key); True when sent now."""
    try:
        result = await page_contact(incident, get_policy().chain()[0], reason=reason[:500])
    except IntegrationError as exc:  # PagerDuty refused the page: the timeline says so; the caller goes on
        get_run_logger().error("could not page on-call about %s: %s", incident.id, exc)
        return False
    return bool(result.get("sent"))


async def resolve_open(incident_id: str | None, line: str, *, actor: str, details: dict[str, Any]) -> str | None:
    """Resolve an incident the runbook itself opened, now that its condition cleared, and close it out everywhere
    (Slack, pages, follow-ups, report); return its id, or None when it is gone or was resolved already."""
    async with open_store() as store:
        try:
            incident = await store.get(incident_id or "")
        except IncidentNotFound:
            return None
    if not incident.status.is_open:
        return None
    await transition_status(incident.id, Status.RESOLVED, summary=f"{actor}: {line}; resolved", actor=actor,
                            details=details)
    await close_out(incident.id, f"Resolved: {line}.")
    return incident.id


async def resolve_guard(what: str, line: str, *, actor: str) -> str | None:
    """Resolve the open incident of a guard condition that cleared (e.g. the monitor completes cycles again)."""
    async with open_store() as store:
        open_incident = await store.find_open(guard_fingerprint(what))
    if open_incident is None:
        return None
    return await resolve_open(open_incident.id, line, actor=actor, details={"guard": what})
