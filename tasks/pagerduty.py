"""PagerDuty tasks: page a contact of the escalation chain, acknowledge and resolve, idempotently.

A page is durable: before it is sent the timeline records it as pending (`details.page_pending`, with everything
needed to send it again); while PagerDuty throttles or fails, the client retries for minutes and the timeline says
the page is still pending; the `paged`/`escalated` event closes it. A page still pending after a crash (or after
the retries gave up) is found by `pending_pages` and sent again by `resend_pending_pages` (same dedup_key: PagerDuty
does not page twice).

What people do in PagerDuty comes back two ways: V3 webhooks (the intake's POST /pagerduty/webhooks) and, with a
REST API token, `pager_acknowledgement`, which the escalation's wait loop calls to read the status of every page
it sent. Both record through runbook.escalation.record_pager_change: a person's acknowledgement of ANY page of the
chain is the incident's acknowledgement; our own acknowledge/resolve calls are recorded as ours.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients._http import RetryHook
from runbook.clients.pagerduty import PagerDutyClient, PagerDutyRestClient, with_email
from runbook.errors import IntegrationError
from runbook.escalation import page_roles, record_pager_change
from runbook.models import EventKind, Incident, Severity
from runbook.policy import Contact, get_policy
from runbook.settings import get_settings
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


async def pending_pages(incident_id: str) -> list[dict[str, Any]]:
    """Return the pages recorded as pending and never confirmed sent (each with what is needed to resend it)."""
    async with open_store() as store:
        events = await store.timeline(incident_id)
    sent = {e.details.get("dedup_key") for e in events if e.kind in {EventKind.PAGED, EventKind.ESCALATED}}
    pending: dict[str, dict[str, Any]] = {}
    for e in events:
        key = e.details.get("dedup_key")
        if e.kind == EventKind.NOTE and e.details.get("page_pending") and key not in sent and key not in pending:
            pending[str(key)] = dict(e.details)
    return list(pending.values())


def _retry_note(incident_id: str, key: str, who: str) -> RetryHook:
    """Return the client's on_retry hook: the timeline says the page is still pending (first retry, then every 5th)."""

    async def on_retry(attempt: int, error: IntegrationError, delay: float) -> None:
        if attempt == 1 or attempt % 5 == 0:
            await record(incident_id, EventKind.NOTE,
                         f"Page to {who} still pending: {error}; retrying in {delay:.0f}s (attempt {attempt})",
                         {"dedup_key": key, "page_retry": attempt, "status": error.status}, actor="pagerduty")

    return on_retry


async def _send_page(incident_id: str, page: dict[str, Any], first: bool, reason: str) -> dict[str, Any]:
    """Send one pending page (retried for minutes) and record it sent; a final failure is recorded, then raised."""
    key, who = str(page["dedup_key"]), str(page["who"])
    try:
        async with open_client(PagerDutyClient) as pd:
            result = await pd.trigger(key, page["summary"], severity=page["severity"],
                                      custom_details=page.get("custom_details") or {},
                                      on_retry=_retry_note(incident_id, key, who))
    except IntegrationError as exc:
        await record(incident_id, EventKind.NOTE, f"Page to {who} NOT delivered, still pending: {exc}",
                     {"dedup_key": key, "page_failed": True, "status": exc.status}, actor="pagerduty")
        raise
    await record(
        incident_id,
        EventKind.PAGED if first else EventKind.ESCALATED,
        f"Paged {who}" + (f": {reason}" if reason else ""),
        {"dedup_key": key, "role": page.get("role"), "name": page.get("name"), "status": result.status},
        actor="pagerduty",
    )
    return {"sent": True, "dedup_key": key, "status": result.status}


@task(name="page_contact", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)
async def page_contact(incident: Incident, contact: Contact, reason: str = "") -> dict[str, Any]:
    """Page one contact of the escalation chain (PagerDuty Events v2, dedup_key per incident and contact).

    The page is recorded as pending first, so that a crash while PagerDuty is unreachable loses nothing.
    """
    key = dedup_key(incident, contact)
    if await _already_paged(incident.id, key):
        return {"sent": False, "dedup_key": key, "reason": "already paged"}
    first = contact.after_minutes == 0
    who = f"{contact.role}{f' ({contact.name})' if contact.name else ''}"
    details = {"incident_id": incident.id, "severity": incident.severity.value, "role": contact.role,
               "name": contact.name, "scenario": incident.scenario,
               "response_due": get_policy().response_due(incident).isoformat(),
               "reason": reason}
    page = {"dedup_key": key, "page_pending": True, "who": who, "role": contact.role, "name": contact.name,
            "first": first, "reason": reason, "summary": f"[{incident.severity}] {incident.title} ({incident.id})",
            "severity": PD_SEVERITY[incident.severity], "custom_details": details}
    if not any(p["dedup_key"] == key for p in await pending_pages(incident.id)):
        await record(incident.id, EventKind.NOTE, f"Page to {who} pending", page, actor="pagerduty")
    return await _send_page(incident.id, page, first, reason)


@task(name="resend_pending_pages", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)
async def resend_pending_pages(incident: Incident) -> list[str]:
    """Send again every page of the incident still pending (after a crash or exhausted retries); return their keys."""
    keys = []
    for page in await pending_pages(incident.id):
        await _send_page(incident.id, page, bool(page.get("first")), str(page.get("reason") or ""))
        keys.append(str(page["dedup_key"]))
    return keys


def _resolved_in_pagerduty(events: list[Any]) -> set[str]:
    """Return the dedup keys whose PagerDuty incident was already resolved (in the app, or by an earlier call)."""
    return {str(e.details["dedup_key"]) for e in events
            if e.details.get("pagerduty_status") == "resolved" and e.details.get("dedup_key")}


@task(name="resolve_pages", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)  # the client retries for minutes
async def resolve_pages(incident: Incident) -> list[str]:
    """Resolve every page sent for the incident (not one already resolved in PagerDuty: nothing is re-resolved)."""
    async with open_store() as store:
        events = await store.timeline(incident.id)
    done = _resolved_in_pagerduty(events)
    keys = sorted({str(e.details["dedup_key"]) for e in events
                   if e.kind in {EventKind.PAGED, EventKind.ESCALATED} and e.details.get("dedup_key")} - done)
    if not keys:
        return []
    async with open_client(PagerDutyClient) as pd:
        for key in keys:
            await pd.resolve(key)
    await record(incident.id, EventKind.NOTE, f"Resolved {len(keys)} page(s) in PagerDuty",
                 {"dedup_keys": keys, "ours": True}, actor="pagerduty")
    return keys


@task(name="acknowledge_pages", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)  # likewise
async def acknowledge_pages(incident: Incident) -> list[str]:
    """Acknowledge every page of the chain in PagerDuty (stops PagerDuty's own re-notification); recorded as ours."""
    async with open_store() as store:
        events = await store.timeline(incident.id)
    done = _resolved_in_pagerduty(events)
    keys = sorted(k for k in page_roles(events) if k not in done
                  and any(e.details.get("dedup_key") == k and e.kind in {EventKind.PAGED, EventKind.ESCALATED}
                          for e in events))
    if not keys and not done:
        keys = [incident.dedup_key]  # the response paged on-call before its page was on this timeline
    if not keys:
        return []
    async with open_client(PagerDutyClient) as pd:
        for key in keys:
            await pd.acknowledge(key)
    await record(incident.id, EventKind.NOTE, f"Acknowledged {len(keys)} page(s) in PagerDuty (the runbook's call, "
                 "after the incident was acknowledged)", {"dedup_keys": keys, "ours": True}, actor="runbook")
    return keys


# With webhooks the REST poll is only a safety net (a lost webhook); without them it is how PagerDuty acks arrive.
PAGER_POLL_WITH_WEBHOOKS_S = 30.0
PAGER_POLL_MIN_S = 2.0  # the REST API allows 960 requests a minute per key: one per page every 2 s is far below


def pager_poll_seconds(poll: float) -> float | None:
    """Return how often the escalation reads its pages' status through the REST API (None: no token configured)."""
    settings = get_settings()
    if not (settings.pagerduty_api_token and settings.pagerduty_api_token.get_secret_value()):
        return None
    secret = settings.pagerduty_webhook_secret
    webhooks = bool(secret and secret.get_secret_value())
    return max(poll, PAGER_POLL_WITH_WEBHOOKS_S if webhooks else PAGER_POLL_MIN_S)


async def pager_acknowledgement(incident: Incident) -> str | None:
    """Read each page's PagerDuty incident (REST API); record a person's acknowledgement or resolve; return its
    meaning ('acknowledged', …) or None when nobody acted. Not a task: the wait loop calls it every few seconds.

    A failed read (PagerDuty down, 429 past its budget) is logged by the caller and tried again at the next poll.
    """
    async with open_store() as store:
        roles = page_roles(await store.timeline(incident.id))
    if not roles:
        return None
    async with open_client(PagerDutyRestClient) as rest:
        found = [(key, pi) for key in roles for pi in (await rest.incidents(key))[-1:]]
    for key, pi in found:
        person = pi.person()
        if pi.status in ("acknowledged", "resolved") and person is not None:
            person = await with_email(person, get_settings())
            async with open_store() as store:
                current = await store.get(incident.id)
                if current.acknowledged_at is not None:
                    return None
                at = None
                if pi.status == "acknowledged" and pi.acknowledgers:
                    at = _parse_time(pi.last_status_change_at)
                return await record_pager_change(
                    store, current, key, pi.status, person, at=at,
                    details={"source": "rest-poll", "pagerduty_incident": pi.id,
                             **({"pagerduty_url": pi.html_url} if pi.html_url else {})})
    return None


def _parse_time(value: str | None) -> Any:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
