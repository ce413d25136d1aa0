"""First open of a fresh incident store from many processes and tasks at once: the schema is created once, no error."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateTable

from runbook.models import Incident, Severity
from runbook.store import SCHEMA_VERSION, IncidentStore, metadata, open_store

pytestmark = pytest.mark.asyncio

OPENER = textwrap.dedent("""
    import asyncio, os, sys, time
    from runbook.models import Incident, Severity
    from runbook.store import open_store

    url, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

    async def one(i: int) -> str:
        async with open_store(url) as store:
            inc, _ = await store.declare(Incident(title=f"opener {os.getpid()}-{i}", severity=Severity.P3))
            return inc.id

    async def main() -> None:
        results = await asyncio.gather(*[one(i) for i in range(n)], return_exceptions=True)
        bad = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
        print("BAD " + " | ".join(bad) if bad else "OK")

    open(f"{go}.ready-{os.getpid()}", "w").close()
    while not os.path.exists(go):  # every process imported and waiting: released at once
        time.sleep(0.005)
    asyncio.run(main())
""")


async def test_a_fresh_sqlite_store_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    """Six processes of three tasks each open one fresh SQLite file at the same moment: all open it and write."""
    url, go = f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, url, str(go), "3"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(6)]
    deadline = time.monotonic() + 120
    # Wait until every process has imported and waits for the go file, then release them together.
    while len(list(tmp_path.glob("go.ready-*"))) < len(procs) and time.monotonic() < deadline \
            and all(p.poll() is None for p in procs):
        await asyncio.sleep(0.1)
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all(out.strip().splitlines()[-1] == "OK" for out in outputs), outputs
    async with open_store(url) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        assert len(await store.list()) == 18


async def test_a_fresh_store_opened_by_many_tasks_at_once(store_url: str) -> None:
    """Eight tasks of one process open one fresh store (SQLite and Postgres) at once: each one works."""
    async def one(i: int) -> str:
        async with open_store(store_url) as store:
            inc, _ = await store.declare(Incident(title=f"task {i}", severity=Severity.P3))
            return inc.id

    ids = await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(8)]), timeout=120)
    async with open_store(store_url) as store:
        assert {i.id for i in await store.list()} == set(ids)
        assert await store.schema_version() == SCHEMA_VERSION


async def test_tables_created_by_another_process_meanwhile_are_no_error(tmp_path: Path) -> None:
    """Someone else creates each of the first five tables between our check and our CREATE (as processes that
    race without the lock would): the first open sees them and carries on, instead of 'table … already exists'."""
    path = tmp_path / "raced.db"
    schema = {t.name: str(CreateTable(t).compile(dialect=sqlite_dialect.dialect())) for t in metadata.sorted_tables}
    raced: list[str] = []

    def competitor(table: Any, _connection: Any, **_kw: Any) -> None:
        if len(raced) < 5 and table.name not in raced:
            raced.append(table.name)
            other = sqlite3.connect(path, timeout=30)
            try:
                other.execute(schema[table.name])
                other.commit()
            finally:
                other.close()

    for table in metadata.sorted_tables:
        event.listen(table, "before_create", competitor)
    try:
        store = IncidentStore(f"sqlite:///{path}")
        try:
            await store.init()
            assert await store.schema_version() == SCHEMA_VERSION
            inc, created = await store.declare(Incident(title="after the race", severity=Severity.P2))
            assert created and (await store.get(inc.id)).title == "after the race"
        finally:
            await store.close()
    finally:
        for table in metadata.sorted_tables:
            event.remove(table, "before_create", competitor)
    assert len(raced) == 5
