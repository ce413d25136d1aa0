"""Database rollback (runbook "Rollback Procedures > Database Rollback"), made safe: never `supabase db reset`.

Plan (from `supabase_migrations.schema_migrations` and the migrations folder): which versions to revert (the
given ones, else those an earlier run for the same incident planned, else the latest applied), each one's down
script (path + sha256), and the backup that will be taken. Only the newest applied versions can be reverted (a
suffix of the history); a version without a down script is refused and points at point-in-time recovery.
Approval follows the two-person rule (approver ≠ requester).

Act: pg_dump backup (path + sha256 recorded; a backup already taken for the same incident and versions is reused),
then the down scripts in ONE transaction with lock_timeout and statement_timeout, each version's history row
deleted like `supabase migration repair --status reverted`. A version no longer applied is never reverted twice.
Verify: REST count, /api/health with its database check, and the history: the versions are no longer applied.
"""

from typing import Annotated, Any

from prefect import flow
from pydantic import BeforeValidator, Field

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
from runbook.clients.types import Backup, DownScript, parse_version, sha256_file
from runbook.errors import UnsafeOperation
from runbook.models import ONE_LINE, Approval, EventKind
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.incident import record
from tasks.supabase import backup_database, local_migration_files, read_migration_status, revert_migrations

ACTION = "database-rollback"
PITR = ("restore with point-in-time recovery instead (Supabase Dashboard → Database → Backups → Point in Time), "
        "or add a reviewed down script at supabase/migrations/down/<version>_<name>.down.sql")

Version = Annotated[str, Field(pattern=r"^[0-9]{1,20}$", max_length=20), ONE_LINE, BeforeValidator(parse_version)]


def _key(version: str) -> tuple[int, str]:
    return len(version), version


class DatabaseRollbackParams(RemediationParams):
    """Revert the latest migration(s) with their down scripts (a form in the Prefect UI)."""

    requested_by: str = Field(..., min_length=1, max_length=100,  # type: ignore[assignment]
                              description="Who asks for the rollback; the approver must be someone else")
    versions: list[Version] = Field(default_factory=list, max_length=20,
                                    description="Migration versions to revert (digits, e.g. 20250127093000); "
                                                "empty: those an earlier run for the incident planned, else "
                                                "the latest applied one")
    lock_timeout_ms: int = Field(5000, ge=100, le=60000, description="SET LOCAL lock_timeout of the transaction")
    statement_timeout_ms: int = Field(60000, ge=1000, le=600000,
                                      description="SET LOCAL statement_timeout of the transaction")


def backup_label(incident_id: str | None, versions: list[str]) -> str:
    """Return the backup's file label: one per incident and set of versions (so a resume finds it)."""
    return f"{incident_id or 'adhoc'}-before-revert-{'-'.join(sorted(versions, key=_key))}"


async def plan_database_rollback(params: DatabaseRollbackParams) -> Plan:
    """Compute the rollback plan from the migration history and the migrations folder."""
    settings = get_settings()
    status = await read_migration_status()
    if not status.history_table:
        raise UnsafeOperation("supabase_migrations.schema_migrations does not exist: nothing records what to revert")
    applied = sorted((r.version for r in status.rows if r.remote), key=_key)
    wanted = sorted(set(params.versions or await earlier_versions(params.incident_id) or applied[-1:]), key=_key)
    to_revert = [v for v in wanted if v in applied]
    gone = [v for v in wanted if v not in applied]
    state: dict[str, Any] = {"applied": applied, "revert": to_revert}
    if not to_revert:
        why = f"versions {', '.join(gone)} are not applied" if gone else "no migration is applied"
        return Plan(action=ACTION, environment=settings.environment, noop=True, state=state,
                    summary=f"nothing to revert: {why}")
    newest = applied[-len(to_revert):]
    if newest != to_revert:
        raise UnsafeOperation(f"refusing to revert {', '.join(to_revert)} while newer migrations stay applied "
                              f"({', '.join(v for v in applied if _key(v) > _key(to_revert[0]) and v not in to_revert)}"
                              "); include them, newest first")
    files = {f.version: f for f in _migration_files()}
    scripts: list[DownScript] = []
    for version in reversed(to_revert):
        local = files.get(version)
        if local is None:
            raise UnsafeOperation(f"migration {version} is applied but has no local file; {PITR}")
        if local.down_script is None:
            raise UnsafeOperation(f"migration {version}_{local.name} has no down script; refusing to guess. {PITR}")
        scripts.append(DownScript(version=version, name=local.name, path=local.down_script,
                                  sha256=sha256_file(local.down_script)))
    label = backup_label(params.incident_id, to_revert)
    backup_path = settings.backups_dir / f"{label}.dump"
    state["down_scripts"] = {s.version: s.sha256 for s in scripts}
    steps = [f"Back up the database with pg_dump -Fc to {backup_path} (sha256 recorded)"]
    steps += [f"Revert {s.version}_{s.name}: run {s.path.name} (sha256 {s.sha256[:12]}…)" for s in scripts]
    steps += [f"In ONE transaction with lock_timeout={params.lock_timeout_ms} ms and statement_timeout="
              f"{params.statement_timeout_ms} ms; delete each version's schema_migrations row "
              "(= supabase migration repair --status reverted)",
              "Verify: Supabase REST count of profiles, /api/health database check, versions no longer applied"]
    warnings = [f"{', '.join(gone)} not applied: skipped"] if gone else []
    warnings.append("Down scripts can drop data the migration created; the backup is the way back")
    return Plan(action=ACTION, environment=settings.environment, state=state, steps=steps, warnings=warnings,
                summary=f"revert migration(s) {', '.join(reversed(to_revert))} with their down scripts")


async def earlier_versions(incident_id: str | None) -> list[str]:
    """Return the versions an earlier database rollback for this incident planned (a re-run targets the same)."""
    if not incident_id:
        return []
    async with open_store() as store:
        started = await store.timeline(incident_id, kind=EventKind.REMEDIATION_STARTED)
    planned = [e.details.get("state", {}).get("revert") for e in started if e.details.get("action") == ACTION]
    return list(next((p for p in reversed(planned) if p), []))


def _migration_files() -> list[Any]:
    settings = get_settings()
    if settings.supabase_db_url is None:
        raise UnsafeOperation("RUNBOOK_SUPABASE_DB_URL is not set")
    return local_migration_files(settings)


async def take_or_reuse_backup(incident_id: str | None, versions: list[str]) -> tuple[Backup, bool]:
    """Return the backup for this incident and versions: the recorded one if intact, else a new one."""
    settings = get_settings()
    label = backup_label(incident_id, versions)
    meta = settings.backups_dir / f"{label}.json"
    if meta.is_file():
        earlier = Backup.model_validate_json(meta.read_text())
        if earlier.verify():
            await record(incident_id, EventKind.NOTE, f"Reusing the backup taken earlier: {earlier.path.name}",
                         {"backup_path": str(earlier.path), "sha256": earlier.sha256, "reused": True})
            return earlier, True
    backup = await backup_database(incident_id, settings.backups_dir, label)
    meta.write_text(backup.model_dump_json())
    return backup, False


@flow(name=ACTION, flow_run_name=run_name(ACTION))
async def database_rollback(params: DatabaseRollbackParams) -> RemediationResult:
    """Revert migrations safely: plan, two-person approval, backup, down scripts in one transaction, verify."""

    async def plan() -> Plan:
        return await plan_database_rollback(params)

    async def act(plan: Plan, approval: Approval) -> dict[str, Any]:
        versions = list(plan.state["revert"])
        backup, reused = await take_or_reuse_backup(params.incident_id, versions)
        status = await read_migration_status()  # a resumed run: what is still applied?
        still = [v for v in versions if any(r.version == v and r.remote for r in status.rows)]
        files = {f.version: f for f in _migration_files()}
        scripts = [DownScript(version=v, name=files[v].name, path=files[v].down_script,
                              sha256=plan.state["down_scripts"][v]) for v in still]
        result = await revert_migrations(params.incident_id, scripts, params.lock_timeout_ms,
                                         params.statement_timeout_ms)
        return {"reverted": result.reverted, "skipped": sorted(set(versions) - set(result.reverted)),
                "backup_path": str(backup.path), "backup_sha256": backup.sha256, "backup_reused": reused}

    async def verify(plan: Plan, applied: dict[str, Any]) -> Checked:
        status = await read_migration_status()
        remaining = [v for v in plan.state["revert"] if any(r.version == v and r.remote for r in status.rows)]
        extra = {"versions_reverted": {"ok": not remaining, "still_applied": remaining,
                                       "latest_applied": status.latest_applied}}
        return await verify_scenario("database", params.incident_id, params.verify_within_seconds, extra)

    return await run_remediation(Remediation(ACTION, plan, act, verify, two_person=True), params)

