"""Read-only look-ups the scenario diagnostics need beyond the per-system task modules.

- `read_error_series`: Sentry's error time series (when did the errors start?);
- `read_applied_migrations`: the newest rows of `supabase_migrations.schema_migrations` WITH their statements
  (the migration status only compares versions), to tie a database error to the migration that touched the object;
- `read_config_changes`: the recent entries of the app's `public.config_audit` trail (who changed which flag when);
- `probe_openai`: ONE timed attempt at OpenAI's /v1/models (`check_openai` retries a 5xx with backoff, which is
  right for a client call and slow for a liveness observation during an outage).
Nothing here writes anything.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from runbook.clients.health import ProbeResult, probe
from runbook.clients.sentry import SentryClient, SeriesPoint
from runbook.clients.supabase import SupabaseDatabase
from runbook.errors import NotConfigured
from runbook.settings import ENV_PREFIX, get_settings
from tasks.common import open_client, redactor


class AppliedMigrationDetail(BaseModel):
    """One applied migration with the statements the Supabase CLI recorded for it."""

    version: str
    name: str | None = None
    statements: list[str] = Field(default_factory=list)


class ConfigChange(BaseModel):
    """One row of the app's config audit trail."""

    id: int
    table: str
    key: str
    operation: str
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    changed_by: str | None = None
    changed_at: datetime


@task(name="read_error_series", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_error_series(window_minutes: float = 60, interval_s: int = 60) -> list[SeriesPoint]:
    """Return Sentry's error counts per interval over the last window, oldest first."""
    async with open_client(SentryClient) as sc:
        points = await sc.error_series(f"{int(window_minutes)}m", interval=interval_s)
    return sorted(points, key=lambda p: p.timestamp)


@task(name="read_applied_migrations", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def read_applied_migrations(limit: int = 5) -> list[AppliedMigrationDetail]:
    """Return the newest applied migrations (by version) with their recorded statements, newest first."""

    async def work(conn: asyncpg.Connection) -> list[AppliedMigrationDetail]:
        if not await conn.fetchval("select to_regclass('supabase_migrations.schema_migrations') is not null"):
            return []
        has_statements = await conn.fetchval(
            "select exists(select 1 from information_schema.columns where table_schema = 'supabase_migrations' "
            "and table_name = 'schema_migrations' and column_name = 'statements')"
        )
        columns = "version, name, statements" if has_statements else "version, name, null::text[] as statements"
        rows = await conn.fetch(
            f"select {columns} from supabase_migrations.schema_migrations "
            "order by length(version) desc, version desc limit $1",
            limit,
        )
        return [AppliedMigrationDetail(version=str(r["version"]), name=r["name"],
                                       statements=list(r["statements"] or [])) for r in rows]

    async with open_client(SupabaseDatabase) as db:
        return await db.run("read applied migrations", work)


@task(name="read_config_changes", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def read_config_changes(since_minutes: float = 24 * 60, limit: int = 50) -> list[ConfigChange] | None:
    """Return recent `public.config_audit` rows, newest first (None when the app keeps no audit trail)."""

    async def work(conn: asyncpg.Connection) -> list[ConfigChange] | None:
        if not await conn.fetchval("select to_regclass('public.config_audit') is not null"):
            return None
        rows = await conn.fetch(
            "select id, table_name, row_key, operation, old_value::text as old_value, "
            "new_value::text as new_value, changed_by, changed_at from public.config_audit "
            "where changed_at > now() - make_interval(secs => $1::float8) order by id desc limit $2",
            since_minutes * 60, limit,
        )
        return [ConfigChange(id=r["id"], table=r["table_name"], key=r["row_key"], operation=r["operation"],
                             old=json.loads(r["old_value"]) if r["old_value"] else None,
                             new=json.loads(r["new_value"]) if r["new_value"] else None,
                             changed_by=r["changed_by"], changed_at=r["changed_at"]) for r in rows]

    async with open_client(SupabaseDatabase) as db:
        return await db.run("read config audit", work)


@task(name="probe_openai", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def probe_openai(timeout_s: float = 5.0) -> ProbeResult:
    """Probe OpenAI's /v1/models once (an observation: not retried, never raises; the key is never shown)."""
    settings = get_settings()
    if not settings.openai_api_key:
        raise NotConfigured("openai", f"{ENV_PREFIX}OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {settings.openai_api_key.get_secret_value()}"}
    result = await probe(f"{settings.openai_api_url.rstrip('/')}/v1/models", headers=headers, expect=[200],
                         timeout=timeout_s, connect_timeout=min(timeout_s, 5.0))
    redact = redactor(settings)
    return result.model_copy(update={"body": None, "error": redact(result.error) if result.error else None})
