"""Maintenance mode on/off (the runbook's P1 workaround) through the `maintenance_mode` app flag.

Plan: the flag now → the requested value (already there is a named success). After approval the flag is set in
one short transaction, and the verification asks the app: /api/health must report the new `maintenance` value.
"""

from typing import Any

from prefect import flow
from pydantic import Field

from flows._remediation import (
    Checked,
    Plan,
    Remediation,
    RemediationParams,
    RemediationResult,
    run_name,
    run_remediation,
    verify_scenario,
)
from runbook.errors import IntegrationError, UnsafeOperation
from runbook.models import Approval
from runbook.settings import get_settings
from tasks.health import check_app_health
from tasks.supabase import read_app_flag, set_app_flag

ACTION = "maintenance-mode"
FLAG = "maintenance_mode"


class MaintenanceModeParams(RemediationParams):
    """Turn maintenance mode on or off (a form in the Prefect UI)."""

    enabled: bool = Field(..., description="On: every route but /api/health answers 503 (maintenance page); "
                                           "off: normal service")


async def plan_maintenance(params: MaintenanceModeParams) -> Plan:
    """Compare the flag with the requested value."""
    environment = get_settings().environment
    now = await read_app_flag(FLAG)
    if now is None:
        raise UnsafeOperation(f"the app has no {FLAG} flag in public.app_flags")
    word = "on" if params.enabled else "off"
    state = {"flag": FLAG, "now": now, "want": params.enabled}
    if now == params.enabled:
        return Plan(action=ACTION, environment=environment, noop=True, state=state,
                    summary=f"maintenance mode is already {word}")
    steps = [f"Set public.app_flags.{FLAG} = {str(params.enabled).lower()}",
             f"Verify the app reports maintenance={str(params.enabled).lower()} on /api/health"]
    warnings = ["Users see the maintenance page on every route until it is turned off"] if params.enabled else []
    return Plan(action=ACTION, environment=environment, state=state, steps=steps, warnings=warnings,
                summary=f"turn maintenance mode {word}", target=f"{FLAG}={word}")


@flow(name=ACTION, flow_run_name=run_name(ACTION))
async def maintenance_mode(params: MaintenanceModeParams) -> RemediationResult:
    """Turn maintenance mode on or off: plan, approve, set the flag, verify the app reports it."""

    async def plan() -> Plan:
        return await plan_maintenance(params)

    async def act(plan: Plan, approval: Approval) -> dict[str, Any]:
        before = await set_app_flag(FLAG, params.enabled)
        return {"flag": FLAG, "before": before, "after": params.enabled}

    async def verify(plan: Plan, applied: dict[str, Any]) -> Checked:
        try:
            health = await check_app_health(params.incident_id, purpose="maintenance-mode verification")
            reported = (health.body or {}).get("maintenance")
        except IntegrationError as exc:
            reported = f"error: {exc}"
        extra = {"app_reports_maintenance": {"ok": reported is params.enabled, "reported": reported,
                                             "want": params.enabled}}
        return await verify_scenario("configuration", params.incident_id, params.verify_within_seconds, extra)

    return await run_remediation(Remediation(ACTION, plan, act, verify), params)
