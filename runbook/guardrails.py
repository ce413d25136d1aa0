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

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from runbook.errors import InputError
from runbook.policy import Guardrails

if TYPE_CHECKING:
    from runbook.store import IncidentStore

EVERY_ENVIRONMENT = "*"
WINDOW = timedelta(hours=1)
ENVIRONMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


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


def _checked(environment: str | None, by: str, reason: str | None = None) -> tuple[str, str, str]:
    """Return (environment, by, reason) stripped; InputError names what is wrong before anything changes."""
    env = (environment or EVERY_ENVIRONMENT).strip()
    if env != EVERY_ENVIRONMENT and not re.fullmatch(ENVIRONMENT_PATTERN, env):
        raise InputError(f"{environment!r} is not an environment name (letters, digits, . _ -), or '*' for every one")
    who = by.strip()
    if not 1 <= len(who) <= 100:
        raise InputError("--by must name who does it (1-100 characters)")
    why = (reason or "").strip()
    if reason is not None and not 1 <= len(why) <= 500:
        raise InputError("--reason must say why (1-500 characters)")
    return env, who, why


async def freeze(store: IncidentStore, environment: str | None, *, reason: str, by: str) -> tuple[dict[str, Any], bool]:
    """Freeze remediations (None: every environment, drills included); return (the freeze in force, created)."""
    env, who, why = _checked(environment, by, reason)
    return await store.freeze(env, reason=why, by=who)


async def unfreeze(store: IncidentStore, environment: str | None, *, by: str) -> list[dict[str, Any]]:
    """Lift the freeze of an environment (None: every freeze in force); return the freezes lifted."""
    env, who, _ = _checked(environment, by)
    return await store.unfreeze(None if environment is None else env, by=who)


def freeze_report(created: bool, held: Mapping[str, Any]) -> str:
    """Return what a freeze command tells people."""
    return ("remediations " if created else "already: remediations ") + freeze_line(held) + \
        " — every remediation stops after its plan; monitoring, paging and communication go on"


def unfreeze_report(lifted: list[dict[str, Any]], environment: str | None) -> str:
    """Return what an unfreeze command tells people."""
    if not lifted:
        return f"nothing to lift: {freeze_scope(environment or EVERY_ENVIRONMENT)} is not frozen"
    return "lifted: " + "; ".join(freeze_line(f) for f in lifted)
