"""POST /pagerduty/webhooks: PagerDuty's V3 webhooks, so that on-call's Acknowledge in the app stops the escalation.

Order on every POST: verify `X-PagerDuty-Signature` (v1 = hex HMAC-SHA256 of the raw body with the subscription's
signing secret, RUNBOOK_PAGERDUTY_WEBHOOK_SECRET; several signatures during a rotation; constant-time) → 401 and
nothing read when it does not match → parse (400 with the reason) → the delivery id (`X-Webhook-Id`, repeated on
each retry of one webhook, else `event.id`) is processed once: a repeat answers 200 `duplicate` and changes nothing
→ match the PagerDuty incident to ours by its `incident_key` (a dedup key we sent: the incident id, or incident id +
role for the lead's and the CTO's pages), never by title → record it (runbook.escalation.record_pager_change):
    incident.acknowledged    a person's first acknowledgement is THE acknowledgement (via pagerduty, who = the
                             agent's name, identity = the PagerDuty user id); the escalation stops at its next poll
    incident.resolved        a note (and the acknowledgement if none yet): our incident stays open until verified
    incident.reassigned / incident.escalated / incident.annotated   notes naming who and to whom
An acknowledgement made by our own integration (the runbook's `acknowledge_pages` call: its agent is the service,
not a user) is recorded as ours. Anything else (another service's incident, other event types) answers 202
`ignored`. Store trouble answers 503, so PagerDuty retries. The payload shape is PagerDuty's developer docs
docs/webhooks/01-Overview.md (extract in tests/contracts/specs/pagerduty-rest.json).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from runbook.errors import IncidentNotFound
from runbook.intake.common import Respond, Starter, log, read_body, rejected, strict_json
from runbook.intake.signatures import SeenOnce, verify_pagerduty
from runbook.settings import Settings

EVENTS = ("incident.acknowledged", "incident.resolved", "incident.reassigned", "incident.escalated",
          "incident.annotated")
MAX_WEBHOOK_BYTES = 256 * 1024  # PagerDuty drops webhooks above 256 KB

_SEEN = SeenOnce()


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


async def _already(store: Any, incident_id: str, delivery_id: str) -> bool:
    return any(e.details.get("pagerduty_webhook_id") == delivery_id for e in await store.timeline(incident_id))


async def _incident_key(store: Any, event: dict[str, Any]) -> str | None:
    """Return the incident_key of the event's incident (a note names only the PagerDuty incident id)."""
    data = event.get("data") or {}
    if data.get("type") == "incident":
        return data.get("incident_key")
    pd_id = (data.get("incident") or {}).get("id")
    if not pd_id:
        return None
    for incident in await store.list(open_only=True, limit=50):  # a note on an incident seen before
        for e in await store.timeline(incident.id):
            if e.details.get("pagerduty_incident") == pd_id and e.details.get("dedup_key"):
                return str(e.details["dedup_key"])
    return None


async def handle(event: dict[str, Any], delivery_id: str) -> dict[str, Any]:
    """Record one verified V3 webhook event; return the answer's body."""
    from runbook.clients.pagerduty import with_email
    from runbook.escalation import incident_of_key, is_person, page_roles, record_pager_change
    from runbook.models import EventKind, TimelineEvent, utcnow
    from runbook.settings import get_settings
    from runbook.store import open_store

    kind = str(event.get("event_type") or "")
    if kind not in EVENTS:
        return {"status": "ignored", "reason": f"event type {kind or '?'} is not one the runbook reads"}
    data = event.get("data") or {}
    async with open_store() as store:
        key = await _incident_key(store, event)
        incident_id = incident_of_key(key)
        if incident_id is None or key is None:
            return {"status": "ignored", "reason": "not an incident the runbook paged (incident_key)"}
        try:
            incident = await store.get(incident_id)
        except IncidentNotFound:
            return {"status": "ignored", "reason": "no such incident in this store"}
        if key not in page_roles(await store.timeline(incident.id)):
            return {"status": "ignored", "reason": "not a dedup key the runbook sent"}
        if await _already(store, incident.id, delivery_id):
            return {"status": "duplicate", "incident_id": incident.id}
        agent = event.get("agent") if isinstance(event.get("agent"), dict) else None
        agent = await with_email(agent, get_settings())  # the person's email, when a REST token is set
        ref = {"pagerduty_webhook_id": delivery_id, "pagerduty_event_id": event.get("id"), "source": "webhook",
               "pagerduty_incident": data.get("id") if data.get("type") == "incident"
               else (data.get("incident") or {}).get("id"),
               **({"pagerduty_url": data["html_url"]} if data.get("html_url") else {})}
        at = _when(event.get("occurred_at"))
        if kind in ("incident.acknowledged", "incident.resolved"):
            meaning = await record_pager_change(store, incident, key, kind.split(".")[1], agent, at=at, details=ref)
        else:
            who = str((agent or {}).get("summary") or "PagerDuty")
            if kind == "incident.annotated":
                text = f"PagerDuty note by {who}: {str(data.get('content') or '')[:500]}"
            else:
                to = ", ".join(str(a.get("summary") or a.get("id")) for a in data.get("assignees") or []) or "?"
                text = f"PagerDuty: {kind.split('.')[1]} to {to} by {who}"
            await store.append_event(incident.id, TimelineEvent(
                kind=EventKind.NOTE, actor=who, summary=text,
                details={"dedup_key": key, "pagerduty_event": kind, **ref}))
            meaning = "noted"
            if kind in ("incident.reassigned", "incident.escalated") and is_person(agent) \
                    and incident.acknowledged_at is None:
                # A person routed the page in PagerDuty: that is a response ("if no response" is over), and
                # PagerDuty now pages whom they chose; our chain paging the lead and the CTO too would double up.
                assert agent is not None
                _, newly = await store.acknowledge(
                    incident.id, who, at=at if at is not None and incident.created_at <= at <= utcnow() else None,
                    via="pagerduty", identity=str(agent.get("id") or "") or None,
                    details={"dedup_key": key, "pagerduty_event": kind, "response": text, **ref})
                meaning = "acknowledged" if newly else meaning
    log.info("pagerduty %s for %s (%s): %s", kind, incident.id, key, meaning)
    return {"status": "accepted", "incident_id": incident.id, "recorded": meaning}


def routes(settings: Settings, *, open_access: bool, respond: Respond, start: Starter | None = None
           ) -> list[Route]:
    """Return the PagerDuty webhook route (always verified: `open_access` does not apply to PagerDuty)."""

    async def webhooks(request: Request) -> JSONResponse:
        body = await read_body(request, MAX_WEBHOOK_BYTES)  # in chunks: a chunked upload stops at the limit
        if body is None:
            return rejected(413, f"body larger than {MAX_WEBHOOK_BYTES} bytes")
        verdict = verify_pagerduty(request.headers, body, settings.pagerduty_webhook_secret)
        if verdict != "ok":
            if verdict == "unconfigured":
                log.warning("a PagerDuty webhook arrived but RUNBOOK_PAGERDUTY_WEBHOOK_SECRET is not set")
            else:
                log.warning("rejected a PagerDuty webhook with a bad or missing signature from %s",
                            request.client.host if request.client else "?")
            return rejected(401, "unauthorized")
        try:
            payload = strict_json(body)  # strict: no NaN, lone surrogates or nesting past the limit (no 500)
            event = payload["event"]
            if not isinstance(event, dict) or not event.get("id") or not event.get("event_type"):
                raise ValueError("event.id and event.event_type are required")
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            return rejected(400, f"malformed PagerDuty webhook: {exc}")
        delivery_id = request.headers.get("x-webhook-id") or str(event["id"])
        if not _SEEN.claim(delivery_id):
            return JSONResponse({"status": "duplicate"}, status_code=200)
        try:
            answer = await handle(event, delivery_id)
        except Exception as exc:  # the store is down: PagerDuty retries a 5xx (for up to 48 hours)
            _SEEN.release(delivery_id)
            log.error("could not record PagerDuty webhook %s: %s: %s", delivery_id, type(exc).__name__, exc)
            return rejected(503, "not recorded; retry")
        if answer["status"] == "ignored":
            _SEEN.release(delivery_id)  # harmless to see again; keeps the memory for what matters
        return JSONResponse(answer, status_code=202 if answer["status"] != "duplicate" else 200)

    return [Route("/pagerduty/webhooks", webhooks, methods=["POST"])]
