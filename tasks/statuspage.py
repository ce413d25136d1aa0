"""Statuspage tasks: the public incident follows investigating → identified → monitoring → resolved."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.statuspage import StatuspageClient
from runbook.models import EventKind, Incident, Severity, Status, last_reopen
from runbook.store import open_store
from tasks.common import open_client
from tasks.incident import record

IMPACT = {Severity.P0: "critical", Severity.P1: "major", Severity.P2: "minor", Severity.P3: "none"}
COMPONENT_STATUS = {Severity.P0: "major_outage", Severity.P1: "partial_outage",
                    Severity.P2: "degraded_performance", Severity.P3: "degraded_performance"}
# The runbook's scenarios → the status page's logical components (settings.statuspage_components maps them to ids).
SCENARIO_COMPONENTS = {"database": ["database", "app"], "authentication": ["auth"], "payment": ["payments"],
                       "performance": ["app"], None: ["app"]}


def affected_components(incident: Incident, configured: list[str]) -> list[str]:
    """Return the logical components an incident affects, among those configured."""
    wanted = incident.labels.get("components")
    names = wanted.split(",") if wanted else SCENARIO_COMPONENTS.get(incident.scenario, ["app"])
    return [n for n in names if n in configured]


def _reopened_at(events: list[Any]) -> datetime | None:
    """Return when the incident was last reopened (moved from resolved back to an open status), if ever."""
    return last_reopen(events)


@task(name="post_status_update", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def post_status_update(incident_id: str, status: Status, body: str, *,
                             since: datetime | None = None) -> dict[str, Any]:
    """Create or update the public incident at `status`, with impact and component statuses; once per status.

    Once counts from the incident's last reopen (a reopened incident is announced again) and from `since` when
    given (a severity change posts the status again, with the new severity's impact). A failed post is not one.
    """
    async with open_store() as store:
        incident = await store.get(incident_id)
        events = await store.timeline(incident_id)
    epoch = max((t for t in (since, _reopened_at(events)) if t is not None), default=None)
    done = [e for e in events if e.kind == EventKind.STATUS_PAGE and e.details.get("status") == status.value
            and e.details.get("sent", True) and (epoch is None or e.at >= epoch)]
    if done and incident.statuspage_incident_id:
        return {"sent": False, "statuspage_incident_id": incident.statuspage_incident_id, "reason": "already posted"}
    impact = IMPACT[incident.severity]
    async with open_client(StatuspageClient) as sp:
        configured = list(sp.components)
        names = affected_components(incident, configured)
        comp_status = "operational" if status is Status.RESOLVED else COMPONENT_STATUS[incident.severity]
        components: dict[str, Any] = {n: comp_status for n in names}
        if incident.statuspage_incident_id is None:
            created = await sp.create_incident(
                incident.title, status=status.value, body=body,  # type: ignore[arg-type]
                impact_override=impact, components=components,  # type: ignore[arg-type]
            )
            sp_id = created.id
            async with open_store() as store:
                await store.update(incident_id, statuspage_incident_id=sp_id)
        else:
            sp_id = incident.statuspage_incident_id
            await sp.update_incident(sp_id, status=status.value, body=body,  # type: ignore[arg-type]
                                     impact_override=impact, components=components)  # type: ignore[arg-type]
    await record(incident_id, EventKind.STATUS_PAGE, f"Status page: {status.value} — {body}",
                 {"status": status.value, "statuspage_incident_id": sp_id, "components": components,
                  "impact": impact}, actor="statuspage")
    return {"sent": True, "statuspage_incident_id": sp_id, "components": components, "impact": impact}


# -- reads and repairs for reconcile (flows/reconcile.py) ---------------------------------------------------------


@task(name="read_status_page", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_status_page() -> dict[str, Any]:
    """Return what Statuspage shows: its unresolved incidents and each component's status (logical name or id)."""
    async with open_client(StatuspageClient) as sp:
        unresolved = await sp.list_unresolved_incidents()
        components = await sp.list_components()
        names = {cid: name for name, cid in sp.components.items()}
    return {"unresolved": unresolved, "components": {names.get(c.id, c.id): c.status for c in components},
            "names": names}


@task(name="restore_component", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def restore_component(component: str, incident_id: str | None, why: str) -> None:
    """Set a status-page component back to operational; recorded on the incident's timeline when one is named."""
    async with open_client(StatuspageClient) as sp:
        await sp.set_component_status(component, "operational")
    await record(incident_id, EventKind.STATUS_PAGE, f"Status page: component {component} operational — {why}",
                 {"component": component, "component_status": "operational"}, actor="statuspage")
