"""Guardrails on the automation that acts on production (issue 19): the circuit breaker and the freeze.

Circuit breaker: at most `guardrails.max_remediations_per_hour` applied remediations per environment in any hour,
and at most `guardrails.max_same_action_per_incident` applied runs of the same action on the same target per
incident. The count is the store's `remediation_applications` (one row per applied remediation, on the runbook
clock), so it holds across workers and restarts; `breaker_refusal` says why the next one is refused, or None.

Freeze (kill switch): a freeze kept in the store (`freezes`) for one environment or every one ("*", drills
included); while it holds every remediation stops after its plan, as a dry run. Monitoring, paging and
communication go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from runbook.policy import Guardrails

EVERY_ENVIRONMENT = "*"
WINDOW = timedelta(hours=1)


def breaker_refusal(*, environment: str, action: str, target: str, incident_id: str | None,
                    last_hour: Iterable[Mapping[str, Any]], of_incident: Iterable[Mapping[str, Any]],
                    now: datetime, limits: Guardrails) -> str | None:
    """Return the circuit breaker's reason to refuse the next remediation, or None when it may go on.

    `last_hour`: the environment's applied remediations since now - 1 h; `of_incident`: the incident's.
    """
    recent = sorted((a for a in last_hour if a["at"] > now - WINDOW), key=lambda a: a["at"])
    if len(recent) >= limits.max_remediations_per_hour:
        listing = ", ".join(f"{a['action']} {a['at']:%H:%M}" for a in recent[-5:])
        reopens = recent[-limits.max_remediations_per_hour]["at"] + WINDOW if recent else now
        return (f"circuit breaker open: {len(recent)} remediation(s) applied in {environment} in the last hour "
                f"(limit {limits.max_remediations_per_hour}: {listing}); no more before {reopens:%H:%M} UTC "
                "unless the policy's guardrails are raised")
    if incident_id:
        same = [a for a in of_incident if a["action"] == action and a["target"] == target]
        if len(same) >= limits.max_same_action_per_incident:
            runs = ", ".join(str(a.get("flow_run_id") or "?") for a in same)
            return (f"circuit breaker open: {action} on {target} was already applied {len(same)} time(s) for "
                    f"{incident_id} (run {runs}; limit {limits.max_same_action_per_incident} per incident); "
                    "a person must look before it runs again")
    return None


def freeze_scope(environment: str) -> str:
    """Return how people read a freeze's environment ('every environment' for '*')."""
    return "every environment" if environment == EVERY_ENVIRONMENT else environment


def freeze_line(freeze: Mapping[str, Any]) -> str:
    """Return one line for people: 'frozen (every environment) by ana at 03:12 UTC: deploy freeze'."""
    return (f"frozen ({freeze_scope(str(freeze['environment']))}) by {freeze['by']} at "
            f"{freeze['at']:%Y-%m-%d %H:%M} UTC: {freeze['reason']}")
