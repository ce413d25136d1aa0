"""Pages about the runbook's own health (issue 19): the circuit breaker tripping, the monitor not running.

Not a runbook procedure; the remediation driver and the watchdog flow use it. `page_oncall_about` declares (or
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


async def page_oncall_about(what: str, title: str, detail: str, *, actor: str) -> tuple[Incident, bool]:
    """Page on-call once about a guard condition; return (its incident, whether a page was sent now)."""
    settings = get_settings()
    fingerprint = f"guard:{what}:{settings.environment}"
    alert = Alert(source=actor, fingerprint=fingerprint, summary=title[:200], severity=Severity.P2,
                  labels={"environment": settings.environment, "guard": what}, raw={"detail": detail})
    incident = Incident(title=title[:200], severity=Severity.P2, fingerprint=fingerprint, source=actor,
                        summary=detail, environment=settings.environment, drill=settings.drill)
    incident, _created = await declare_record(incident, alert, actor)
    try:
        result = await page_contact(incident, get_policy().chain()[0], reason=detail[:500])
    except IntegrationError as exc:  # PagerDuty refused the page: the timeline says so; the caller goes on
        get_run_logger().error("could not page on-call about %s: %s", what, exc)
        return incident, False
    return incident, bool(result.get("sent"))
