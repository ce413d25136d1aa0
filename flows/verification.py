"""The runbook's "Verification" steps as one reusable flow: is the service restored for a scenario?

database       → Supabase REST count of profiles (the runbook's curl) + /api/health database check
authentication → POST /api/auth/profile answers (401 without a token = alive) + /api/health auth check
payment        → the billing webhook probe (unsigned 400, signed 2xx)
performance    → /api/health 200 within the runbook's response-time target (curl -w timing)
configuration  → /api/health (the runbook's "Verify configuration" curl)
Every verification also requires /api/health to answer 200. Remediations call this after acting; the response
flows call it before resolving ("resolved" only after a verification passed).
"""


import asyncio
from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, Field

from runbook.errors import IntegrationError
from runbook.models import INCIDENT_ID_PATTERN, EventKind
from runbook.policy import get_policy
from tasks.health import check_app_health, check_auth_endpoint, probe_health_timing
from tasks.incident import record
from tasks.stripe import probe_webhook
from tasks.supabase import check_rest_count

Scenario = Literal["database", "authentication", "payment", "performance", "configuration"]
HEALTHY = {"healthy", "ok", "up", "pass"}


class Verification(BaseModel):
    """The outcome of a verification: passed, and each check with its evidence."""

    scenario: str
    passed: bool
    checks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    attempts: int = 1

    def summary(self) -> str:
        """Return one line naming the failing checks, if any."""
        failing = [k for k, v in self.checks.items() if not v.get("ok")]
        return "all checks passed" if self.passed else f"failing: {', '.join(failing)}"


class VerifyParams(BaseModel):
    """Parameters of verify-service."""

    scenario: Scenario = Field("performance", description="Which runbook scenario's verification to run")
    incident_id: str | None = Field(None, pattern=INCIDENT_ID_PATTERN, description="Record on this incident")
    within_seconds: float = Field(60, ge=0, le=3600, description="Keep re-checking up to this long before failing")
    interval_seconds: float = Field(2, gt=0, le=300, description="Pause between attempts")


def _dependency_ok(body: dict[str, Any] | None, name: str) -> bool | None:
    checks = (body or {}).get("checks") or {}
    dep = checks.get(name)
    if not isinstance(dep, dict):
        return None
    return str(dep.get("status", "")).lower() in HEALTHY


async def _once(scenario: str) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}

    async def guard(name: str, coro: Any) -> Any:
        try:
            return await coro
        except IntegrationError as exc:
            checks[name] = {"ok": False, "error": str(exc)}
            return None

    health = await guard("app_health", check_app_health(None, purpose="verification"))
    if health is not None:
        # Strict: "degraded" (a dependency such as OpenAI down) is not restored service.
        checks["app_health"] = {"ok": health.ok, "status_code": health.status_code, "status": health.status,
                                "latency_ms": health.latency_ms}
    if scenario == "database":
        count = await guard("rest_count", check_rest_count(None))
        if count is not None:
            checks["rest_count"] = {"ok": True, "count": count.count}
        dep = _dependency_ok(health.body if health else None, "database")
        if dep is not None:
            checks["database_dependency"] = {"ok": dep}
    elif scenario == "authentication":
        auth = await guard("auth_endpoint", check_auth_endpoint())
        if auth is not None:
            checks["auth_endpoint"] = {"ok": auth.alive, "status_code": auth.status_code, "detail": auth.detail}
        dep = _dependency_ok(health.body if health else None, "auth")
        if dep is not None:
            checks["auth_dependency"] = {"ok": dep}
    elif scenario == "payment":
        probe = await guard("webhook_probe", probe_webhook())
        if probe is not None:
            checks["webhook_probe"] = {"ok": probe.ok, "unsigned_status": probe.unsigned_status,
                                       "signed_status": probe.signed_status, "detail": probe.detail}
    elif scenario == "performance":
        timing = await guard("response_time", probe_health_timing())
        if timing is not None:
            target = get_policy().key_metrics.response_time_s
            checks["response_time"] = {"ok": timing.ok and timing.total_s < target, "total_s": timing.total_s,
                                       "target_s": target, "first_byte_s": timing.first_byte_s}
    elif scenario == "configuration":
        dep = _dependency_ok(health.body if health else None, "config")
        if dep is not None:
            checks["config_dependency"] = {"ok": dep}
    return checks


@flow(name="verify-service", flow_run_name="verify {params.scenario} {params.incident_id}")
async def verify_service(params: VerifyParams) -> Verification:
    """Run the scenario's verification, re-checking within a bounded window; record the outcome."""
    attempts = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + params.within_seconds
    while True:
        attempts += 1
        checks = await _once(params.scenario)
        passed = bool(checks) and all(c.get("ok") for c in checks.values())
        if passed or loop.time() >= deadline:
            break
        await asyncio.sleep(params.interval_seconds)
    result = Verification(scenario=params.scenario, passed=passed, checks=checks, attempts=attempts)
    await record(params.incident_id, EventKind.VERIFICATION,
                 f"Verification ({params.scenario}) {'passed' if passed else 'FAILED'}: {result.summary()}",
                 {"passed": passed, "scenario": params.scenario, "checks": checks, "attempts": attempts})
    return result
