"""The escalation schedule of an incident, from the policy: who is paged or reminded when, until acknowledged.

P0: on-call at once, engineering lead at 15 min, CTO at 30 min (the runbook's table). P1 uses the same chain
stretched to its 30-minute response time. P2/P3 page nobody at once: a reminder in #incidents at a fraction of the
response time, then the on-call engineer is paged when the response time runs out. Every schedule ends with the
response-time deadline, when a missing acknowledgement is recorded as a missed SLA. A severity a person changes
re-plans a running escalation: the new severity's schedule, counted from the change, less what was already done
(`pending_steps`).

Acknowledgements made in PagerDuty (the app's Acknowledge, on any page of the chain) reach the store through
`record_pager_change`, from the intake's webhook route and from the escalation's REST poll alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from runbook.models import EventKind, Incident, Severity, TimelineEvent, utcnow
from runbook.policy import Contact, Policy

if TYPE_CHECKING:
    from runbook.store import IncidentStore


@dataclass(frozen=True)
class Step:
    """One escalation step: at `at`, page a contact, post a reminder, or record the missed SLA."""

    at: datetime
    action: Literal["page", "remind", "sla"]
    contact: Contact | None = None


def escalation_schedule(incident: Incident, policy: Policy) -> list[Step]:
    """Return the incident's escalation steps in time order (step 0 = the first page, if any)."""
    start = incident.escalation_start  # a severity a person raised later counts from the change
    due = start + policy.response_time(incident.severity)
    chain = policy.chain()
    steps: list[Step] = []
    if incident.severity in (Severity.P0, Severity.P1):
        stretch = policy.response_time(incident.severity) / policy.response_time(Severity.P0)
        steps += [Step(start + timedelta(minutes=c.after_minutes) * stretch, "page", c) for c in chain]
    else:
        fraction = policy.response.reminder_fraction
        steps.append(Step(start + (due - start) * fraction, "remind"))
        if chain:
            steps.append(Step(due, "page", chain[0]))
    steps.append(Step(due, "sla"))
    return sorted(steps, key=lambda s: (s.at, {"page": 0, "remind": 1, "sla": 2}[s.action]))


def plan_of(incident: Incident) -> tuple[Severity, datetime]:
    """Return what an incident's schedule is computed from: its severity and when that severity's clock started.

    A running escalation re-plans when this changes (a person's set-severity).
    """
    return incident.severity, incident.escalation_start


def step_key(step: Step, incident: Incident) -> tuple[str, ...]:
    """Return what makes a step done: a contact is paged once per incident, a reminder or an SLA once per plan."""
    if step.action == "page" and step.contact is not None:
        return ("page", step.contact.role)
    severity, start = plan_of(incident)
    return (step.action, severity.value, start.isoformat())


def pending_steps(incident: Incident, policy: Policy, done: set[tuple[str, ...]]) -> list[Step]:
    """Return the steps of the incident's current schedule not yet taken (`done`: the step_key of those taken).

    After a severity change this is the new severity's schedule counted from the change, less the contacts
    already paged: a P0 lowered to P2 after its first page has P2's reminder and SLA left, no lead and no CTO.
    """
    return [s for s in escalation_schedule(incident, policy) if step_key(s, incident) not in done]


def wait_limit(incident: Incident, policy: Policy) -> timedelta:
    """Return how long to wait for an acknowledgement in all: past the last step by one response time."""
    steps = escalation_schedule(incident, policy)
    return (steps[-1].at - incident.escalation_start) + policy.response_time(incident.severity)


# -- acknowledgements made in PagerDuty (webhooks push them, the REST API is polled for them) -------------------

PAGER_KEY = re.compile(r"^(inc-[0-9]{8}-[0-9a-f]{6})(?:-[a-z0-9-]+)?$")  # tasks.pagerduty.dedup_key's shapes
PERSON = "user_reference"  # PagerDuty's agent/acknowledger type of a user; a service or integration is automation


def incident_of_key(dedup_key: str | None) -> str | None:
    """Return our incident id a PagerDuty incident_key (a dedup key we sent) belongs to, or None."""
    match = PAGER_KEY.match(dedup_key or "")
    return match.group(1) if match else None


def page_roles(events: list[TimelineEvent]) -> dict[str, str]:
    """Return dedup key → role of every page the timeline says we sent (or tried to send)."""
    roles: dict[str, str] = {}
    for e in events:
        key = e.details.get("dedup_key")
        if key and (e.kind in {EventKind.PAGED, EventKind.ESCALATED} or e.details.get("page_pending")):
            roles.setdefault(str(key), str(e.details.get("role") or ""))
    return roles


def is_person(agent: dict[str, Any] | None) -> bool:
    """Say whether a PagerDuty agent is a user (not our integration, a service or an automation)."""
    return isinstance(agent, dict) and agent.get("type") == PERSON


async def record_pager_change(store: IncidentStore, incident: Incident, dedup_key: str, status: str,
                              agent: dict[str, Any] | None, *, at: datetime | None, details: dict[str, Any]
                              ) -> str:
    """Record what happened to one of our pages in PagerDuty; return what it meant.

    A person's acknowledgement (or resolve: a person responded) is THE acknowledgement of the incident when it is the
    first (via pagerduty, identity = the PagerDuty user id; the escalation stops at its next poll); a later one is a
    note. A resolve never resolves our incident (that waits for verification). A change made by our integration (our
    own acknowledge_pages / resolve_pages) is recorded as ours, never as a person.
    """
    roles = page_roles(await store.timeline(incident.id))
    role = roles.get(dedup_key) or "on-call"
    name = str((agent or {}).get("summary") or (agent or {}).get("name") or (agent or {}).get("id") or "PagerDuty")
    base = {"dedup_key": dedup_key, "pagerduty_status": status, "page_role": role, **details}
    if not is_person(agent):
        await store.append_event(incident.id, TimelineEvent(
            kind=EventKind.NOTE, actor="runbook", summary=f"PagerDuty: the {role} page is {status} "
            f"(by the integration: the runbook's own call, not a person)", details={**base, "ours": True}))
        return "ours"
    assert agent is not None
    person = {"pagerduty_user": agent.get("id"), "pagerduty_user_name": name,
              **({"email": agent["email"]} if agent.get("email") else {}),
              **({"pagerduty_user_url": agent["html_url"]} if agent.get("html_url") else {})}
    meaning = "noted"
    if status in ("acknowledged", "resolved") and incident.acknowledged_at is None:
        when = at if at is not None and incident.created_at <= at <= utcnow() else None
        _, newly = await store.acknowledge(incident.id, name, at=when, via="pagerduty",
                                           identity=str(agent.get("id") or "") or None,
                                           details={**base, **person})
        meaning = "acknowledged" if newly else "noted"
    if status == "resolved":
        summary = (f"Resolved in PagerDuty by {name} (the {role} page); the incident stays open until "
                   "verification passes")
    elif meaning == "acknowledged":
        return meaning
    else:
        summary = f"PagerDuty: {name} {status} the {role} page"
    await store.append_event(incident.id, TimelineEvent(kind=EventKind.NOTE, actor=name, summary=summary,
                                                        details={**base, **person}))
    return meaning
