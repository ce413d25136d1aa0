"""cancel-query against the drill: the runaway session blocking the app is terminated and performance recovers."""

from flows.cancel_query import CancelQueryParams, cancel_query
from runbook.drill import DrillStack
from tests.flows.remediation_support import decide, drill_fixture, new_incident  # noqa: F401 - a fixture


def session_alive(stack: DrillStack, pid: int) -> bool:
    """Return True while the backend pid exists."""
    return bool(stack.query("select 1 from pg_stat_activity where pid = $1", pid))


async def test_runaway_query_is_terminated(drill: DrillStack) -> None:
    """An approved cancel-query terminates the blocking session and the app answers fast again."""
    drill.inject("slow-database")
    pid = drill.scenario_state["slow-database"]["pid"]
    incident = await new_incident()
    result = await decide(cancel_query(CancelQueryParams(incident_id=incident, min_duration_seconds=1,
                                                         verify_within_seconds=20)), incident)
    assert result.outcome == "verified", result.detail
    assert str(pid) in result.plan.state["targets"]
    assert not session_alive(drill, pid)
    assert drill.healthy("slow-database")


async def test_rejection_leaves_the_session(drill: DrillStack) -> None:
    """A rejected cancel-query terminates nothing."""
    drill.inject("slow-database")
    pid = drill.scenario_state["slow-database"]["pid"]
    incident = await new_incident()
    result = await decide(cancel_query(CancelQueryParams(incident_id=incident, min_duration_seconds=1)), incident,
                          decision="reject")
    assert result.outcome == "rejected" and session_alive(drill, pid)


async def test_dry_run_names_the_session(drill: DrillStack) -> None:
    """A dry run lists the runaway session and terminates nothing."""
    drill.inject("slow-database")
    pid = drill.scenario_state["slow-database"]["pid"]
    result = await cancel_query(CancelQueryParams(min_duration_seconds=1, dry_run=True))
    assert result.outcome == "dry_run" and str(pid) in result.plan.state["targets"]
    assert session_alive(drill, pid)
