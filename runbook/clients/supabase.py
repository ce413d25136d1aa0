"""Supabase: REST exact count (supabase-py), the database over its direct Postgres URL (asyncpg), migration
history like `supabase migration list`, database health, and the Management API's project health.

Three clients, because the three are configured (and fail) independently:
`SupabaseRest` (URL + anon/service key), `SupabaseDatabase` (RUNBOOK_SUPABASE_DB_URL),
`SupabaseManagement` (access token + project ref).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, Field, SecretStr

from runbook.clients._http import (
    DEFAULT_POLICY,
    BaseClient,
    HttpClient,
    Redactor,
    RetryPolicy,
    Sleeper,
    elapsed_ms,
    error_for_status,
    error_for_transport,
    require,
    retry_call,
    secret_value,
    settings_secrets,
    ssl_context,
)
from runbook.errors import (
    AuthError,
    InputError,
    IntegrationError,
    NotConfigured,
    RequestRejected,
    TransientError,
)
from runbook.settings import ENV_PREFIX, Settings

if TYPE_CHECKING:  # the SDKs are imported where they are used: an entrypoint that never calls Supabase skips them
    import asyncpg

VENDOR = "supabase"
T = TypeVar("T")

VERSION = re.compile(r"^[0-9]{1,20}$")
# Migration files are matched like the Supabase CLI does (apps/cli-go/pkg/migration/file.go: `^([0-9]+)_(.*)\.sql$`).
MIGRATION_FILE = re.compile(r"^(?P<version>[0-9]+)_(?P<name>.*)\.sql$")
# A project ref is 20 lowercase letters (the CLI's ProjectRefPattern, apps/cli-go/internal/utils/misc.go).
PROJECT_REF = re.compile(r"^[a-z]{20}$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
ServiceStatus = Literal["COMING_UP", "ACTIVE_HEALTHY", "UNHEALTHY", "UNKNOWN"]


def parse_version(value: str) -> str:
    """Return a migration version (digits only, 14 typical) or raise InputError (SQL fragments, paths …)."""
    if not isinstance(value, str) or not VERSION.match(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise InputError(f"not a migration version (digits only, e.g. 20250127093000): {shown!r}")
    return value


# REST


class RowCount(BaseModel):
    """An exact row count read through PostgREST (`Prefer: count=exact`)."""

    table: str
    count: int
    latency_ms: float


class SupabaseRest:
    """PostgREST through supabase-py: the runbook's `profiles?select=count` verification."""

    vendor = VENDOR

    def __init__(
        self,
        url: str,
        key: SecretStr,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Sleeper = asyncio.sleep,
        secrets: list[str] | None = None,
    ) -> None:
        self.url = url
        self._key = key
        self.policy = policy
        self.sleep = sleep
        self.redact = Redactor([key, *(secrets or [])])
        self._last: httpx.Response | None = None
        self._http = httpx.AsyncClient(
            timeout=policy.timeout(), verify=ssl_context(), event_hooks={"response": [self._remember]}
        )
        self._client: Any = None

    async def _remember(self, response: httpx.Response) -> None:
        self._last = response

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        key: Literal["auto", "anon", "service_role"] = "auto",
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Sleeper = asyncio.sleep,
    ) -> SupabaseRest:
        """Build from settings (anon key, else service-role key); NotConfigured names what is unset."""
        require(VENDOR, settings, "supabase_url")
        choices = {"anon": ["supabase_anon_key"], "service_role": ["supabase_service_role_key"]}
        names = choices.get(key, ["supabase_anon_key", "supabase_service_role_key"])
        value = next((getattr(settings, n) for n in names if secret_value(getattr(settings, n))), None)
        if value is None:
            raise NotConfigured(VENDOR, " or ".join(ENV_PREFIX + n.upper() for n in names))
        return cls(settings.supabase_url or "", value, policy=policy, sleep=sleep, secrets=settings_secrets(settings))

    async def _supabase(self) -> Any:
        if self._client is None:
            from supabase import AsyncClientOptions, acreate_client

            options = AsyncClientOptions(
                httpx_client=self._http,
                postgrest_client_retry=False,  # retries are ours
                auto_refresh_token=False,
                persist_session=False,
            )
            self._client = await acreate_client(self.url, self._key.get_secret_value(), options)
        return self._client

    async def count(self, table: str = "profiles") -> RowCount:
        """Return the exact row count of a table (`select("*", count="exact", head=True)`)."""
        if not IDENTIFIER.match(table):
            raise InputError(f"not a table name: {table[:40]!r}")
        operation = f"count {table}"
        client = await self._supabase()
        from postgrest import APIError

        async def once() -> int | None:
            self._last = None
            try:
                response = await client.table(table).select("*", count="exact", head=True).execute()
            except httpx.TransportError as exc:
                raise error_for_transport(VENDOR, operation, exc, self.policy, self.redact) from None
            except APIError as exc:
                if self._last is not None and not self._last.is_success:
                    raise error_for_status(VENDOR, operation, self._last, self.redact) from None
                message = self.redact(": ".join(str(p) for p in (exc.code, exc.message) if p))
                raise RequestRejected(VENDOR, operation, message[:300]) from None
            return response.count

        started = time.perf_counter()
        value = await retry_call(once, policy=self.policy, sleep=self.sleep, label=f"{VENDOR} {operation}")
        if value is None:
            raise RequestRejected(VENDOR, operation, "no Content-Range count in the response")
        return RowCount(table=table, count=value, latency_ms=elapsed_ms(started))

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> SupabaseRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# Database


class Connectivity(BaseModel):
    """The database answered over its direct URL."""

    ok: bool
    server_version: str
    database: str
    latency_ms: float


class MigrationFile(BaseModel):
    """A local migration file `<version>_<name>.sql` and its down script when there is one."""

    version: str
    name: str
    path: Path
    down_script: Path | None = None


class AppliedMigration(BaseModel):
    """A row of `supabase_migrations.schema_migrations`."""

    version: str
    name: str | None = None


class MigrationRow(BaseModel):
    """One line of `supabase migration list`: the version, and whether it is local, remote or both."""

    version: str
    name: str | None = None
    local: bool
    remote: bool


class MigrationStatus(BaseModel):
    """Local files vs the applied history, with drift in both directions."""

    rows: list[MigrationRow]
    pending: list[str] = Field(description="Local files not applied to the database")
    remote_only: list[str] = Field(description="Applied versions with no local file")
    latest_applied: str | None = None
    history_table: bool = Field(True, description="False when schema_migrations does not exist")

    @property
    def drift(self) -> bool:
        """Return True when local and remote disagree in either direction."""
        return bool(self.pending or self.remote_only)


class LongQuery(BaseModel):
    """A query running longer than the threshold (from pg_stat_activity)."""

    pid: int
    duration_s: float
    state: str | None = None
    query: str
    wait_event_type: str | None = None
    wait_event: str | None = None
    blocking_pids: list[int] = Field(default_factory=list)
    application_name: str | None = None


class DatabaseHealth(BaseModel):
    """Connections against max_connections, pool utilisation, long-running queries, mean query time."""

    active_connections: int
    total_connections: int
    max_connections: int
    pool_utilisation_pct: float
    long_running: list[LongQuery]
    mean_query_ms: float | None
    mean_query_source: Literal["pg_stat_statements", "pg_stat_activity"]
    latency_ms: float


CONNECTIONS_SQL = """
select count(*) filter (where state = 'active')::int as active,
       count(*)::int as total,
       current_setting('max_connections')::int as max_connections
from pg_stat_activity
where backend_type = 'client backend'
"""

LONG_QUERIES_SQL = """
select pid, extract(epoch from now() - query_start)::float8 as duration_s, state,
       left(query, $2::int) as query, wait_event_type, wait_event,
       pg_blocking_pids(pid) as blocking_pids, application_name
from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid()
  and state is distinct from 'idle' and query_start is not null
  and now() - query_start > make_interval(secs => $1::float8)
order by duration_s desc
"""

MEAN_STATEMENTS_SQL = """
select sum(total_exec_time) / nullif(sum(calls), 0) as mean_ms from pg_stat_statements
"""

MEAN_ACTIVITY_SQL = """
select avg(extract(epoch from now() - query_start) * 1000)::float8 as mean_ms
from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid() and state = 'active'
"""


def translate_db_error(exc: BaseException, operation: str, redact: Redactor) -> IntegrationError:
    """Translate an asyncpg/OS error into the runbook's hierarchy (the DSN and its password never shown)."""
    import asyncpg

    vendor = "supabase db"
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return AuthError(vendor, operation, redact(str(exc))[:200])
    if isinstance(
        exc,
        asyncpg.TooManyConnectionsError
        | asyncpg.CannotConnectNowError
        | asyncpg.QueryCanceledError
        | asyncpg.ConnectionDoesNotExistError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError,
    ):
        return TransientError(vendor, operation, f"{type(exc).__name__}: {redact(str(exc))[:200]}")
    if isinstance(exc, TimeoutError):
        return TransientError(vendor, operation, "timed out")
    if isinstance(exc, OSError):
        return TransientError(vendor, operation, f"cannot connect: {redact(exc.strerror or str(exc))[:200]}")
    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", "") or ""
        return RequestRejected(vendor, operation, f"{code} {redact(str(exc))[:200]}".strip())
    return TransientError(vendor, operation, type(exc).__name__)


class SupabaseDatabase:
    """The Supabase Postgres over its direct URL: connectivity, migration history, health."""

    vendor = "supabase db"

    def __init__(
        self,
        dsn: SecretStr,
        *,
        migrations_dir: Path | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Sleeper = asyncio.sleep,
        secrets: list[str] | None = None,
    ) -> None:
        self._dsn = dsn
        self.migrations_dir = migrations_dir
        self.policy = policy
        self.sleep = sleep
        self.redact = Redactor([dsn, *(secrets or [])])

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> SupabaseDatabase:
        """Build from settings; NotConfigured names RUNBOOK_SUPABASE_DB_URL when unset."""
        require("supabase db", settings, "supabase_db_url")
        assert settings.supabase_db_url is not None
        return cls(
            settings.supabase_db_url,
            migrations_dir=settings.migrations_dir,
            policy=policy,
            sleep=sleep,
            secrets=settings_secrets(settings),
        )

    async def _connect(self) -> asyncpg.Connection:
        import asyncpg

        return await asyncpg.connect(
            self._dsn.get_secret_value(),
            timeout=self.policy.connect_timeout,
            command_timeout=self.policy.read_timeout,
            server_settings={"application_name": "permit-school-runbook"},
        )

    async def run(self, operation: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Open a connection, run `work(conn)`, close; retried on connection-level failures."""
        import asyncpg

        async def once() -> T:
            try:
                conn = await self._connect()
            except Exception as exc:  # asyncpg raises OSError, TimeoutError and PostgresError subclasses
                raise translate_db_error(exc, operation, self.redact) from None
            try:
                return await work(conn)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                raise translate_db_error(exc, operation, self.redact) from None
            finally:
                await conn.close(timeout=self.policy.connect_timeout)

        return await retry_call(once, policy=self.policy, sleep=self.sleep, label=f"supabase db {operation}")

    async def connectivity(self) -> Connectivity:
        """Connect and run `select version()`."""
        started = time.perf_counter()

        async def work(conn: asyncpg.Connection) -> tuple[str, str]:
            row = await conn.fetchrow("select current_setting('server_version') as v, current_database() as d")
            return str(row["v"]), str(row["d"])

        version, database = await self.run("connect", work)
        return Connectivity(ok=True, server_version=version, database=database, latency_ms=elapsed_ms(started))

    # Migrations

    def migration_files(self, migrations_dir: Path | None = None) -> list[MigrationFile]:
        """List local `<version>_<name>.sql` files and their `down/<version>_<name>.down.sql` if any."""
        folder = migrations_dir or self.migrations_dir
        if folder is None:
            raise NotConfigured("supabase db", f"{ENV_PREFIX}MIGRATIONS_DIR")
        out: list[MigrationFile] = []
        for path in sorted(Path(folder).glob("*.sql")):
            match = MIGRATION_FILE.match(path.name)
            if not match:
                continue
            version, name = match["version"], match["name"]
            down = Path(folder) / "down" / f"{version}_{name}.down.sql"
            out.append(
                MigrationFile(version=version, name=name, path=path, down_script=down if down.is_file() else None)
            )
        return out

    async def applied_migrations(self) -> list[AppliedMigration] | None:
        """Return the rows of `supabase_migrations.schema_migrations` by version (None: no history table)."""

        async def work(conn: asyncpg.Connection) -> list[AppliedMigration] | None:
            exists = await conn.fetchval("select to_regclass('supabase_migrations.schema_migrations') is not null")
            if not exists:
                return None
            rows = await conn.fetch("select version, name from supabase_migrations.schema_migrations order by version")
            return [AppliedMigration(version=str(r["version"]), name=r["name"]) for r in rows]

        return await self.run("read migration history", work)

    async def migration_status(self, migrations_dir: Path | None = None) -> MigrationStatus:
        """Compare local files with the applied history, like `supabase migration list` (versions only)."""
        files = {f.version: f for f in self.migration_files(migrations_dir)}
        history = await self.applied_migrations()
        applied = {m.version: m for m in history or []}
        versions = sorted(set(files) | set(applied), key=lambda v: (len(v), v))
        rows = [
            MigrationRow(
                version=v,
                name=files[v].name if v in files else applied[v].name,
                local=v in files,
                remote=v in applied,
            )
            for v in versions
        ]
        applied_sorted = sorted(applied, key=lambda v: (len(v), v))
        return MigrationStatus(
            rows=rows,
            pending=[v for v in versions if v in files and v not in applied],
            remote_only=[v for v in versions if v in applied and v not in files],
            latest_applied=applied_sorted[-1] if applied_sorted else None,
            history_table=history is not None,
        )

    # Health

    async def long_running_queries(
        self, min_duration: float | timedelta = 5.0, max_query_chars: int = 200
    ) -> list[LongQuery]:
        """Return non-idle queries running longer than `min_duration` (seconds), longest first."""
        seconds = min_duration.total_seconds() if isinstance(min_duration, timedelta) else float(min_duration)

        async def work(conn: asyncpg.Connection) -> list[LongQuery]:
            return await _long_queries(conn, seconds, max_query_chars)

        return await self.run("long-running queries", work)

    async def health(self, long_query_threshold: float | timedelta = 5.0, max_query_chars: int = 200) -> DatabaseHealth:
        """Measure connections vs max_connections, pool use %, long-running queries, mean query time."""
        seconds = (
            long_query_threshold.total_seconds()
            if isinstance(long_query_threshold, timedelta)
            else float(long_query_threshold)
        )
        started = time.perf_counter()

        async def work(conn: asyncpg.Connection) -> DatabaseHealth:
            counts = await conn.fetchrow(CONNECTIONS_SQL)
            long_running = await _long_queries(conn, seconds, max_query_chars)
            mean, source = await _mean_query_ms(conn)
            total, maximum = int(counts["total"]), int(counts["max_connections"])
            return DatabaseHealth(
                active_connections=int(counts["active"]),
                total_connections=total,
                max_connections=maximum,
                pool_utilisation_pct=round(100.0 * total / maximum, 1) if maximum else 0.0,
                long_running=long_running,
                mean_query_ms=mean,
                mean_query_source=source,
                latency_ms=elapsed_ms(started),
            )

        return await self.run("database health", work)

    async def aclose(self) -> None:
        """Nothing to close: each call opens and closes its own connection."""

    async def __aenter__(self) -> SupabaseDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _long_queries(conn: asyncpg.Connection, seconds: float, max_chars: int) -> list[LongQuery]:
    rows = await conn.fetch(LONG_QUERIES_SQL, seconds, max_chars)
    return [
        LongQuery(
            pid=r["pid"],
            duration_s=round(float(r["duration_s"]), 3),
            state=r["state"],
            query=r["query"] or "",
            wait_event_type=r["wait_event_type"],
            wait_event=r["wait_event"],
            blocking_pids=list(r["blocking_pids"] or []),
            application_name=r["application_name"],
        )
        for r in rows
    ]


async def _mean_query_ms(
    conn: asyncpg.Connection,
) -> tuple[float | None, Literal["pg_stat_statements", "pg_stat_activity"]]:
    import asyncpg

    has_statements = await conn.fetchval(
        "select exists(select 1 from pg_extension where extname = 'pg_stat_statements')"
    )
    if has_statements:
        try:
            value = await conn.fetchval(MEAN_STATEMENTS_SQL)
            return (round(float(value), 3) if value is not None else None), "pg_stat_statements"
        except asyncpg.PostgresError:
            pass  # extension created but not preloaded: fall back to the live activity
    value = await conn.fetchval(MEAN_ACTIVITY_SQL)
    return (round(float(value), 3) if value is not None else None), "pg_stat_activity"


# Management API


class ServiceHealth(BaseModel):
    """One service of the project as the Management API reports it."""

    name: str
    status: ServiceStatus
    healthy: bool
    error: str | None = None


class ProjectHealth(BaseModel):
    """The project's services; healthy when every one is ACTIVE_HEALTHY."""

    services: list[ServiceHealth]
    latency_ms: float

    @property
    def healthy(self) -> bool:
        """Return True when every service is ACTIVE_HEALTHY."""
        return bool(self.services) and all(s.healthy for s in self.services)

    @property
    def unhealthy(self) -> list[str]:
        """Return the names of services that are not ACTIVE_HEALTHY."""
        return [s.name for s in self.services if not s.healthy]


class SupabaseManagement(BaseClient):
    """The Supabase Management API (`Authorization: Bearer sbp_…`, 120 requests/min)."""

    vendor = "supabase api"

    def __init__(self, http: HttpClient, project_ref: str) -> None:
        super().__init__(http)
        self.project_ref = project_ref

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> SupabaseManagement:
        """Build from settings; NotConfigured names RUNBOOK_SUPABASE_ACCESS_TOKEN/_PROJECT_REF if unset."""
        require("supabase api", settings, "supabase_access_token", "supabase_project_ref")
        http = HttpClient(
            "supabase api",
            settings.supabase_api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {secret_value(settings.supabase_access_token)}"},
            policy=policy,
            secrets=settings_secrets(settings),
            sleep=sleep,
        )
        return cls(http, settings.supabase_project_ref or "")

    async def project_health(
        self, services: tuple[str, ...] = ("auth", "db", "rest"), timeout_ms: int = 2000
    ) -> ProjectHealth:
        """Return the health of the project's services."""
        if not PROJECT_REF.match(self.project_ref):
            raise InputError(f"not a Supabase project ref (20 lowercase letters): {self.project_ref[:24]!r}")
        started = time.perf_counter()
        params = [("services", s) for s in services] + [("timeout_ms", str(timeout_ms))]
        body = await self.http.json(
            "GET", f"/v1/projects/{self.project_ref}/health", operation="project health", params=params
        )
        out = []
        for item in body if isinstance(body, list) else []:
            raw = str(item.get("status") or "UNKNOWN")
            status: ServiceStatus = raw if raw in ("COMING_UP", "ACTIVE_HEALTHY", "UNHEALTHY") else "UNKNOWN"  # type: ignore[assignment]
            error = item.get("error")
            out.append(
                ServiceHealth(
                    name=str(item.get("name") or ""),
                    status=status,
                    healthy=status == "ACTIVE_HEALTHY",
                    error=self.http.redact(str(error))[:300] if error else None,
                )
            )
        return ProjectHealth(services=out, latency_ms=elapsed_ms(started))
