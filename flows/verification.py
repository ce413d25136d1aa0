"""The runbook's "Verification" steps as one reusable flow: is the service restored for a scenario?

database       → Supabase REST count of profiles (the runbook's curl) + /api/health database check
authentication → POST /api/auth/profile answers (401 without a token = alive) + /api/health auth check
payment        → the billing webhook probe (unsigned 400, signed 2xx)
performance    → /api/health 200 within the runbook's response-time target (curl -w timing)
configuration  → /api/health (the runbook's "Verify configuration" curl)
Every verification also requires /api/health to answer 200. Remediations call this after acting; the response
flows call it before resolving ("resolved" only after a verification passed).

A check that did not finish within its task timeout is *inconclusive*, not a measured failure: the client's own
timeouts (shorter) are what says the service is slow; a task timeout means our side (a busy machine, a slow
worker) did not get the answer in time. Inconclusive checks are re-run within the window like failing ones, never
pass a verification, and are named as such in the record.
"""


import asyncio
from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, Field

from runbook.errors import IntegrationError
from runbook.models import EventKind, IncidentId
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
    inconclusive_attempts: int = Field(0, description="Attempts in which a check did not finish (machine busy)")

    @property
    def inconclusive(self) -> bool:
        """True when it did not pass only because checks did not finish (nothing measured as failing)."""
        failing = [v for v in self.checks.values() if not v.get("ok")]
        return not self.passed and bool(failing) and all(v.get("inconclusive") for v in failing)

    def summary(self) -> str:
        """Return one line naming the failing checks, if any."""
        if self.passed:
            return "all checks passed"
        failing = [k for k, v in self.checks.items() if not v.get("ok") and not v.get("inconclusive")]
        unfinished = [k for k, v in self.checks.items() if v.get("inconclusive")]
        parts = ([f"failing: {', '.join(failing)}"] if failing else []) + (
            [f"inconclusive (did not finish in time): {', '.join(unfinished)}"] if unfinished else [])
        return "; ".join(parts) or "no checks ran"


class VerifyParams(BaseModel):
    """Parameters of verify-service."""

    scenario: Scenario = Field("performance", description="Which runbook scenario's verification to run")
    incident_id: IncidentId | None = Field(None, description="Record on this incident")
    within_seconds: float = Field(60, ge=0, le=3600, description="Keep re-checking up to this long before failing")
    interval_seconds: float = Field(2, gt=0, le=300, description="Pause between attempts")
    check_timeout_seconds: float = Field(60, gt=0, le=600,
                                         description="Give each check this long to finish (past it: inconclusive)")


def _dependency_ok(body: dict[str, Any] | None, name: str) -> bool | None:
    checks = (body or {}).get("checks") or {}
    dep = checks.get(name)
    if not isinstance(dep, dict):
        return None
    return str(dep.get("status", "")).lower() in HEALTHY


async def _once(scenario: str, limit: float) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    health_check = check_app_health.with_options(timeout_seconds=limit)
    auth_check = check_auth_endpoint.with_options(timeout_seconds=limit)
    rest_check = check_rest_count.with_options(timeout_seconds=limit)
    webhook_check = probe_webhook.with_options(timeout_seconds=limit)
    timing_check = probe_health_timing.with_options(timeout_seconds=limit)

    async def guard(name: str, coro: Any) -> Any:
        try:
            return await coro
        except IntegrationError as exc:  # the service answered badly or not within the client's timeouts
            checks[name] = {"ok": False, "error": str(exc)}
            return None
        except TimeoutError:  # the task's own timeout: the check did not finish, nothing was measured
            checks[name] = {"ok": False, "inconclusive": True,
                            "error": "the check did not finish within its task timeout (is this machine busy?)"}
            return None

    health = await guard("app_health", health_check(None, purpose="verification"))
    if health is not None:
        # Strict: "degraded" (a dependency such as OpenAI down) is not restored service.
        checks["app_health"] = {"ok": health.ok, "status_code": health.status_code, "status": health.status,
                                "latency_ms": health.latency_ms}
    if scenario == "database":
        count = await guard("rest_count", rest_check(None))
        if count is not None:
            checks["rest_count"] = {"ok": True, "count": count.count}
        dep = _dependency_ok(health.body if health else None, "database")
        if dep is not None:
            checks["database_dependency"] = {"ok": dep}
    elif scenario == "authentication":
        auth = await guard("auth_endpoint", auth_check())
        if auth is not None:
            checks["auth_endpoint"] = {"ok": auth.alive, "status_code": auth.status_code, "detail": auth.detail}
        dep = _dependency_ok(health.body if health else None, "auth")
        if dep is not None:
            checks["auth_dependency"] = {"ok": dep}
    elif scenario == "payment":
        probe = await guard("webhook_probe", webhook_check())
        if probe is not None:
            checks["webhook_probe"] = {"ok": probe.ok, "unsigned_status": probe.unsigned_status,
                                       "signed_status": probe.signed_status, "detail": probe.detail}
    elif scenario == "performance":
        timing = await guard("response_time", timing_check())
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
    attempts = unfinished = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + params.within_seconds
    while True:
        attempts += 1
        checks = await _once(params.scenario, params.check_timeout_seconds)
        passed = bool(checks) and all(c.get("ok") for c in checks.values())
        unfinished += any(c.get("inconclusive") for c in checks.values())
        if passed or loop.time() >= deadline:
            break
        await asyncio.sleep(params.interval_seconds)
    result = Verification(scenario=params.scenario, passed=passed, checks=checks, attempts=attempts,
                          inconclusive_attempts=unfinished)
    verdict = "passed" if passed else "INCONCLUSIVE" if result.inconclusive else "FAILED"
    await record(params.incident_id, EventKind.VERIFICATION,
                 f"Verification ({params.scenario}) {verdict}: {result.summary()}",
                 {"passed": passed, "inconclusive": result.inconclusive, "scenario": params.scenario,
                  "checks": checks, "attempts": attempts, "inconclusive_attempts": unfinished})
    return result
