"""Diagnose an incident: run the named scenario's diagnostic, or, without a hint, run them most-likely first
(ordered by the checks /api/health reports failing) and return the first that identified a cause.

The five scenario diagnostics are flows/diagnose_<scenario>.py; what they share is flows/_diagnosis.py.
"""

from typing import Annotated, Literal, get_args

from prefect import flow, get_run_logger
from pydantic import BeforeValidator, Field

from flows._diagnosis import HEALTHY, INCIDENT_ID_DESCRIPTION, health_checks
from flows.diagnose_authentication import DiagnoseAuthenticationParams, diagnose_authentication
from flows.diagnose_configuration import DiagnoseConfigurationParams, diagnose_configuration
from flows.diagnose_database import DiagnoseDatabaseParams, diagnose_database
from flows.diagnose_payment import DiagnosePaymentParams, diagnose_payment
from flows.diagnose_performance import DiagnosePerformanceParams, diagnose_performance
from runbook.clients.types import AppHealth
from runbook.errors import IntegrationError
from runbook.models import Diagnosis, Evidence, IncidentId
from tasks.health import check_app_health

Scenario = Literal["database", "authentication", "payment", "performance", "configuration"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)

# Which scenario explains a failing /api/health check. A merely slow (degraded) database is a performance incident;
# a failing one is a database incident. "app" is the drill's broken-build check; OpenAI is a third party.
UNHEALTHY_CHECK_SCENARIO = {"app": "performance", "database": "database", "auth": "authentication",
                            "config": "configuration", "openai": "performance"}
DEGRADED_CHECK_SCENARIO = {"app": "performance", "database": "performance", "auth": "authentication",
                           "config": "configuration", "openai": "performance"}
# Without a failing check: the cheap, specific checks first, performance (the broadest) last.
DEFAULT_ORDER = ("database", "authentication", "configuration", "payment", "performance")


def order_scenarios(health: AppHealth | None) -> list[str]:
    """Return the scenarios, most likely first: unhealthy checks, then degraded ones, then the default order."""
    order: list[str] = []
    checks = health_checks(health)
    if health is None or (health.status_code >= 500 and not checks):
        order.append("performance")  # the app itself is down or failing without saying why
    for wanted, mapping in ((False, UNHEALTHY_CHECK_SCENARIO), (True, DEGRADED_CHECK_SCENARIO)):
        for name, check in checks.items():
            status = str(check.get("status", "")).lower()
            if status in HEALTHY or (status == "degraded") != wanted:
                continue
            scenario = mapping.get(name)
            if scenario and scenario not in order:
                order.append(scenario)
    return order + [s for s in DEFAULT_ORDER if s not in order]


async def run_diagnostic(scenario: str, incident_id: str | None) -> Diagnosis:
    """Run one scenario's diagnostic flow (as a subflow when called from a flow)."""
    if scenario == "database":
        return await diagnose_database(DiagnoseDatabaseParams(incident_id=incident_id))
    if scenario == "authentication":
        return await diagnose_authentication(DiagnoseAuthenticationParams(incident_id=incident_id))
    if scenario == "payment":
        return await diagnose_payment(DiagnosePaymentParams(incident_id=incident_id))
    if scenario == "performance":
        return await diagnose_performance(DiagnosePerformanceParams(incident_id=incident_id))
    if scenario == "configuration":
        return await diagnose_configuration(DiagnoseConfigurationParams(incident_id=incident_id))
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def _dispatch_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    hint = params.get("scenario")
    return f"diagnose {'any' if hint in (None, 'auto') else hint} {params.get('incident_id') or 'ad hoc'}"


@flow(name="diagnose", flow_run_name=_dispatch_run_name)
async def diagnose(
    scenario: Annotated[Literal["auto", Scenario], BeforeValidator(lambda v: "auto" if v is None else v)] = Field(
        "auto", title="Scenario", description="Runbook scenario; auto: try each, most likely first"),
    incident_id: IncidentId | None = Field(None, description=INCIDENT_ID_DESCRIPTION),
) -> Diagnosis:
    """Run the scenario's diagnostic, or each in turn (failing health checks first) until one finds a cause."""
    if scenario != "auto":
        return await run_diagnostic(scenario, incident_id)
    try:
        health: AppHealth | None = await check_app_health(None, purpose="diagnosis order")
    except (IntegrationError, TimeoutError):
        health = None
    order = order_scenarios(health)
    get_run_logger().info("no scenario hint: diagnosing in the order %s", ", ".join(order))
    ran: list[Diagnosis] = []
    for name in order:
        result = await run_diagnostic(name, incident_id)
        if result.found:
            return result
        ran.append(result)
    return Diagnosis(
        scenario="undetermined",
        found=False,
        finding="No scenario diagnostic identified a cause (" + "; ".join(f"{d.scenario}: {d.finding}"
                                                                          for d in ran) + ")",
        evidence=[Evidence(check=f"diagnose-{d.scenario}", ok=True, value="no cause found", detail=d.finding)
                  for d in ran],
    )
