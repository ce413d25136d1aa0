"""PagerDuty tasks: page a contact of the escalation chain, acknowledge and resolve, idempotently.

A page is durable: before it is sent the timeline (the incident store) records it as pending (`details.page_pending`,
with everything needed to send it again); while PagerDuty throttles or fails, the client retries for minutes
(Retry-After honoured) and the timeline says the page is still pending; the `paged`/`escalated` event closes it.
When the retries give up, the timeline says so and when the next try is due (PagerDuty's Retry-After, else 15 s
doubling to 5 min, on the runbook clock); the response goes on. `pending_pages` reads that state back;
`send_pending_pages` (the escalation's wait loop, every poll) tries each due page again while the incident is open
and unacknowledged, and `resend_pending_pages` (a re-run or a sweep) sends them now. A page whose sender crashed is
due once it has had no news for longer than the page task's limit. The dedup_key keeps it single in PagerDuty, and
a page already recorded sent is not recorded twice. While a page is not delivered, #incidents is told so (once per
page: at its third retry, or when its retries give up, whichever comes first) and again when it lands.

A pending page is for an open, unacknowledged incident only: once the incident is resolved (or acknowledged) it is
not sent any more, by any sender (the retry loop of the page itself stops at its next retry), and the timeline says
why ("Page to on-call not sent: the incident was resolved before PagerDuty accepted it"). A trigger PagerDuty
accepted in the moment the incident was resolved is resolved in PagerDuty at once.

What people do in PagerDuty comes back two ways: V3 webhooks (the intake's POST /pagerduty/webhooks) and, with a
REST API token, `pager_acknowledgement`, which the escalation's wait loop calls to read the status of every page
it sent. Both record through runbook.escalation.record_pager_change: a person's acknowledgement of ANY page of the
chain is the incident's acknowledgement; our own acknowledge/resolve calls are recorded as ours.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from runbook import clock
from runbook.clients._http import RetryHook, RetryPolicy
from runbook.clients.pagerduty import PAGE_POLICY, PagerDutyClient, PagerDutyRestClient, with_email
from runbook.errors import IntegrationError, RateLimited, TransientError
from runbook.escalation import page_roles, record_pager_change
from runbook.models import EventKind, Incident, Severity, last_reopen
from runbook.policy import Contact, get_policy
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.common import open_client
from tasks.incident import read_incident, record
from tasks.slack import post_slack_message

PD_SEVERITY = {Severity.P0: "critical", Severity.P1: "error", Severity.P2: "warning", Severity.P3: "info"}


def dedup_key(incident: Incident, contact: Contact | None = None) -> str:
    """Return the page's dedup key: the incident id for on-call, incident id + role for later contacts."""
    if contact is None or contact.after_minutes == 0:
        return incident.dedup_key
    return f"{incident.dedup_key}-{re.sub(r'[^a-z0-9]+', '-', contact.role.lower()).strip('-')}"


async def _already_paged(incident_id: str, key: str) -> bool:
    async with open_store() as store:
        events = await store.timeline(incident_id)
    since = last_reopen(events)  # a reopened incident pages again: the same dedup key triggered anew
    return any(e.kind in {EventKind.PAGED, EventKind.ESCALATED} and e.details.get("dedup_key") == key
               and (since is None or e.at >= since) for e in events)


# A pending page whose sender has said nothing for longer than page_contact's task limit was lost with its sender
# (a crash): it is due again. Younger, it is still being retried by its sender and is left to it.
IN_FLIGHT_S = 900.0
# Between later tries of a page whose retries gave up: 15 s, doubling, at most 5 minutes; Retry-After when given.
RESEND_MIN_S, RESEND_MAX_S = 15.0, 300.0
# The first page's first try, on the alert's path: a few quick attempts, then it stays pending (failed, with its next
# try) and the escalation's wait loop, a re-run or the sweep sends it; the status page and Slack do not wait minutes.
FIRST_TRY_POLICY = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=2.0, max_total_wait=5.0,
                               max_retry_after=5.0, connect_timeout=3.0, read_timeout=5.0)
# One try per due page: the caller (the escalation's wait loop) comes back at its next poll, so nothing blocks it.
RESEND_POLICY = RetryPolicy(max_attempts=1, connect_timeout=5.0, read_timeout=10.0)


def page_states(events: list[Any]) -> dict[str, dict[str, Any]]:
    """Return each page recorded on a timeline by dedup key, with its `state` read from the events in order.

    "in-flight" (its sender is retrying; `last_at` its last news), "failed" (the retries gave up; `failures` so far,
    `retry_at` on the runbook clock, or None), "paged" (sent: a `paged`/`escalated` event) or "closed" (not sent,
    the incident was closed or acknowledged first). A pending page carries what is needed to send it again.
    """
    pages: dict[str, dict[str, Any]] = {}
    for e in events:
        key = e.details.get("dedup_key")
        if not key:
            continue
        key = str(key)
        live = key in pages and pages[key]["state"] in ("in-flight", "failed")
        if e.kind in {EventKind.PAGED, EventKind.ESCALATED}:
            pages[key] = {**pages.get(key, {"dedup_key": key}), "state": "paged", "last_at": _noted_at(e)}
        elif e.details.get("page_closed"):
            if key in pages and pages[key]["state"] != "paged":
                pages[key]["state"] = "closed"
        elif e.kind == EventKind.NOTE and e.details.get("page_pending"):
            page = {**e.details, "failures": 0, "retry_at": None, "sender_run_id": _sender(e)}
            if live:
                page = pages[key]
            pages[key] = page
            page.update(state="in-flight", last_at=_noted_at(e))
        elif live and e.details.get("page_failed"):
            retry_at = e.details.get("retry_at")
            pages[key].update(state="failed", last_at=_noted_at(e), failures=int(pages[key]["failures"]) + 1,
                              retry_at=datetime.fromisoformat(retry_at) if retry_at else None)
        elif live and e.details.get("page_retry") is not None:
            pages[key].update(state="in-flight", last_at=_noted_at(e), sender_run_id=_sender(e))
    return pages


# A page sent by a task run outside any flow run (the warm path's declare-alert background task) names that task
# run as its sender: "task-run:<id>" (a flow run is named by its bare id).
TASK_RUN_SENDER = "task-run:"


def _sender(event: Any) -> str | None:
    """Return the run that wrote a page's note: its flow run, else its task run (from the event's provenance)."""
    if event.flow_run_id:
        return str(event.flow_run_id)
    task_run = (event.provenance or {}).get("task_run_id")
    return f"{TASK_RUN_SENDER}{task_run}" if task_run else None


async def pending_pages(incident_id: str) -> list[dict[str, Any]]:
    """Return the pages recorded as pending and never confirmed sent (each with what is needed to resend it).

    Each carries its state from the timeline (`page_states`): "in-flight" or "failed".
    """
    async with open_store() as store:
        events = await store.timeline(incident_id)
    return [p for p in page_states(events).values() if p["state"] in ("in-flight", "failed")]


# How often `first_page_tried` re-reads the timeline: the page's own first try takes about as long.
FIRST_PAGE_POLL_S = 0.5


async def first_page_tried(incident_id: str, *, within: float = 15.0, until: Any = None) -> str | None:
    """Wait until the incident's first page (dedup key = the incident id) was sent or its first try failed; return
    its state ("paged", "failed", "in-flight" once retried, "closed"), None if nothing was tried within `within`
    seconds or before the awaitable-like `until` (e.g. the escalation's task) is done."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with open_store() as store:
            events = await store.timeline(incident_id)
        page = page_states(events).get(incident_id)
        if page is not None and (page["state"] != "in-flight" or any(
                e.details.get("dedup_key") == incident_id and e.details.get("page_retry") is not None
                for e in events)):
            return str(page["state"])
        if asyncio.get_running_loop().time() >= deadline or (until is not None and until.done()):
            return None
        await asyncio.sleep(FIRST_PAGE_POLL_S)


def _noted_at(event: Any) -> datetime:
    """Return when a page note was written on the runbook clock (`clock_at`), else its record time."""
    at = event.details.get("clock_at")
    return datetime.fromisoformat(at) if at else event.at


def _now() -> str:
    return clock.now().isoformat()


class PageWithdrawn(Exception):
    """The incident was resolved or acknowledged while its page was pending: the page must not be sent."""


def _why_not_send(incident: Incident) -> str | None:
    """Return why a pending page of the incident must no longer be sent (resolved, acknowledged), or None."""
    if not incident.status.is_open:
        return "the incident was resolved before PagerDuty accepted it"
    if incident.acknowledged_at is not None:
        return f"acknowledged by {incident.acknowledged_by}"
    return None


async def _withdrawn(incident_id: str) -> str | None:
    async with open_store() as store:
        return _why_not_send(await store.get(incident_id))


def _retry_note(incident_id: str, key: str, who: str) -> RetryHook:
    """Return the client's on_retry hook: the timeline says the page is still pending (first retry, then every 5th);
    before each wait the incident is read again, and a resolved or acknowledged one stops the retries
    (`PageWithdrawn`): nothing is sent for it any more."""

    async def on_retry(attempt: int, error: IntegrationError, delay: float) -> None:
        why = await _withdrawn(incident_id)
        if why is not None:
            raise PageWithdrawn(why)
        if attempt >= TELL_AT_RETRY:
            await _tell_not_delivered(incident_id, key, who, error)
        if attempt == 1 or attempt % 5 == 0:
            await record(incident_id, EventKind.NOTE,
                         f"Page to {who} still pending: {error}; retrying in {delay:.0f}s (attempt {attempt})",
                         {"dedup_key": key, "page_retry": attempt, "status": error.status, "clock_at": _now()},
                         actor="pagerduty")

    return on_retry


def _next_try_in(error: IntegrationError, failures: int) -> float:
    """Return how long to wait before the next try of a page that failed `failures` times (this one included)."""
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return max(1.0, error.retry_after)  # PagerDuty said how long
    if isinstance(error, TransientError):
        return min(RESEND_MAX_S, RESEND_MIN_S * 2 ** max(0, failures - 1))
    return RESEND_MAX_S  # refused (400, 401, 403): a person must fix the settings; keep trying, slowly


async def _send_page(incident_id: str, page: dict[str, Any], *, policy: RetryPolicy = PAGE_POLICY,
                     raise_refused: bool = False) -> dict[str, Any]:
    """Send one pending page and record it sent; a failure is recorded (still pending, when to try next), not lost.

    Returns {"sent": True, …}, or {"sent": False, "pending": True, "error": …, "retry_at": …} after a failure, or
    {"sent": False, "closed": why} when the incident was resolved or acknowledged first (before the send or during
    its retries: the page is closed on the timeline, not sent); with `raise_refused`, PagerDuty refusing the event
    (not a throttle or an outage) is raised once recorded.
    """
    key, who = str(page["dedup_key"]), str(page["who"])
    first, reason = bool(page.get("first")), str(page.get("reason") or "")
    why = await _withdrawn(incident_id)
    try:
        if why is not None:
            raise PageWithdrawn(why)
        async with PagerDutyClient.from_settings(get_settings(), policy=policy) as pd:
            result = await pd.trigger(key, page["summary"], severity=page["severity"],
                                      custom_details=page.get("custom_details") or {},
                                      on_retry=_retry_note(incident_id, key, who))
    except PageWithdrawn as stop:
        await _close_page(incident_id, key, who, str(stop))
        return {"sent": False, "dedup_key": key, "closed": str(stop)}
    except IntegrationError as exc:
        failures = int(page.get("failures") or 0) + 1
        wait = _next_try_in(exc, failures)
        retry_at = clock.now() + timedelta(seconds=wait)
        await record(incident_id, EventKind.NOTE,
                     f"Page to {who} NOT delivered, still pending: {exc}; next try in {wait:.0f}s",
                     {"dedup_key": key, "page_failed": True, "status": exc.status, "failures": failures,
                      "retry_at": retry_at.isoformat(), "clock_at": _now()}, actor="pagerduty")
        await _tell_not_delivered(incident_id, key, who, exc)
        if raise_refused and not isinstance(exc, TransientError):
            raise
        return {"sent": False, "pending": True, "dedup_key": key, "error": str(exc), "retry_at": retry_at}
    if await _already_paged(incident_id, key):  # another sender of the same pending page was first
        return {"sent": False, "dedup_key": key, "reason": "already paged"}
    await record(
        incident_id,
        EventKind.PAGED if first else EventKind.ESCALATED,
        f"Paged {who}" + (f": {reason}" if reason else ""),
        {"dedup_key": key, "role": page.get("role"), "name": page.get("name"), "status": result.status},
        actor="pagerduty",
    )
    if await _told(incident_id, key):
        failed = int(page.get("failures") or 0)
        await _tell_incidents(incident_id, key, f"Page to {who} for {incident_id} delivered now"
                              + (f", after {failed} failed tries." if failed else "."), delivered=True)
    await _resolve_if_resolved(incident_id, key, who)
    return {"sent": True, "dedup_key": key, "status": result.status}


# Telling #incidents that a page is not delivered must not hold the page's own retries (Slack down as well).
TELL_TIMEOUT_S = 30.0


# While the page's own retries go on (minutes), #incidents hears that it is not delivered from this retry on.
TELL_AT_RETRY = 3


async def _told(incident_id: str, key: str) -> bool:
    """Whether #incidents was told that this page is not delivered."""
    async with open_store() as store:
        return any(e.details.get("page") == key and e.details.get("page_delivered") is False
                   for e in await store.timeline(incident_id, kind=EventKind.SLACK))


async def _tell_not_delivered(incident_id: str, key: str, who: str, error: IntegrationError) -> None:
    """Tell #incidents once per page that it is not delivered, still pending, and whom to reach meanwhile."""
    if not await _told(incident_id, key):
        await _tell_incidents(incident_id, key, f"Page to {who} for {incident_id} NOT delivered: {error}. It stays "
                              "pending and is tried again until PagerDuty takes it or someone acknowledges; "
                              f"reach {who} directly meanwhile.", delivered=False)


async def _tell_incidents(incident_id: str, key: str, text: str, *, delivered: bool) -> None:
    """Say in #incidents that a page is not delivered (still pending) or was delivered after all; never raise."""
    try:
        await asyncio.wait_for(post_slack_message.fn(
            get_policy().communication.incidents_channel, text, incident_id=incident_id,
            details={"page": key, "page_delivered": delivered}, actor="pagerduty"), timeout=TELL_TIMEOUT_S)
    except Exception as exc:  # Slack down or slow: the timeline already says the page is pending
        _log_warning(f"could not tell #incidents about the page: {type(exc).__name__}: {exc}")


async def _resolve_if_resolved(incident_id: str, key: str, who: str) -> None:
    """Resolve in PagerDuty at once a trigger it accepted while the incident was being resolved (the resolution's
    own resolve_pages may have run before this page was recorded sent)."""
    async with open_store() as store:
        current = await store.get(incident_id)
    if current.status.is_open:
        return
    try:
        async with PagerDutyClient.from_settings(get_settings(), policy=RESEND_POLICY) as pd:
            await pd.resolve(key)
    except IntegrationError as exc:
        _log_warning(f"the page to {who} landed after the resolution and could not be resolved: {exc}")
        return
    await record(incident_id, EventKind.NOTE, f"Page to {who} landed after the incident was resolved: resolved in "
                 "PagerDuty at once", {"dedup_keys": [key], "ours": True, "late_page": True}, actor="pagerduty")


async def _close_page(incident_id: str, key: str, who: str, why: str) -> None:
    await record(incident_id, EventKind.NOTE, f"Page to {who} not sent: {why}",
                 {"dedup_key": key, "page_closed": True}, actor="pagerduty")


@task(name="page_contact", retries=0, timeout_seconds=IN_FLIGHT_S, cache_policy=NO_CACHE)
async def page_contact(incident: Incident, contact: Contact, reason: str = "", quick: bool = False) -> dict[str, Any]:
    """Page one contact of the escalation chain (PagerDuty Events v2, dedup_key per incident and contact).

    The page is recorded as pending first, so that a crash while PagerDuty is unreachable loses nothing. When the
    retries (minutes) give up on a throttled or failing PagerDuty, the page stays pending on the timeline and the
    call returns `pending` (the response goes on; `send_pending_pages` tries again); PagerDuty refusing the event
    (400, 401/403: our settings) is raised, after the timeline says so. `quick`: a few seconds of retries
    (FIRST_TRY_POLICY, the alert's path), not minutes.
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
    earlier = next((p for p in await pending_pages(incident.id) if p["dedup_key"] == key), None)
    if earlier is None:
        await record(incident.id, EventKind.NOTE, f"Page to {who} pending", {**page, "clock_at": _now()},
                     actor="pagerduty")
    else:  # a re-run: send the page recorded earlier, and say it is being sent again
        page = earlier
        await record(incident.id, EventKind.NOTE, f"Sending the pending page to {who} again",
                     {"dedup_key": key, "page_retry": 0, "clock_at": _now()}, actor="pagerduty")
    result = await _send_page(incident.id, page, policy=FIRST_TRY_POLICY if quick else PAGE_POLICY,
                              raise_refused=True)
    if result.get("pending"):
        _log_warning(f"page to {who} not delivered yet, still pending: {result['error']}")
    return result


def _due(page: dict[str, Any], *, honour_retry_at: bool, dead: set[str] | None = None) -> bool:
    """Return True when a pending page should be tried now (not while its sender still retries it); a page whose
    sender's flow run is over (`dead`: crashed, cancelled, ended or gone) has no sender left."""
    if page["state"] == "in-flight":
        quiet = (clock.now() - page["last_at"]).total_seconds()
        return page.get("sender_run_id") in (dead or set()) or quiet > IN_FLIGHT_S
    return not honour_retry_at or page["retry_at"] is None or clock.now() >= page["retry_at"]


async def _dead_senders(pages: list[dict[str, Any]]) -> set[str]:
    """Return the senders (flow runs, or task runs outside any flow run) of in-flight pages that are no longer
    running (read through Prefect's API); none when the API cannot be read (the page is then left to IN_FLIGHT_S)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    ids = {str(p["sender_run_id"]) for p in pages if p["state"] == "in-flight" and p.get("sender_run_id")}
    dead: set[str] = set()
    if not ids:
        return dead
    try:
        async with get_client() as client:
            for run_id in ids:
                try:
                    if run_id.startswith(TASK_RUN_SENDER):
                        run: Any = await client.read_task_run(UUID(run_id.removeprefix(TASK_RUN_SENDER)))
                    else:
                        run = await client.read_flow_run(UUID(run_id))
                except ObjectNotFound:
                    dead.add(run_id)
                    continue
                if run.state is None or run.state.is_final():
                    dead.add(run_id)
    except Exception as exc:  # Prefect unreachable: say so, leave the pages to their age
        _log_warning(f"could not read the pending pages' senders from Prefect: {type(exc).__name__}: {exc}")
    return dead


async def _close_pending(incident: Incident, pages: list[dict[str, Any]], why: str) -> None:
    for page in pages:
        await _close_page(incident.id, str(page["dedup_key"]), str(page["who"]), why)


async def send_pending_pages(incident: Incident, *, policy: RetryPolicy = RESEND_POLICY,
                             honour_retry_at: bool = True, check_senders: bool = False) -> list[str]:
    """Send the incident's pending pages that are due; return the dedup keys sent.

    Not a task: the escalation's wait loop calls it at every poll, so a page whose retries gave up is tried again
    (one try each time it is due: 15 s doubling to 5 min, or PagerDuty's Retry-After) for as long as the incident
    is open and unacknowledged; once it is resolved or acknowledged its pending pages are closed with a note saying
    why, and never sent (the follow-up sweep closes those of a resolved incident whose escalation is over).
    `check_senders`: a page still in flight whose sender's flow run is over in Prefect is due now (a sweep).
    """
    pages = await pending_pages(incident.id)
    if not pages:
        return []
    current = await read_incident(incident.id)
    why = _why_not_send(current)
    if why is not None:  # resolved or acknowledged meanwhile: nobody is paged for it any more
        await _close_pending(current, pages, why)
        return []
    dead = await _dead_senders(pages) if check_senders else set()
    sent = []
    for page in pages:
        if _due(page, honour_retry_at=honour_retry_at, dead=dead) \
                and (await _send_page(current.id, page, policy=policy))["sent"]:
            sent.append(str(page["dedup_key"]))
    return sent


@task(name="resend_pending_pages", retries=0, timeout_seconds=IN_FLIGHT_S, cache_policy=NO_CACHE)
async def resend_pending_pages(incident: Incident) -> list[str]:
    """Send again every page of the incident still pending (after a crash or exhausted retries); return their keys.

    For a re-run or a sweep: each page is retried for minutes, now (not at its next-try time); a page whose sender
    is still retrying it is left to that sender, one whose sender's flow run is over (Prefect's API) is sent.
    """
    return await send_pending_pages(incident, policy=PAGE_POLICY, honour_retry_at=False, check_senders=True)


def _log_warning(line: str) -> None:
    try:
        get_run_logger().warning(line)
    except MissingContextError:  # called outside a run (tests, scripts)
        pass


def _resolved_in_pagerduty(events: list[Any]) -> set[str]:
    """Return the dedup keys whose PagerDuty incident was already resolved (in the app, or by an earlier call)."""
    return {str(e.details["dedup_key"]) for e in events
            if e.details.get("pagerduty_status") == "resolved" and e.details.get("dedup_key")}


@task(name="resolve_pages", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)  # the client retries for minutes
async def resolve_pages(incident: Incident, keys: list[str] | None = None) -> list[str]:
    """Resolve every page sent for the incident (not one already resolved in PagerDuty: nothing is re-resolved);
    `keys`: exactly those pages (reconcile: PagerDuty shows them open although the incident is resolved)."""
    if keys is None:
        async with open_store() as store:
            events = await store.timeline(incident.id)
        since = last_reopen(events)  # reopened: the pages since then (those before were resolved then)
        events = [e for e in events if since is None or e.at >= since]
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
    since = last_reopen(events)  # reopened: the pages of this response cycle
    events = [e for e in events if since is None or e.at >= since]
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
        cycle = (await store.get(incident.id)).reopened_at
    if not roles:
        return None
    async with open_client(PagerDutyRestClient) as rest:
        found = [(key, pi) for key in roles for pi in (await rest.incidents(key))[-1:]]
    for key, pi in found:
        if cycle is not None and (opened := _parse_time(pi.created_at)) is not None and opened < cycle:
            continue  # the PagerDuty incident of the cycle before the reopen (its page not re-sent yet): not ours
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
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


@task(name="read_page_statuses", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_page_statuses(keys: list[str]) -> dict[str, str | None]:
    """Return the status PagerDuty's REST API shows for each dedup key's newest incident (None: no incident)."""
    out: dict[str, str | None] = {}
    async with open_client(PagerDutyRestClient) as rest:
        for key in keys:
            found = await rest.incidents(key)
            out[key] = found[-1].status if found else None
    return out
