"""Supabase tasks: REST count, database connectivity and health, migration history, project health."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.supabase import (
    Connectivity,
    DatabaseHealth,
    MigrationStatus,
    ProjectHealth,
    RowCount,
    SupabaseDatabase,
    SupabaseManagement,
    SupabaseRest,
)
from runbook.models import EventKind
from tasks.common import open_client
from tasks.incident import record


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
