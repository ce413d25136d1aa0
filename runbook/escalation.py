"""The escalation schedule of an incident, from the policy: who is paged or reminded when, until acknowledged.

P0: on-call at once, engineering lead at 15 min, CTO at 30 min (the runbook's table). P1 uses the same chain
stretched to its 30-minute response time. P2/P3 page nobody at once: a reminder in #incidents at a fraction of the
response time, then the on-call engineer is paged when the response time runs out. Every schedule ends with the
response-time deadline, when a missing acknowledgement is recorded as a missed SLA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from runbook.models import Incident, Severity
from runbook.policy import Contact, Policy


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


def wait_limit(incident: Incident, policy: Policy) -> timedelta:
    """Return how long to wait for an acknowledgement in all: past the last step by one response time."""
    steps = escalation_schedule(incident, policy)
    return (steps[-1].at - incident.escalation_start) + policy.response_time(incident.severity)
