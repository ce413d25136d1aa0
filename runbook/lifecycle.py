"""A person steering an incident by hand: resolve, set the status or severity, link or merge duplicates, note.

The plain rules behind `runbook resolve|set-status|set-severity|link|merge|note` and the deployments of
flows/lifecycle.py (the same controls as forms). Each change is one timeline event naming who (`by`) and where
(`via`: cli, prefect-ui, api); what a change sets in motion outside the record (status page, Slack, pages, the new
severity's escalation) is the flows' part.

A hand resolution is refused while a remediation of the incident is in flight: its run holds the environment's
remediation lock from before the plan until after verification, suspensions for approval included (the lock's
holder names the incident). Reject or finish the remediation first.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from runbook.errors import InputError, InvalidTransition
from runbook.models import INCIDENT_ID_PATTERN, Channel, EventKind, Incident, Severity, Status, TimelineEvent
from runbook.store import IncidentStore, holder_run_ended

INCIDENT_ID = re.compile(INCIDENT_ID_PATTERN.removeprefix("^").removesuffix("$"))

REMEDIATION_LOCKS = "remediation:"  # flows/_remediation.py names the environment's lock remediation:<environment>


def _who(by: str) -> str:
    if not by or not by.strip():
        raise InputError("say who makes the change (--by NAME / the form's 'by')")
    return by.strip()


async def remediation_in_flight(store: IncidentStore, incident_id: str) -> str | None:
    """Return the holder of a remediation lock taken for this incident, if one is held now."""
    for lock in await store.active_locks(REMEDIATION_LOCKS):
        if incident_id in str(lock["holder"]).split():
            return f"{lock['holder']} (since {lock['acquired_at']:%H:%M:%S}Z)"
    return None


async def unlock(store: IncidentStore, environment: str, *, by: str, reason: str, force: bool = False,
                 holder_gone: Callable[[str], Awaitable[bool]] = holder_run_ended) -> dict[str, Any]:
    """Release an environment's remediation lock by hand; return the lock that was released.

    Refused without a reason, when nothing holds it, and — unless `force` — while its holder's Prefect run is not
    known to have ended (it may still be acting: two remediations at once is what the lock prevents). The release
    is recorded on the holder's incident, with who and why.
    """
    who = _who(by)
    if not reason.strip():
        raise InputError("say why the lock is released (--reason)")
    name = f"{REMEDIATION_LOCKS}{environment}"
    held = [lock for lock in await store.active_locks(name) if lock["name"] == name]
    if not held:
        raise InputError(f"no remediation lock is held for {environment!r}")
    lock = held[0]
    ended = await holder_gone(str(lock["holder"]))
    if not ended and not force:
        raise InputError(f"{name} is held by {lock['holder']} since {lock['acquired_at']:%H:%M:%S}Z, whose run is "
                         "not known to have ended (it may still be acting); wait, cancel that run, or --force")
    await store.break_lock(name, str(lock["holder"]))
    incident_id = next((w for w in str(lock["holder"]).split() if INCIDENT_ID.fullmatch(w)), None)
    if incident_id:
        await store.append_event(incident_id, TimelineEvent(
            kind=EventKind.NOTE, actor=who,
            summary=f"Remediation lock {name} released by {who} (held by {lock['holder']}"
                    f"{'; its run had ended' if ended else '; forced, its run not known to have ended'}): "
                    f"{reason.strip()}",
            details={"lock": name, "holder": lock["holder"], "released_by": who, "forced": not ended}))
    return lock


async def resolve(store: IncidentStore, incident_id: str, *, reason: str, by: str, via: Channel = "cli",
                  flow_run_id: str | None = None) -> tuple[Incident, bool]:
    """Resolve by hand with a reason; refused while a remediation is in flight; return (incident, changed)."""
    who = _who(by)
    if not reason or not reason.strip():
        raise InputError("a resolution needs a reason (what restored the service, or why it is not an incident)")
    current = await store.get(incident_id)
    if current.status is Status.RESOLVED:
        return current, False
    holder = await remediation_in_flight(store, incident_id)
    if holder:
        raise InvalidTransition(f"{incident_id}: a remediation is in flight ({holder}); approve or reject it and "
                                "let it finish before resolving by hand")
    changed = await store.transition(incident_id, Status.RESOLVED, actor=who, flow_run_id=flow_run_id,
                                     summary=f"Resolved by {who} via {via}: {reason.strip()}",
                                     details={"by_hand": True, "via": via, "reason": reason.strip()})
    return changed, True


async def set_status(store: IncidentStore, incident_id: str, status: Status | str, *, by: str, reason: str = "",
                     via: Channel = "cli", flow_run_id: str | None = None) -> tuple[Incident, bool]:
    """Move the incident to a status by hand (resolved goes through resolve(): reason, no remediation in flight)."""
    status = Status(status)
    if status is Status.RESOLVED:
        return await resolve(store, incident_id, reason=reason, by=by, via=via, flow_run_id=flow_run_id)
    who = _who(by)
    current = await store.get(incident_id)
    if current.status is status:
        return current, False
    why = f": {reason.strip()}" if reason.strip() else ""
    changed = await store.transition(incident_id, status, actor=who, flow_run_id=flow_run_id,
                                     summary=f"Status {current.status} → {status} by {who} via {via}{why}",
                                     details={"by_hand": True, "via": via, "reason": reason.strip()})
    return changed, True


async def set_severity(store: IncidentStore, incident_id: str, severity: Severity | str, *, by: str,
                       reason: str = "", via: Channel = "cli", flow_run_id: str | None = None
                       ) -> tuple[Incident, bool]:
    """Change the severity by hand; return (incident, changed). The new severity's escalation counts from now."""
    who = _who(by)
    severity = Severity(severity)
    current = await store.get(incident_id)
    if not current.status.is_open and current.severity is not severity:
        raise InvalidTransition(f"{incident_id} is resolved; reopen it (set-status investigating) to change severity")
    direction = "raised" if severity.rank < current.severity.rank else "lowered"
    why = f": {reason.strip()}" if reason.strip() else ""
    return await store.set_severity(
        incident_id, severity, actor=who, flow_run_id=flow_run_id,
        summary=f"Severity {direction} {current.severity} → {severity} ({severity.label}) by {who} via {via}{why}",
        details={"via": via, "reason": reason.strip(), "direction": direction})


async def link(store: IncidentStore, incident_id: str, other_id: str, *, by: str, via: Channel = "cli",
               flow_run_id: str | None = None) -> tuple[Incident, Incident, bool]:
    """Relate two incidents (each timeline says so)."""
    return await store.link(incident_id, other_id, actor=_who(by), details={"via": via}, flow_run_id=flow_run_id)


async def merge(store: IncidentStore, survivor_id: str, duplicate_id: str, *, by: str, reason: str = "",
                via: Channel = "cli", flow_run_id: str | None = None) -> tuple[Incident, Incident, bool]:
    """Merge a duplicate into the survivor: one record with both timelines; the duplicate closes pointing at it."""
    holder = await remediation_in_flight(store, duplicate_id)
    if holder:
        raise InvalidTransition(f"{duplicate_id}: a remediation is in flight ({holder}); merge it after it finishes")
    return await store.merge(survivor_id, duplicate_id, actor=_who(by), reason=reason.strip(),
                             details={"via": via}, flow_run_id=flow_run_id)


async def note(store: IncidentStore, incident_id: str, text: str, *, by: str, via: Channel = "cli",
               flow_run_id: str | None = None) -> TimelineEvent:
    """Add a person's note to the timeline."""
    who = _who(by)
    if not text or not text.strip():
        raise InputError("a note needs text")
    return await store.append_event(incident_id, TimelineEvent(kind=EventKind.NOTE, actor=who, summary=text.strip(),
                                                               details={"via": via}, flow_run_id=flow_run_id))


def describe(incident: Incident) -> str:
    """Return one line about the incident's state after a change."""
    extra: list[Any] = []
    if incident.merged_into:
        extra.append(f"merged into {incident.merged_into}")
    if incident.links:
        extra.append(f"linked: {', '.join(incident.links)}")
    tail = f" ({'; '.join(str(x) for x in extra)})" if extra else ""
    return f"{incident.id}  {incident.severity}  {incident.status}  {incident.title}{tail}"
