"""Supabase tasks: REST count, database connectivity and health, migration history, project health."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.supabase import (
    Connectivity,
    DatabaseHealth,
    LongQuery,
    MigrationFile,
    MigrationStatus,
    ProjectHealth,
    RowCount,
    SupabaseDatabase,
    SupabaseManagement,
    SupabaseRest,
)
from runbook.clients.supabase_admin import Backup, DownScript, RevertResult, SupabaseAdmin, TerminateResult
from runbook.models import EventKind
from runbook.settings import Settings, get_settings
from tasks.common import open_client
from tasks.incident import record


def local_migration_files(settings: Settings | None = None) -> list[MigrationFile]:
    """List the migrations folder's files and their down scripts (read locally; nothing is connected to)."""
    return SupabaseDatabase.from_settings(settings or get_settings()).migration_files()


@task(name="check_rest_count", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_rest_count(incident_id: str | None = None, table: str = "profiles") -> RowCount:
    """Count rows through Supabase REST (the runbook's `profiles?select=count` check)."""
    async with open_client(SupabaseRest) as rest:
        result = await rest.count(table)
    await record(incident_id, EventKind.CHECK, f"Supabase REST {table} count = {result.count}",
                 {"check": "rest_count", "ok": True, "table": table, "count": result.count,
                  "latency_ms": result.latency_ms})
    return result


@task(name="check_database_connectivity", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_database_connectivity() -> Connectivity:
    """Connect to the database directly and run a trivial query."""
    async with open_client(SupabaseDatabase) as db:
        return await db.connectivity()


@task(name="check_database_health", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_database_health(long_query_s: float = 5.0) -> DatabaseHealth:
    """Read connections, pool utilisation, long-running queries and mean query time."""
    async with open_client(SupabaseDatabase) as db:
        return await db.health(long_query_threshold=long_query_s)


@task(name="read_migration_status", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def read_migration_status() -> MigrationStatus:
    """Compare applied migrations with the migrations folder, like `supabase migration list`."""
    async with open_client(SupabaseDatabase) as db:
        return await db.migration_status()


@task(name="check_project_health", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_project_health() -> ProjectHealth:
    """Ask the Management API for the project's auth/db/rest health."""
    async with open_client(SupabaseManagement) as mgmt:
        return await mgmt.project_health()


# -- write side (remediations only, after an approval) -------------------------------------------------------

@task(name="backup_database", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)
async def backup_database(incident_id: str | None, dest_dir: Path, label: str) -> Backup:
    """Take a pg_dump backup and record its path and sha256."""
    async with open_client(SupabaseAdmin) as admin:
        backup = await admin.backup(dest_dir, label)
    await record(incident_id, EventKind.NOTE,
                 f"Database backup taken: {backup.path.name} (sha256 {backup.sha256[:12]}…)",
                 {"backup_path": str(backup.path), "sha256": backup.sha256, "size_bytes": backup.size_bytes},
                 actor="pg_dump")
    return backup


@task(name="revert_migrations", retries=0, timeout_seconds=600, cache_policy=NO_CACHE)
async def revert_migrations(
    incident_id: str | None, scripts: list[DownScript], lock_timeout_ms: int, statement_timeout_ms: int
) -> RevertResult:
    """Apply the approved down scripts in one transaction and mark the versions reverted."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.revert_migrations(scripts, lock_timeout_ms=lock_timeout_ms,
                                             statement_timeout_ms=statement_timeout_ms)


@task(name="read_jurisdiction_configs", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def read_jurisdiction_configs() -> dict[str, dict[str, Any]]:
    """Read every jurisdiction's feature flags and settings."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.read_jurisdiction_configs()


@task(name="restore_jurisdiction_configs", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def restore_jurisdiction_configs(
    rows: dict[str, dict[str, Any]], expected_current: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """Restore jurisdiction_configs to `rows` in one transaction; return the jurisdictions changed."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.restore_jurisdiction_configs(rows, expected_current=expected_current)


@task(name="read_app_flag", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def read_app_flag(name: str) -> bool | None:
    """Read one app flag (None when missing)."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.get_flag(name)


@task(name="set_app_flag", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def set_app_flag(name: str, enabled: bool) -> bool:
    """Set one app flag; return its previous value."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.set_flag(name, enabled)


@task(name="list_long_queries", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def list_long_queries(min_duration_s: float) -> list[LongQuery]:
    """Return non-idle queries running longer than the threshold, longest first."""
    async with open_client(SupabaseDatabase) as db:
        return await db.long_running_queries(min_duration_s, max_query_chars=300)


@task(name="read_query_starts", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def read_query_starts(pids: list[int]) -> dict[int, datetime | None]:
    """Return pid → query_start of the sessions still present."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.query_starts(pids)


@task(name="terminate_backend", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def terminate_backend(pid: int, query_start: datetime | None = None) -> TerminateResult:
    """Terminate one backend if it still runs the planned query."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.terminate_backend(pid, query_start=query_start)


@task(name="count_processed_stripe_events", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def count_processed_stripe_events(event_ids: list[str]) -> dict[str, int]:
    """Return event id → how many times the app processed it."""
    async with open_client(SupabaseAdmin) as admin:
        return await admin.processed_stripe_events(event_ids)
