"""database-rollback against the drill's real Postgres: revert, two-person rule, bad versions, resume, refusals."""


import asyncpg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from pydantic import ValidationError

from flows._remediation import RemediationResult
from flows.database_rollback import DatabaseRollbackParams, database_rollback
from runbook.drill import DrillStack
from runbook.errors import UnsafeOperation
from runbook.models import EventKind
from runbook.settings import get_settings
from tests.flows.remediation_support import (  # noqa: F401 - a fixture
    decide,
    drill_fixture,
    event_details,
    new_incident,
    timeline,
)
from tests.waiting import eventually


def applied(stack: DrillStack) -> list[str]:
    """Return the applied migration versions."""
    return [r["version"] for r in stack.query("select version from supabase_migrations.schema_migrations "
                                              "order by version")]


def profile_columns(stack: DrillStack) -> set[str]:
    """Return the columns of public.profiles."""
    return {r["column_name"] for r in stack.query(
        "select column_name from information_schema.columns where table_schema = 'public' "
        "and table_name = 'profiles'")}


def injected_version(stack: DrillStack) -> str:
    """Return the version the database-migration scenario applied."""
    return str(stack.scenario_state["database-migration"]["version"])


def backups(stack: DrillStack) -> list[str]:
    """Return the backup files in the runbook's state directory."""
    folder = get_settings().backups_dir
    return sorted(p.name for p in folder.glob("*.dump")) if folder.exists() else []


async def test_bad_migration_is_reverted_and_verified(drill: DrillStack) -> None:
    """An approved rollback backs up, runs the down script, marks the version reverted, and health recovers."""
    drill.inject("database-migration")
    version = injected_version(drill)
    assert not drill.healthy("database-migration")
    incident = await new_incident()
    result = await decide(database_rollback(DatabaseRollbackParams(incident_id=incident, requested_by="alice",
                                                                   verify_within_seconds=20)), incident)
    assert result.outcome == "verified", result.detail
    assert version not in applied(drill)
    assert "full_name" in profile_columns(drill)
    assert drill.healthy("database-migration")
    [applied_event] = await event_details(incident, EventKind.REMEDIATION_APPLIED)
    assert applied_event["reverted"] == [version]
    assert len(applied_event["backup_sha256"]) == 64 and applied_event["backup_path"].endswith(".dump")


async def test_requester_cannot_approve(drill: DrillStack) -> None:
    """The two-person rule turns an approval by the requester into a rejection: nothing changes."""
    drill.inject("database-migration")
    before = applied(drill)
    incident = await new_incident()
    result = await decide(database_rollback(DatabaseRollbackParams(incident_id=incident, requested_by="alice")),
                          incident, approver="Alice")
    assert result.outcome == "rejected"
    assert "two-person" in (result.detail or "")
    assert applied(drill) == before and "display_name" in profile_columns(drill)
    assert backups(drill) == []


async def test_timeout_changes_nothing(drill: DrillStack) -> None:
    """A rollback nobody approves in time takes no backup and leaves schema and history unchanged."""
    drill.inject("database-migration")
    before = applied(drill)
    incident = await new_incident()
    result = await database_rollback(DatabaseRollbackParams(incident_id=incident, requested_by="alice",
                                                            approval_timeout_minutes=2 / 60))
    assert result.outcome == "timed_out"
    assert applied(drill) == before and "display_name" in profile_columns(drill)
    assert backups(drill) == []


@pytest.mark.parametrize("bad", ["1; DROP TABLE x", "../x", "20250127120000 ", "", "abc"])
def test_versions_that_are_not_versions_are_rejected(bad: str) -> None:
    """A migration version that is not digits is rejected by the parameters model."""
    with pytest.raises(ValidationError):
        DatabaseRollbackParams(requested_by="alice", versions=[bad])


async def test_bad_version_fails_the_run_before_anything_runs(drill: DrillStack) -> None:
    """Calling the flow with an SQL fragment as a version fails parameter validation and changes nothing."""
    before = applied(drill)
    with pytest.raises(Exception, match="not a migration version"):
        await database_rollback(params={"requested_by": "alice",  # type: ignore[arg-type]
                                        "versions": ["1; DROP TABLE public.profiles"]})
    assert applied(drill) == before and backups(drill) == []


async def test_requested_by_is_required() -> None:
    """The two-person rule needs a requester: the parameters model requires requested_by."""
    with pytest.raises(ValidationError):
        DatabaseRollbackParams()  # type: ignore[call-arg]


async def test_migration_without_down_script_is_refused(drill: DrillStack) -> None:
    """A migration without a down script is refused with a pointer to point-in-time recovery."""
    drill.inject("database-migration")
    for down in (drill.migrations_dir / "down").glob(f"{injected_version(drill)}_*.down.sql"):
        down.unlink()
    before = applied(drill)
    with pytest.raises(UnsafeOperation, match="point-in-time recovery"):
        await database_rollback(DatabaseRollbackParams(requested_by="alice"))
    assert applied(drill) == before and backups(drill) == []


async def test_interrupted_after_backup_resumes_without_double_apply(drill: DrillStack) -> None:
    """A rollback that failed after its backup, re-run for the same incident, reuses the backup and reverts once."""
    drill.inject("database-migration")
    version = injected_version(drill)
    incident = await new_incident()
    params = DatabaseRollbackParams(incident_id=incident, requested_by="alice", lock_timeout_ms=300,
                                    verify_within_seconds=20)
    blocker = await asyncpg.connect(drill.db_url)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("lock table public.profiles in access share mode")
        first = await decide(database_rollback(params), incident)
        await transaction.rollback()
    finally:
        await blocker.close()
    assert first.outcome == "failed" and version in applied(drill)
    [dump] = backups(drill)
    second = await decide(database_rollback(params), incident)
    assert second.outcome == "verified", second.detail
    assert backups(drill) == [dump]
    taken = [d for d in await event_details(incident, EventKind.NOTE) if "sha256" in d and not d.get("reused")]
    assert len(taken) == 1
    [applied_event] = await event_details(incident, EventKind.REMEDIATION_APPLIED)
    assert applied_event["backup_reused"] is True and applied_event["reverted"] == [version]
    third = await database_rollback(params)
    assert third.outcome == "nothing_to_do"
    assert "full_name" in profile_columns(drill)


async def test_dry_run_changes_nothing(drill: DrillStack) -> None:
    """A dry run names the version, its down script and the backup, and changes nothing."""
    drill.inject("database-migration")
    version = injected_version(drill)
    before = applied(drill)
    result = await database_rollback(DatabaseRollbackParams(requested_by="alice", dry_run=True))
    assert result.outcome == "dry_run" and result.plan is not None
    assert result.plan.state["revert"] == [version]
    assert any(".down.sql" in s for s in result.plan.steps) and any("pg_dump" in s for s in result.plan.steps)
    assert applied(drill) == before and backups(drill) == []


async def test_reverting_an_older_version_under_newer_ones_is_refused(drill: DrillStack) -> None:
    """Reverting a version while newer migrations stay applied is refused."""
    drill.inject("database-migration")
    with pytest.raises(UnsafeOperation, match="newer migrations"):
        await database_rollback(DatabaseRollbackParams(requested_by="alice", versions=["20250120110000"]))


async def test_concurrent_rollback_is_refused(drill: DrillStack) -> None:
    """While one remediation waits for approval, a second one for the environment is refused."""
    drill.inject("database-migration")
    incident = await new_incident()
    seconds: list[RemediationResult] = []

    async def second_rollback() -> None:  # runs while the first is paused, waiting for approval
        seconds.append(await database_rollback(DatabaseRollbackParams(requested_by="carol")))

    first = await decide(database_rollback(DatabaseRollbackParams(incident_id=incident, requested_by="alice")),
                         incident, decision="reject", meanwhile=second_rollback, timeout=120)
    assert seconds and seconds[0].outcome == "refused" and "held by" in seconds[0].detail
    assert first.outcome == "rejected"
    assert injected_version(drill) in applied(drill)


async def test_the_approval_request_is_loud_and_every_step_is_in_the_run_log(drill: DrillStack) -> None:
    """#incidents is told what waits for approval with a link to the run; the run's own log names the plan and
    each step it takes (backup, down script, verification), not only the incident timeline."""
    drill.inject("database-migration")
    incident = await new_incident()
    result = await decide(database_rollback(DatabaseRollbackParams(incident_id=incident, requested_by="alice",
                                                                   verify_within_seconds=20)), incident)
    assert result.outcome == "verified", result.detail
    [requested] = await timeline(incident, kind=EventKind.APPROVAL_REQUESTED)
    run_id, plan_hash = requested.flow_run_id, requested.details["plan_hash"]
    assert run_id
    [notice] = [m for m in drill.slack.messages() if "Approval needed" in str(m)]
    assert plan_hash in str(notice) and f"/runs/flow-run/{run_id}" in str(notice)

    async def run_log() -> str:
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        text = "\n".join(log.message for log in logs)
        return text if "Remediation checks passed" in text else ""  # the run's last step

    text = await eventually(run_log, "the run's log to reach the server")
    assert "waiting for approval of database-rollback" in text and f"(plan {plan_hash})" in text
    assert ".dump" in text  # the backup file is named in the run log
    assert "remediation_applied" in text
