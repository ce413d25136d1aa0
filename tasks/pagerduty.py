"""PagerDuty tasks: page a contact of the escalation chain, acknowledge and resolve, idempotently."""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.pagerduty import PagerDutyClient
from runbook.models import EventKind, Incident, Severity
from runbook.policy import Contact
from runbook.store import open_store
from tasks.common import open_client
from tasks.incident import record

PD_SEVERITY = {Severity.P0: "critical", Severity.P1: "error", Severity.P2: "warning", Severity.P3: "info"}


def dedup_key(incident: Incident, contact: Contact | None = None) -> str:
    """Return the page's dedup key: the incident id for on-call, incident id + role for later contacts."""
    if contact is None or contact.after_minutes == 0:
        return incident.dedup_key
    return f"{incident.dedup_key}-{re.sub(r'[^a-z0-9]+', '-', contact.role.lower()).strip('-')}"


async def _already_paged(incident_id: str, key: str) -> bool:
    async with open_store() as store:
        events = await store.timeline(incident_id)
    return any(e.kind in {EventKind.PAGED, EventKind.ESCALATED} and e.details.get("dedup_key") == key
               for e in events)


@task(name="page_contact", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def page_contact(incident: Incident, contact: Contact, reason: str = "") -> dict[str, Any]:
    """Page one contact of the escalation chain (PagerDuty Events v2, dedup_key per incident and contact)."""
    key = dedup_key(incident, contact)
    if await _already_paged(incident.id, key):
        return {"sent": False, "dedup_key": key, "reason": "already paged"}
    first = contact.after_minutes == 0
    summary = f"[{incident.severity}] {incident.title} ({incident.id})"
    details = {"incident_id": incident.id, "severity": incident.severity.value, "role": contact.role,
               "name": contact.name, "scenario": incident.scenario, "response_due": incident.response_due.isoformat(),
               "reason": reason}
    async with open_client(PagerDutyClient) as pd:
        result = await pd.trigger(key, summary, severity=PD_SEVERITY[incident.severity],  # type: ignore[arg-type]
                                  custom_details=details)
    who = f"{contact.role}{f' ({contact.name})' if contact.name else ''}"
    await record(
        incident.id,
        EventKind.PAGED if first else EventKind.ESCALATED,
        f"Paged {who}" + (f": {reason}" if reason else ""),
        {"dedup_key": key, "role": contact.role, "name": contact.name, "status": result.status},
        actor="pagerduty",
    )
    return {"sent": True, "dedup_key": key, "status": result.status}


@task(name="resolve_pages", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def resolve_pages(incident: Incident) -> list[str]:
    """Resolve every page sent for the incident."""
    async with open_store() as store:
        keys = sorted({str(e.details["dedup_key"]) for e in await store.timeline(incident.id)
                       if e.kind in {EventKind.PAGED, EventKind.ESCALATED} and e.details.get("dedup_key")})
    if not keys:
        return []
    async with open_client(PagerDutyClient) as pd:
        for key in keys:
            await pd.resolve(key)
    await record(incident.id, EventKind.NOTE, f"Resolved {len(keys)} page(s) in PagerDuty", {"dedup_keys": keys},
                 actor="pagerduty")
    return keys


@task(name="acknowledge_pages", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def acknowledge_pages(incident: Incident) -> None:
    """Acknowledge the on-call page in PagerDuty (stops PagerDuty's own re-notification)."""
    async with open_client(PagerDutyClient) as pd:
        await pd.acknowledge(incident.dedup_key)
