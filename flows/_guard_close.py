"""Resolve what the runbook opened about its own health once the condition clears (issue 19): a guard's P2
incident (flows/_guard.py) or a monitoring gap's, closed out everywhere like any resolution (Slack, pages,
follow-ups, report). Apart from flows/_guard.py because closing out goes through the response
(flows/_response.py), which reaches the remediations, whose guard flows/_guard.py is.
"""

from __future__ import annotations

from typing import Any

from flows._guard import guard_fingerprint
from flows._response import close_out
from runbook.errors import IncidentNotFound
from runbook.models import Status
from runbook.store import open_store
from tasks.incident import transition_status


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
