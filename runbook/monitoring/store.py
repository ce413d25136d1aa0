"""The monitor's state between runs, in small tables on the incident store's engine (SQLite file by default,
Postgres in production, so several workers share it): `monitor_breaches` (the breach state per rule and target),
`monitor_samples` (availability per cycle, for uptime; older samples are pruned), `monitor_rates` (a measured
value per cycle, such as the request rate and the route shares the baselines are learned from; pruned after the
policy's baseline window) and `monitor_heartbeats` (when each environment's monitor last completed a cycle: the
watchdog's evidence).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    select,
)

from runbook.models import utcnow
from runbook.monitoring.rules import BreachState
from runbook.store import IncidentStore, UTCDateTime

monitor_metadata = MetaData()

breaches_t = Table(
    "monitor_breaches",
    monitor_metadata,
    Column("key", String(300), primary_key=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=False),
)

samples_t = Table(
    "monitor_samples",
    monitor_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(100), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("up", Boolean, nullable=False),
)

rates_t = Table(
    "monitor_rates",
    monitor_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("metric", String(300), nullable=False, index=True),  # FEATURE_SHARE + a route name
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("value", Float, nullable=False),
)

# The dead man's switch's evidence: when each environment's monitor last completed a cycle (one row each).
heartbeats_t = Table(
    "monitor_heartbeats",
    monitor_metadata,
    Column("environment", String(100), primary_key=True),
    Column("at", UTCDateTime, nullable=False),
)


class MonitorStore:
    """The monitor's breach state and availability samples, on the incident store's database."""

    def __init__(self, url: str) -> None:
        self._store = IncidentStore(url)  # reuse its URL handling (drivers, SQLite pragmas, NullPool)
        self.engine = self._store.engine

    async def init(self) -> None:
        """Create the monitor's tables if missing (additive; the incident tables are untouched)."""
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(monitor_metadata.create_all)
                return
            except Exception:  # two processes creating the tables at once: the next pass sees them
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Release the engine."""
        await self.engine.dispose()

    async def states(self) -> dict[str, BreachState]:
        """Return every kept breach state by key."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(breaches_t.c.data))).all()
        out = {}
        for (data,) in rows:
            state = BreachState.model_validate(data)
            out[state.key] = state
        return out

    async def save(self, states: Iterable[BreachState], now: datetime | None = None) -> None:
        """Write these states (idle ones are deleted) in one transaction."""
        now = now or utcnow()
        async with self.engine.begin() as conn:
            for state in states:
                await conn.execute(delete(breaches_t).where(breaches_t.c.key == state.key))
                if not state.idle:
                    await conn.execute(insert(breaches_t).values(key=state.key, updated_at=now,
                                                                 data=state.model_dump(mode="json")))

    async def add_sample(self, target: str, up: bool, at: datetime | None = None) -> None:
        """Record one cycle's availability of a target."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(samples_t).values(target=target, at=at or utcnow(), up=up))

    async def uptime(self, target: str, window: timedelta, now: datetime | None = None) -> tuple[int, int]:
        """Return (available, total) cycles of a target in the window; prune samples older than it."""
        since = (now or utcnow()) - window
        async with self.engine.begin() as conn:
            await conn.execute(delete(samples_t).where(samples_t.c.at < since))
            row = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(samples_t.c.up.cast(Integer)), 0))
                .where(and_(samples_t.c.target == target, samples_t.c.at >= since))
            )).one()
        return int(row[1]), int(row[0])

    async def add_rates(self, values: Mapping[str, float], at: datetime | None = None) -> None:
        """Record one cycle's values of several metrics in one transaction."""
        if not values:
            return
        at = at or utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(insert(rates_t), [{"metric": m, "at": at, "value": float(v)} for m, v in values.items()])

    async def _values(self, named: ColumnElement[bool], window: timedelta, now: datetime | None
                      ) -> list[tuple[str, float]]:
        """Return (metric, value) of the metrics `named` selects in the window, oldest first; prune older ones."""
        since = (now or utcnow()) - window
        async with self.engine.begin() as conn:
            await conn.execute(delete(rates_t).where(and_(named, rates_t.c.at < since)))
            rows = (await conn.execute(select(rates_t.c.metric, rates_t.c.value).where(
                and_(named, rates_t.c.at >= since)).order_by(rates_t.c.at, rates_t.c.id))).all()
        return [(metric, float(value)) for metric, value in rows]

    async def rates_by_prefix(self, prefix: str, window: timedelta, now: datetime | None = None
                              ) -> dict[str, list[float]]:
        """Return the values in the window of every metric named `prefix…`, by the rest of the name, oldest first;
        prune their values older than the window."""
        out: dict[str, list[float]] = {}
        for metric, value in await self._values(rates_t.c.metric.startswith(prefix, autoescape=True), window, now):
            out.setdefault(metric[len(prefix):], []).append(value)
        return out

    async def beat(self, environment: str, at: datetime | None = None) -> None:
        """Record that the monitor of an environment completed a cycle now."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(heartbeats_t).where(heartbeats_t.c.environment == environment))
            await conn.execute(insert(heartbeats_t).values(environment=environment, at=at or utcnow()))

    async def last_beat(self, environment: str) -> datetime | None:
        """Return when the monitor of an environment last completed a cycle (None: never)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(heartbeats_t.c.at).where(
                heartbeats_t.c.environment == environment))).first()
        return row[0] if row else None

    async def rates(self, metric: str, window: timedelta, now: datetime | None = None) -> list[float]:
        """Return a metric's values in the window, oldest first; prune values older than it."""
        return [value for _, value in await self._values(rates_t.c.metric == metric, window, now)]


@asynccontextmanager
async def open_monitor_store(url: str | None = None) -> AsyncIterator[MonitorStore]:
    """Open the monitor's tables (the settings' monitor store, by default the incident store, unless a URL is given)."""
    if url is None:
        from runbook.settings import get_settings

        url = get_settings().resolved_monitor_store_url
    store = MonitorStore(url)
    try:
        await store.init()
        yield store
    finally:
        await store.close()
