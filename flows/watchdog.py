"""The dead man's switch (issue 19): page on-call when the monitor has not completed a cycle for a while.

The path does not depend on the monitor: each completed monitor cycle emits `runbook.monitor.cycle.completed`
(resource `runbook.monitor.heartbeat.<environment>`) and records its time in the monitor store; a Prefect
automation with a proactive trigger expects that event within `monitoring.heartbeat_minutes` (prefect.yaml's
`triggers` of the `watchdog` deployment, created by `prefect deploy`; `ensure_watchdog_automation` creates the same
through the API for a served `runbook up`). When the events stop (worker down, schedule paused, every run failing),
the Prefect server fires the automation, which runs this flow: it reads the last completed cycle from the store and,
when that is older than the window (or never happened), pages on-call through tasks/ about a P2
`guard:monitor_heartbeat:<environment>` incident, once while that incident is open however often the automation
fires. The monitor's next completed cycle resolves that incident.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows._guard import page_oncall_about
from runbook.models import utcnow
from runbook.monitoring import open_monitor_store
from runbook.policy import get_policy
from runbook.settings import get_settings

HEARTBEAT_EVENT = "runbook.monitor.cycle.completed"
HEARTBEAT_RESOURCE = "runbook.monitor.heartbeat"
GUARD = "monitor_heartbeat"
DEPLOYMENT = "watchdog"
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def heartbeat_resource(environment: str) -> str:
    """Return the resource id of an environment's monitor heartbeat events."""
    return f"{HEARTBEAT_RESOURCE}.{environment}"


class WatchdogParams(BaseModel):
    """Parameters of the watchdog (its automation passes them)."""

    heartbeat_minutes: float | None = Field(
        None, gt=0, le=24 * 60,
        description="Page when the monitor's last completed cycle is older than this; default: the policy's "
                    "monitoring.heartbeat_minutes")
    reason: str = Field("the monitor's heartbeat stopped", max_length=500, description="Why the watchdog runs")


class WatchdogOutcome(BaseModel):
    """What the watchdog found and did."""

    status: Literal["monitor_alive", "paged", "already_paged"]
    last_cycle_at: datetime | None = None
    incident_id: str | None = None
    summary: str = ""


@flow(name="watchdog", flow_run_name=lambda: f"watchdog {get_settings().environment}")
async def watchdog(params: WatchdogParams = WatchdogParams()) -> WatchdogOutcome:
    """Page on-call once when the monitor has not completed a cycle within the heartbeat window."""
    environment = get_settings().environment
    minutes = params.heartbeat_minutes or get_policy().monitoring.heartbeat_minutes
    async with open_monitor_store() as mstore:
        last = await mstore.last_beat(environment)
    now = utcnow()
    log = get_run_logger()
    if last is not None and now - last < timedelta(minutes=minutes):
        summary = f"the monitor completed a cycle at {last:%H:%M:%S}Z, within {minutes:g} min: nothing to do"
        log.info(summary)
        return WatchdogOutcome(status="monitor_alive", last_cycle_at=last, summary=summary)
    since = f"since {last:%Y-%m-%d %H:%M:%S}Z" if last is not None else "ever (no completed cycle recorded)"
    title = f"The monitor has not completed a cycle for {minutes:g} min in {environment}"
    detail = (f"no monitor cycle completed {since}; nothing watches the stack meanwhile. Check the monitor "
              "deployment (paused schedule?), its worker and its latest runs in the Prefect UI")
    incident, sent = await page_oncall_about(GUARD, title, detail, actor="watchdog")
    log.error("%s: %s (%s)", title, detail, incident.id)
    return WatchdogOutcome(status="paged" if sent else "already_paged", last_cycle_at=last, incident_id=incident.id,
                           summary=f"{title}: {detail}")


def watchdog_trigger(*, within: timedelta | None = None, path: Path = PREFECT_YAML) -> dict[str, Any]:
    """Return the watchdog deployment's proactive trigger from prefect.yaml (its `within` replaced if given)."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    [spec] = [d for d in raw.get("deployments", []) if d.get("name") == DEPLOYMENT]
    [trigger] = spec["triggers"]
    trigger = dict(trigger)
    if within is not None:
        trigger["within"] = within.total_seconds()
        trigger["parameters"] = {"params": {**trigger.get("parameters", {}).get("params", {}),
                                            "heartbeat_minutes": within.total_seconds() / 60}}
    return trigger


async def ensure_watchdog_automation(deployment_id: UUID, *, within: timedelta | None = None,
                                     path: Path = PREFECT_YAML) -> UUID:
    """Create (or replace) the watchdog's automation on the Prefect server for the given watchdog deployment.

    `prefect deploy` creates it from prefect.yaml's `triggers`; a served deployment (runbook up) has none, so the
    serving code calls this once the deployments are registered. Returns the automation's id.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    trigger = DeploymentEventTrigger(**watchdog_trigger(within=within, path=path))
    trigger.set_deployment_id(deployment_id)
    # Not owned by the deployment: re-applying a served deployment deletes the automations it owns.
    automation = trigger.as_automation().model_copy(update={"owner_resource": None})
    async with get_client() as client:
        for old in await client.read_automations_by_name(automation.name):
            await client.delete_automation(old.id)
        return await client.create_automation(automation)
