"""Incident-record tasks: declare, append to the timeline, change status, acknowledge."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from runbook.models import Alert, Incident, Status, TimelineEvent
from runbook.store import Admitted, open_store
from tasks.common import flow_run_id


async def record(
    incident_id: str | None,
    kind: str,
    summary: str,
    details: dict[str, Any] | None = None,
    actor: str = "runbook",
) -> TimelineEvent | None:
    """Append one event to the incident's timeline with the current flow-run id (nothing without an incident).

    Inside a run the event's summary also goes to that run's log at INFO, so the run page in the Prefect UI tells
    what the run did (backup, each down script, each check) and not only the incident timeline.
    """
    if not incident_id:
        return None
    async with open_store() as store:
        event = await store.append_event(
            incident_id,
            TimelineEvent(kind=kind, actor=actor, summary=summary, details=details or {}, flow_run_id=flow_run_id()),
        )
    _log_in_run(f"[{incident_id}] {kind}: {summary}")
    return event


async def record_once(
    incident_id: str | None,
    kind: str,
    summary: str,
    details: dict[str, Any] | None = None,
    actor: str = "runbook",
    same: tuple[str, ...] = (),
) -> TimelineEvent | None:
    """Like record(), but not again in the same flow run (a suspended run re-runs from the top when resumed).

    An earlier event of the kind from this flow run whose details agree on the `same` keys counts as this one.
    """
    if not incident_id:
        return None
    run_id = flow_run_id()
    if run_id:
        async with open_store() as store:
            earlier = [e for e in await store.timeline(incident_id, kind=kind) if e.flow_run_id == run_id
                       and all(e.details.get(k) == (details or {}).get(k) for k in same)]
        if earlier:
            return earlier[0]
    return await record(incident_id, kind, summary, details, actor)


def _log_in_run(line: str) -> None:
    try:
        logger = get_run_logger()
    except MissingContextError:  # a plain call outside any flow or task run: the timeline is the record
        return
    logger.info(line)


async def read_incident(incident_id: str) -> Incident:
    """Return the current incident record (plain function: flows poll it without a task run each time)."""
    async with open_store() as store:
        return await store.get(incident_id)


@task(name="record_event", retries=0, cache_policy=NO_CACHE)
async def record_event(
    incident_id: str, kind: str, summary: str, details: dict[str, Any] | None = None, actor: str = "runbook"
) -> None:
    """Append an event to the incident timeline."""
    await record(incident_id, kind, summary, details, actor)


@task(name="declare_incident_record", retries=0, cache_policy=NO_CACHE)
async def declare_record(incident: Incident, alert: Alert | None, actor: str) -> tuple[Incident, bool]:
    """Create the incident record, or attach the alert to the open incident with its fingerprint."""
    async with open_store() as store:
        return await store.declare(incident, alert, actor=actor, flow_run_id=flow_run_id())


@task(name="admit_incident_record", retries=0, cache_policy=NO_CACHE)
async def admit_record(incident: Incident, alert: Alert | None, actor: str) -> Admitted:
    """Record an alert's incident: create it, attach the alert to the open one with its fingerprint, or reopen the
    one resolved within the reopen window (`IncidentStore.admit`)."""
    async with open_store() as store:
        return await store.admit(incident, alert, actor=actor, flow_run_id=flow_run_id())


@task(name="store_invalid_alert", retries=0, cache_policy=NO_CACHE)
async def store_invalid_alert(raw: dict[str, Any], error: str) -> int:
    """Keep an alert that failed validation, with the reason."""
    async with open_store() as store:
        return await store.store_raw_alert(raw, error=error)


@task(name="get_incident", retries=0, cache_policy=NO_CACHE)
async def get_incident(incident_id: str) -> Incident:
    """Read the incident record."""
    return await read_incident(incident_id)


@task(name="transition_status", retries=0, cache_policy=NO_CACHE)
async def transition_status(
    incident_id: str, status: Status, summary: str = "", actor: str = "runbook",
    details: dict[str, Any] | None = None,
) -> Incident:
    """Move the incident along the lifecycle (recorded on the timeline)."""
    async with open_store() as store:
        return await store.transition(
            incident_id, status, actor=actor, summary=summary, details=details, flow_run_id=flow_run_id()
        )


@task(name="acknowledge_incident", retries=0, cache_policy=NO_CACHE)
async def acknowledge_incident(incident_id: str, by: str) -> tuple[Incident, bool]:
    """Record who acknowledged the incident (first acknowledgement wins)."""
    async with open_store() as store:
        return await store.acknowledge(incident_id, by, flow_run_id=flow_run_id())


@task(name="update_incident", retries=0, cache_policy=NO_CACHE)
async def update_incident(incident_id: str, **fields: Any) -> Incident:
    """Set fields of the incident record."""
    async with open_store() as store:
        return await store.update(incident_id, **fields)
