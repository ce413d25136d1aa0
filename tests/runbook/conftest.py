"""Fixtures of the core's tests: a fresh incident store on each backend (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runbook.store import IncidentStore, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return a fresh store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'incidents.db'}"
    base: str = request.getfixturevalue("postgres_url")
    schema_db = f"runbook_{uuid.uuid4().hex[:10]}"
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'CREATE DATABASE "{schema_db}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return base.replace("/postgres?", f"/{schema_db}?").replace("postgresql://", "postgresql+asyncpg://")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[IncidentStore]:
    """Open a fresh store."""
    async with open_store(store_url) as s:
        yield s
