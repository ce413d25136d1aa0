"""Pages about the runbook's own health (issue 19): the circuit breaker tripping, the monitor not running or blind.

Not a runbook procedure; the remediation driver and the watchdog flow use it. Resolving a guard's incident once
its condition clears is in flows/_guard_close.py (it closes out through the response, which reaches the remediations:
kept apart so that no import circle runs back here). `page_oncall_about` declares (or
attaches to) the open P2 incident of a guard fingerprint (`guard:<what>:<environment>`) in the store and pages
on-call for it through tasks/ (PagerDuty, dedup key = that incident's id), so a condition that holds is paged once,
however many times it is noticed, until that incident is resolved.
"""

from __future__ import annotations

from prefect import get_run_logger

from runbook.errors import IntegrationError
from runbook.models import Alert, Incident, Severity
from runbook.policy import get_policy
from runbook.settings import get_settings
from tasks.incident import declare_record
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
