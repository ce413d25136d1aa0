"""maintenance-mode against the drill: on with approval and verified by the app, off again, rejection."""

from flows.maintenance_mode import MaintenanceModeParams, maintenance_mode
from runbook.drill import DrillStack
from tests.flows.remediation_support import decide, drill_fixture, new_incident  # noqa: F401 - a fixture


def flag(stack: DrillStack) -> bool:
    """Return the maintenance_mode flag."""
    return bool(stack.query("select enabled from public.app_flags where name = 'maintenance_mode'")[0]["enabled"])


async def test_maintenance_on_and_off(drill: DrillStack) -> None:
    """Approved maintenance mode turns on (the app reports it) and off again."""
    incident = await new_incident()
    on = await decide(maintenance_mode(MaintenanceModeParams(incident_id=incident, enabled=True,
                                                             verify_within_seconds=10)), incident)
    assert on.outcome == "verified", on.detail
    assert flag(drill) and drill.health()[1]["maintenance"] is True
    off = await decide(maintenance_mode(MaintenanceModeParams(incident_id=incident, enabled=False,
                                                              verify_within_seconds=10)), incident)
    assert off.outcome == "verified", off.detail
    assert not flag(drill) and drill.health()[1]["maintenance"] is False


async def test_rejection_leaves_the_flag(drill: DrillStack) -> None:
    """A rejected maintenance-mode request leaves the flag off."""
    incident = await new_incident()
    result = await decide(maintenance_mode(MaintenanceModeParams(incident_id=incident, enabled=True)), incident,
                          decision="reject")
    assert result.outcome == "rejected" and not flag(drill)


async def test_already_off_is_nothing_to_do(drill: DrillStack) -> None:
    """Turning maintenance off when it is off is a named success without an approval."""
    result = await maintenance_mode(MaintenanceModeParams(enabled=False))
    assert result.outcome == "nothing_to_do"
