"""verify-service: a check that did not finish is inconclusive (re-run, named), a service that answers badly fails."""

from __future__ import annotations

from flows.verification import VerifyParams, verify_service
from runbook.drill import DrillStack, Fault
from runbook.store import open_store
from tests.flows.remediation_support import drill_fixture, new_incident  # noqa: F401 - a fixture


async def _verification_events(incident_id: str) -> list[dict]:
    async with open_store() as store:
        return [e.details | {"summary": e.summary} for e in await store.timeline(incident_id, kind="verification")]


async def test_a_healthy_database_verifies(drill: DrillStack) -> None:
    """Restored service passes at the first attempt."""
    incident = await new_incident()
    result = await verify_service(VerifyParams(scenario="database", incident_id=incident, within_seconds=0))
    assert result.passed and not result.inconclusive and result.attempts == 1
    assert {"app_health", "rest_count"} <= set(result.checks)


async def test_a_check_that_does_not_finish_is_inconclusive_not_failed(drill: DrillStack) -> None:
    """REST hangs past the check's task limit: the verification does not pass and says inconclusive, not FAILED."""
    incident = await new_incident()
    drill.supabase.inject(Fault.hang(seconds=30, path="/rest/v1/profiles"))
    try:
        result = await verify_service(VerifyParams(scenario="database", incident_id=incident, within_seconds=0,
                                                   check_timeout_seconds=1))
    finally:
        drill.supabase.clear_faults()
    assert not result.passed and result.inconclusive
    assert result.checks["rest_count"]["inconclusive"] and result.inconclusive_attempts == 1
    assert result.checks["app_health"]["ok"]
    [event] = await _verification_events(incident)
    assert "INCONCLUSIVE" in event["summary"] and "rest_count" in event["summary"] and event["inconclusive"]


async def test_a_busy_moment_is_retried_within_the_window(drill: DrillStack) -> None:
    """One check that did not finish is re-run within the window; the verification then passes on evidence."""
    incident = await new_incident()
    drill.supabase.inject(Fault.hang(seconds=30, times=1, path="/rest/v1/profiles"))
    try:
        result = await verify_service(VerifyParams(scenario="database", incident_id=incident, within_seconds=300,
                                                   interval_seconds=0.1, check_timeout_seconds=2))
    finally:
        drill.supabase.clear_faults()
    assert result.passed and result.attempts >= 2 and result.inconclusive_attempts >= 1
    assert result.checks["rest_count"]["ok"]


async def test_a_service_answering_errors_fails(drill: DrillStack) -> None:
    """A measured failure (the service answers 5xx) is FAILED, not inconclusive."""
    incident = await new_incident()
    drill.supabase.inject(Fault.error(503, times=None, path="/rest/v1/profiles"))
    try:
        result = await verify_service(VerifyParams(scenario="database", incident_id=incident, within_seconds=0))
    finally:
        drill.supabase.clear_faults()
    assert not result.passed and not result.inconclusive
    assert not result.checks["rest_count"]["ok"] and "inconclusive" not in result.checks["rest_count"]
    [event] = await _verification_events(incident)
    assert "FAILED" in event["summary"]
