"""The incident store: incidents, an append-only timeline, approvals, follow-ups, action items, raw alerts, locks.

SQLAlchemy async Core. SQLite file by default (zero set-up, and it is not the database under incident); Postgres by
URL in production. Deduplication of open incidents by alert fingerprint is enforced by a unique column that holds
the fingerprint only while the incident is open, so it holds under concurrency across processes.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

try:
    import fcntl
except ImportError:  # not POSIX (Windows): first opens are not serialized by a file lock, only re-checked
    fcntl = None  # type: ignore[assignment]

from runbook import clock, provenance
from runbook.errors import ConfigError, IncidentNotFound, InputError, InvalidTransition, RemediationLocked, StoreError
from runbook.models import (
    ALLOWED_TRANSITIONS,
    ActionItem,
    Alert,
    Approval,
    ApprovalRequest,
    FollowUp,
    FollowUpKind,
    Incident,
    Severity,
    Status,
    TimelineEvent,
    utcnow,
)
from runbook.policy import get_policy
from runbook.settings import redacted_url

# 1: the first schema; 2: timeline_events.provenance (what wrote each event), added to a version-1 store at init.
SCHEMA_VERSION = 2
INIT_ATTEMPTS = 10  # passes of init() when the schema is being created by others at the same time
_INIT_LOCK_KEY = 0x52554E424F4F4B  # Postgres advisory lock of the schema creation ("RUNBOOK")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise StoreError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

meta_t = Table("runbook_meta", metadata, Column("key", String(50), primary_key=True), Column("value", Text))

incidents_t = Table(
    "incidents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("status", String(20), nullable=False, index=True),
    Column("severity", String(2), nullable=False),
    Column("fingerprint", String(200), index=True),
    # Equals fingerprint while the incident is open, NULL after: unique → one open incident per fingerprint.
    Column("open_fingerprint", String(200), unique=True),
    Column("drill", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("resolved_at", UTCDateTime),
    Column("data", JSON, nullable=False),
)

timeline_t = Table(
    "timeline_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(40), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(50), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("summary", Text, nullable=False),
    Column("details", JSON, nullable=False),
    Column("flow_run_id", String(64)),
    Column("provenance", JSON),  # schema 2: code version and Prefect deployment/run of the writer (NULL before)
)

approvals_t = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(40), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=False),
)

# One row per plan that waits for a decision; `status` moves pending → claimed → decided with compare-and-set
# updates, so two clicks at once (Slack, the drill) give exactly one decision.
approval_requests_t = Table(
    "approval_requests",
    metadata,
    Column("flow_run_id", String(64), primary_key=True),
    Column("plan_hash", String(64), primary_key=True),
    Column("action", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=False),
    Column("claim", JSON),
    Column("message", JSON),
)

follow_ups_t = Table(
    "follow_ups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(40), ForeignKey("incidents.id"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("due", UTCDateTime, nullable=False),
    Column("done", Boolean, nullable=False, default=False),
    Column("flow_run_id", String(64)),
    UniqueConstraint("incident_id", "kind", name="uq_follow_up_once"),
)

action_items_t = Table(
    "action_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(40), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("title", String(300), nullable=False),
    Column("owner", String(100), nullable=False),
    Column("due", Date, nullable=False),
    Column("done", Boolean, nullable=False, default=False),
    Column("reminded_at", UTCDateTime),
    Column("escalated_at", UTCDateTime),
)

alerts_t = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("source", String(100)),
    Column("fingerprint", String(200)),
    Column("valid", Boolean, nullable=False),
    Column("error", Text),
    Column("incident_id", String(40)),
    Column("raw", JSON, nullable=False),
)

locks_t = Table(
    "locks",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# The circuit breaker's count: one row per applied remediation (held across workers and restarts).
applications_t = Table(
    "remediation_applications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(100), nullable=False, index=True),
    Column("action", String(100), nullable=False),
    Column("target", String(200), nullable=False),
    Column("incident_id", String(40)),
    Column("flow_run_id", String(64)),
    Column("at", UTCDateTime, nullable=False, index=True),
)

# The freeze (kill switch): a row per freeze; `lifted_at` NULL while it holds. environment "*" = every environment.
freezes_t = Table(
    "freezes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(100), nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("by", String(100), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("lifted_at", UTCDateTime),
    Column("lifted_by", String(100)),
)


class Admitted(NamedTuple):
    """What recording an alert's incident did: `created` it, `reopened` the one resolved within the reopen window
    (`event`: its `reopened` timeline event), or attached it to the open one as a `duplicate`."""

    incident: Incident
    outcome: Literal["created", "reopened", "duplicate"]
    event: TimelineEvent | None = None


def _pk(result: Any) -> int:
    """Return the primary key an INSERT produced."""
    key = result.inserted_primary_key
    if not key:
        raise StoreError("the database returned no primary key for an insert")
    return int(key[0])


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))


def _response_due(incident: Incident) -> datetime:
    """When the response time of the policy in force runs out (the runbook's default without a policy file)."""
    return get_policy().response_due(incident)


class IncidentStore:
    """Async access to the incident record."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            sa_url = make_url(url)
        except ArgumentError:  # the text is not echoed: a mistyped URL may still hold a password
            raise ConfigError("the incident store URL (RUNBOOK_STORE_URL / RUNBOOK_MONITOR_STORE_URL) is not a "
                              "database URL: use postgresql://user:password@host:5432/db or sqlite:///path") from None
        if sa_url.drivername == "sqlite":
            url = str(sa_url.set(drivername="sqlite+aiosqlite"))
        elif sa_url.drivername in {"postgresql", "postgres"}:
            url = str(sa_url.set(drivername="postgresql+asyncpg"))
        self._sqlite = url.startswith("sqlite")
        connect_args: dict[str, Any] = {"timeout": 30} if self._sqlite else {}
        if self._sqlite and sa_url.database and sa_url.database != ":memory:":
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        # NullPool: flows and tasks run in several event loops and threads; a pooled connection must not cross them.
        try:
            self.engine: AsyncEngine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
        except (NoSuchModuleError, ImportError, ArgumentError) as exc:
            raise ConfigError(f"the incident store {redacted_url(self.url)}: database {sa_url.drivername!r} is not "
                              f"supported ({type(exc).__name__}); use postgresql:// or sqlite://") from None
        if self._sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def backend(self) -> str:
        return "sqlite" if self._sqlite else "postgresql"

    async def init(self) -> None:
        """Create the schema if missing and check its version; safe when several processes open a fresh store.

        First opens are serialized: a file lock next to a SQLite file (across processes and the tasks of one
        process), a transaction-scoped advisory lock on Postgres. A table created meanwhile by someone not taking
        the lock (`table … already exists`) is checked again, not an error.
        """
        async with self._first_open_lock():
            for attempt in range(INIT_ATTEMPTS):
                try:
                    async with self.engine.begin() as conn:
                        if not self._sqlite:
                            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INIT_LOCK_KEY})
                        await conn.run_sync(metadata.create_all, checkfirst=True)
                        row = (await conn.execute(
                            select(meta_t.c.value).where(meta_t.c.key == "schema_version"))).first()
                        if row is None:
                            await conn.execute(insert(meta_t).values(key="schema_version",
                                                                     value=str(SCHEMA_VERSION)))
                        elif int(row[0]) < SCHEMA_VERSION:
                            await self._migrate(conn, int(row[0]))
                        elif int(row[0]) > SCHEMA_VERSION:
                            raise StoreError(f"store schema version {row[0]} is newer than this runbook "
                                             f"({SCHEMA_VERSION}); upgrade")
                    return
                except IntegrityError:
                    # Another process recorded the schema version at the same moment; the next pass sees it.
                    if attempt == INIT_ATTEMPTS - 1:
                        raise
                except StoreError:
                    raise
                except Exception as exc:  # a table or the version created meanwhile (SQLite: "already exists",
                    # Postgres: ProgrammingError/IntegrityError on a racing CREATE), or the file busy: check again
                    if attempt == INIT_ATTEMPTS - 1:
                        raise StoreError(f"the incident store at {redacted_url(self.url)} cannot be used: "
                                         f"{_cause(exc, self.url)}") from exc
                    if not _already_exists(exc):
                        await asyncio.sleep(0.2)

    @asynccontextmanager
    async def _first_open_lock(self) -> AsyncIterator[None]:
        """Hold an exclusive lock on `<file>.init-lock` beside a SQLite store file while its schema is created."""
        database = make_url(self.url).database if self._sqlite else None
        if not database or database == ":memory:" or fcntl is None:
            yield
            return
        lock_path = Path(f"{database}.init-lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # flock conflicts between open files, also two of one process; waited in a thread so that another
            # task of this event loop that holds it can finish meanwhile.
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    async def _migrate(self, conn: AsyncConnection, version: int) -> None:
        """Bring an older store up to SCHEMA_VERSION in place; what it holds stays readable."""
        if version < 2:
            columns = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("timeline_events")})
            if "provenance" not in columns:
                kind = JSON().compile(dialect=conn.dialect)
                guard = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""  # another process's init
                await conn.execute(text(f"ALTER TABLE timeline_events ADD COLUMN{guard} provenance {kind}"))
        await conn.execute(update(meta_t).where(meta_t.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    async def schema_version(self) -> int:
        """Return the store's schema version."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(meta_t.c.value).where(meta_t.c.key == "schema_version"))).first()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        """Release the engine."""
        await self.engine.dispose()

    # -- incidents --------------------------------------------------------------------------------------------

    @staticmethod
    def _row(incident: Incident) -> dict[str, Any]:
        return {
            "status": incident.status.value,
            "severity": incident.severity.value,
            "fingerprint": incident.fingerprint,
            "open_fingerprint": incident.fingerprint if incident.status.is_open else None,
            "drill": incident.drill,
            "created_at": incident.created_at,
            "resolved_at": incident.resolved_at,
            "data": incident.model_dump(mode="json"),
        }

    async def _get(self, conn: AsyncConnection, incident_id: str) -> Incident:
        row = (await conn.execute(select(incidents_t.c.data).where(incidents_t.c.id == incident_id))).first()
        if row is None:
            raise IncidentNotFound(f"no incident {incident_id!r}")
        return Incident.model_validate(row[0])

    async def _save(self, conn: AsyncConnection, incident: Incident) -> None:
        await conn.execute(update(incidents_t).where(incidents_t.c.id == incident.id).values(**self._row(incident)))

    async def _event(self, conn: AsyncConnection, incident_id: str, ev: TimelineEvent) -> TimelineEvent:
        """Insert one timeline event, stamped with its provenance (the code and the Prefect run writing it)."""
        written_by = _jsonable(ev.provenance or provenance.current())
        result = await conn.execute(
            insert(timeline_t).values(
                incident_id=incident_id,
                at=ev.at,
                kind=ev.kind,
                actor=ev.actor,
                summary=ev.summary,
                details=_jsonable(ev.details),
                flow_run_id=ev.flow_run_id,
                provenance=written_by,
            )
        )
        return ev.model_copy(update={"id": _pk(result), "provenance": written_by})

    async def declare(
        self, incident: Incident, alert: Alert | None = None, *, actor: str = "runbook", flow_run_id: str | None = None
    ) -> tuple[Incident, bool]:
        """Create the incident, or attach to the open one with the same fingerprint (or reopen the one resolved
        within the policy's reopen window, see `admit`); return (incident, created)."""
        admitted = await self.admit(incident, alert, actor=actor, flow_run_id=flow_run_id)
        return admitted.incident, admitted.outcome == "created"

    async def admit(
        self, incident: Incident, alert: Alert | None = None, *, actor: str = "runbook", flow_run_id: str | None = None,
        reopen_within: timedelta | None = None,
    ) -> Admitted:
        """Record an alert's incident: reopen, attach or create; return what happened (`Admitted`).

        Its fingerprint's incident resolved less than `reopen_within` ago (default: the policy's
        `response.reopen_window_minutes`, on the runbook clock) is reopened: back to investigating, with a
        status change from resolved and a `reopened` event carrying the alert; its follow-ups not yet done are
        withdrawn (they are scheduled again from the final resolution); its acknowledgement is cleared and its
        escalation counts from the reopen (`reopened_at`): a new response cycle. The reopen is a compare-and-set on the
        resolved row that takes the unique open fingerprint, so of two alerts at once exactly one reopens and
        the other attaches to it as a duplicate. An open incident with the fingerprint gets the alert attached;
        otherwise the incident is created.
        """
        if incident.fingerprint:
            reopened = await self._reopen_recent(incident, alert, actor=actor, flow_run_id=flow_run_id,
                                                 within=reopen_within)
            if reopened is not None:
                return reopened
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(incidents_t).values(id=incident.id, **self._row(incident)))
                await self._event(
                    conn,
                    incident.id,
                    TimelineEvent(
                        at=incident.created_at,
                        kind="declared",
                        actor=actor,
                        summary=f"{incident.severity} declared: {incident.title}",
                        details={"source": incident.source, "fingerprint": incident.fingerprint,
                                 "alert": alert.model_dump(mode="json") if alert else None},
                        flow_run_id=flow_run_id,
                    ),
                )
                if alert is not None:
                    await self._alert(conn, alert, valid=True, error=None, incident_id=incident.id)
            return Admitted(incident, "created")
        except IntegrityError:
            if not incident.fingerprint:
                raise
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(incidents_t.c.id).where(incidents_t.c.open_fingerprint == incident.fingerprint)
                )
            ).first()
            if row is None:
                raise StoreError(f"fingerprint {incident.fingerprint!r} conflicted but no open incident holds it")
            existing = await self._get(conn, row[0])
            await self._event(
                conn,
                existing.id,
                TimelineEvent(
                    kind="duplicate_alert",
                    actor=actor,
                    summary=f"Duplicate alert attached: {alert.summary if alert else incident.title}",
                    details={"alert": alert.model_dump(mode="json") if alert else None, "title": incident.title},
                    flow_run_id=flow_run_id,
                ),
            )
            if alert is not None:
                await self._alert(conn, alert, valid=True, error=None, incident_id=existing.id)
            return Admitted(existing, "duplicate")

    async def _reopen_recent(self, incident: Incident, alert: Alert | None, *, actor: str, flow_run_id: str | None,
                             within: timedelta | None) -> Admitted | None:
        """Reopen the fingerprint's incident resolved within the window; None when there is none or another
        caller reopened it first (the caller then attaches to it)."""
        if within is None:
            within = timedelta(minutes=get_policy().response.reopen_window_minutes)
        if within <= timedelta(0):
            return None
        fingerprint = incident.fingerprint
        now = clock.now()
        c = incidents_t.c
        async with self.engine.connect() as conn:
            if (await conn.execute(select(c.id).where(c.open_fingerprint == fingerprint))).first() is not None:
                return None  # open: the alert attaches to it
            rows = (await conn.execute(
                select(c.id, c.resolved_at, c.data)
                .where(and_(c.fingerprint == fingerprint, c.status == Status.RESOLVED.value,
                            c.resolved_at.is_not(None), c.resolved_at >= now - within))
                .order_by(c.resolved_at.desc()).limit(5))).all()
        candidate = next((r for r in rows if not (r[2] or {}).get("merged_into")), None)
        if candidate is None:
            return None
        incident_id, resolved_at = candidate[0], candidate[1]
        at = utcnow()
        try:
            async with self.engine.begin() as conn:
                # Compare-and-set: only a row still resolved is taken; the unique open fingerprint
                # refuses it while another incident of the fingerprint is open.
                taken = await conn.execute(
                    update(incidents_t)
                    .where(and_(c.id == incident_id, c.status == Status.RESOLVED.value))
                    .values(status=Status.INVESTIGATING.value, open_fingerprint=fingerprint, resolved_at=None))
                if taken.rowcount != 1:
                    return None
                current = await self._get(conn, incident_id)
                # A new response cycle: the escalation counts from now and waits for a new acknowledgement (the
                # first one stays on the timeline, where MTTA is read).
                reopened = current.model_copy(update={
                    "status": Status.INVESTIGATING, "resolved_at": None, "reopened_at": at,
                    "acknowledged_at": None, "acknowledged_by": None, "acknowledged_via": None})
                await self._save(conn, reopened)
                withdrawn = [dict(r) for r in (await conn.execute(
                    select(follow_ups_t.c.kind, follow_ups_t.c.due, follow_ups_t.c.flow_run_id)
                    .where(and_(follow_ups_t.c.incident_id == incident_id, follow_ups_t.c.done.is_(False)))
                )).mappings().all()]
                await conn.execute(delete(follow_ups_t).where(
                    and_(follow_ups_t.c.incident_id == incident_id, follow_ups_t.c.done.is_(False))))
                ago = max(0.0, (now - resolved_at).total_seconds() / 60)
                what = alert.summary if alert else incident.title
                alert_json = alert.model_dump(mode="json") if alert else None
                await self._event(conn, incident_id, TimelineEvent(
                    at=at, kind="status_changed", actor=actor,
                    summary=f"Status resolved → investigating: the problem returned ({what})",
                    details={"from": Status.RESOLVED.value, "to": Status.INVESTIGATING.value, "reopened": True},
                    flow_run_id=flow_run_id))
                event_ = await self._event(conn, incident_id, TimelineEvent(
                    at=at, kind="reopened", actor=actor,
                    summary=f"Reopened: the problem returned {ago:.0f} min after it was resolved — {what}",
                    details={"alert": alert_json, "fingerprint": fingerprint, "resolved_at": resolved_at.isoformat(),
                             "minutes_after_resolution": round(ago, 2),
                             "window_minutes": within.total_seconds() / 60,
                             "acknowledged_before_by": current.acknowledged_by,
                             "withdrawn_follow_ups": [{"kind": w["kind"], "due": w["due"].isoformat(),
                                                       "flow_run_id": w["flow_run_id"]} for w in withdrawn]},
                    flow_run_id=flow_run_id))
                if alert is not None:
                    await self._alert(conn, alert, valid=True, error=None, incident_id=incident_id)
        except IntegrityError:
            return None  # another incident of the fingerprint opened meanwhile: attach to it
        return Admitted(reopened, "reopened", event_)

    async def get(self, incident_id: str) -> Incident:
        """Return one incident."""
        async with self.engine.connect() as conn:
            return await self._get(conn, incident_id)

    async def find_open(self, fingerprint: str) -> Incident | None:
        """Return the open incident holding this fingerprint, if any."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(incidents_t.c.data).where(incidents_t.c.open_fingerprint == fingerprint))
            ).first()
        return Incident.model_validate(row[0]) if row else None

    async def list(
        self,
        *,
        open_only: bool = False,
        include_drill: bool = True,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 200,
    ) -> builtins.list[Incident]:
        """Return incidents, newest first."""
        q = select(incidents_t.c.data).order_by(incidents_t.c.created_at.desc()).limit(limit)
        if open_only:
            q = q.where(incidents_t.c.status != Status.RESOLVED.value)
        if not include_drill:
            q = q.where(incidents_t.c.drill.is_(False))
        if since is not None:
            q = q.where(incidents_t.c.created_at >= since)
        if until is not None:
            q = q.where(incidents_t.c.created_at < until)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [Incident.model_validate(r[0]) for r in rows]

    async def update(self, incident_id: str, **fields: Any) -> Incident:
        """Set fields of the record (statuspage id, root cause …); status changes go through transition()."""
        if "status" in fields or "id" in fields:
            raise InputError("use transition() to change status; ids never change")
        async with self.engine.begin() as conn:
            current = await self._get(conn, incident_id)
            try:
                changed = Incident.model_validate({**current.model_dump(), **fields})
            except Exception as exc:
                raise InputError(f"invalid incident fields: {exc}") from None
            await self._save(conn, changed)
            return changed

    async def transition(
        self,
        incident_id: str,
        status: Status | str,
        *,
        actor: str = "runbook",
        summary: str = "",
        details: dict[str, Any] | None = None,
        flow_run_id: str | None = None,
        at: datetime | None = None,
    ) -> Incident:
        """Move the incident along the status lifecycle; the same status again is a no-op."""
        status = Status(status)
        at = at or utcnow()
        async with self.engine.begin() as conn:
            current = await self._get(conn, incident_id)
            if current.status == status:
                return current
            if status not in ALLOWED_TRANSITIONS[current.status]:
                raise InvalidTransition(f"{incident_id}: {current.status} → {status} is not allowed")
            changes: dict[str, Any] = {"status": status}
            if status is Status.IDENTIFIED and current.identified_at is None:
                changes["identified_at"] = at
            if status is Status.MONITORING and current.mitigated_at is None:
                changes["mitigated_at"] = at
            if status is Status.RESOLVED:
                changes["resolved_at"] = at
            if current.status is Status.RESOLVED:
                changes["resolved_at"] = None
            changed = current.model_copy(update=changes)
            try:
                await self._save(conn, changed)
            except IntegrityError:
                raise InvalidTransition(
                    f"{incident_id}: cannot reopen, another open incident holds fingerprint {current.fingerprint}"
                ) from None
            await self._event(
                conn,
                incident_id,
                TimelineEvent(
                    at=at,
                    kind="status_changed",
                    actor=actor,
                    summary=summary or f"Status {current.status} → {status}: {status.meaning}",
                    details={"from": current.status.value, "to": status.value, **(details or {})},
                    flow_run_id=flow_run_id,
                ),
            )
            return changed

    async def acknowledge(
        self,
        incident_id: str,
        by: str,
        *,
        at: datetime | None = None,
        flow_run_id: str | None = None,
        via: str = "api",
        identity: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> tuple[Incident, bool]:
        """Record the acknowledgement once; return (incident, newly_acknowledged).

        `via` names the channel (prefect-ui, slack, pagerduty, cli, api, …), `identity` the verified identity when
        the channel has one (a Slack user id, a PagerDuty user id); both go on the timeline event.
        """
        if not by.strip():
            raise InputError("an acknowledgement needs who acknowledged")
        at = at or utcnow()
        async with self.engine.begin() as conn:
            current = await self._get(conn, incident_id)
            if current.acknowledged_at is not None:
                return current, False
            changed = current.model_copy(
                update={"acknowledged_at": at, "acknowledged_by": by.strip(), "acknowledged_via": via}
            )
            await self._save(conn, changed)
            late = at > _response_due(current)
            extra = {"via": via, **({"identity": identity} if identity else {}), **(details or {})}
            await self._event(
                conn,
                incident_id,
                TimelineEvent(
                    at=at,
                    kind="acknowledged",
                    actor=by.strip(),
                    summary=f"Acknowledged by {by.strip()} via {via}",
                    details={"seconds_to_ack": (at - current.created_at).total_seconds(), "late": late, **extra},
                    flow_run_id=flow_run_id,
                ),
            )
            return changed, True

    async def set_severity(
        self,
        incident_id: str,
        severity: Severity | str,
        *,
        actor: str,
        summary: str = "",
        details: dict[str, Any] | None = None,
        flow_run_id: str | None = None,
        at: datetime | None = None,
    ) -> tuple[Incident, bool]:
        """Change the severity (recorded with who and why); return (incident, changed). The same one is a no-op."""
        severity = Severity(severity)
        at = at or utcnow()
        async with self.engine.begin() as conn:
            current = await self._get(conn, incident_id)
            if current.severity is severity:
                return current, False
            changed = current.model_copy(update={"severity": severity, "severity_set_at": at})
            await self._save(conn, changed)
            await self._event(
                conn,
                incident_id,
                TimelineEvent(
                    at=at,
                    kind="severity_changed",
                    actor=actor,
                    summary=summary or f"Severity {current.severity} → {severity} ({severity.label})",
                    details={"from": current.severity.value, "to": severity.value, **(details or {})},
                    flow_run_id=flow_run_id,
                ),
            )
            return changed, True

    async def link(
        self, incident_id: str, other_id: str, *, actor: str, details: dict[str, Any] | None = None,
        flow_run_id: str | None = None,
    ) -> tuple[Incident, Incident, bool]:
        """Relate two incidents both ways (a timeline event on each); return (incident, other, newly_linked)."""
        if incident_id == other_id:
            raise InputError("an incident cannot be linked to itself")
        async with self.engine.begin() as conn:
            first, second = await self._get(conn, incident_id), await self._get(conn, other_id)
            if other_id in first.links and incident_id in second.links:
                return first, second, False
            first = first.model_copy(update={"links": sorted({*first.links, other_id})})
            second = second.model_copy(update={"links": sorted({*second.links, incident_id})})
            for this, that in ((first, second), (second, first)):
                await self._save(conn, this)
                await self._event(conn, this.id, TimelineEvent(
                    kind="linked", actor=actor, summary=f"Linked to {that.id} ({that.severity} {that.title})",
                    details={"other": that.id, **(details or {})}, flow_run_id=flow_run_id))
            return first, second, True

    async def merge(
        self, survivor_id: str, duplicate_id: str, *, actor: str, reason: str = "",
        details: dict[str, Any] | None = None, flow_run_id: str | None = None,
    ) -> tuple[Incident, Incident, bool]:
        """Merge a duplicate into the survivor; return (survivor, duplicate, newly_merged).

        The survivor gets the duplicate's timeline (each event copied, marked `merged_from`), its approvals and
        action items, the earlier detection and acknowledgement, the higher severity, and the duplicate's alert
        fingerprint when it has none (later alerts then attach to the survivor). The duplicate is resolved
        pointing at the survivor. Merging again is a no-op.
        """
        if survivor_id == duplicate_id:
            raise InputError("an incident cannot be merged into itself")
        at = utcnow()
        async with self.engine.begin() as conn:
            survivor, duplicate = await self._get(conn, survivor_id), await self._get(conn, duplicate_id)
            if duplicate.merged_into == survivor_id:
                return survivor, duplicate, False
            if duplicate.merged_into:
                raise InvalidTransition(f"{duplicate_id} was already merged into {duplicate.merged_into}")
            if survivor.merged_into:
                raise InvalidTransition(f"{survivor_id} was merged into {survivor.merged_into}; merge into that one")
            if not survivor.status.is_open:
                raise InvalidTransition(f"{survivor_id} is resolved; reopen it or merge the other way round")
            extra = {**(details or {}), **({"reason": reason} if reason else {})}
            rows = (await conn.execute(
                select(timeline_t).where(timeline_t.c.incident_id == duplicate_id).order_by(timeline_t.c.id)
            )).mappings().all()
            for r in rows:
                await conn.execute(insert(timeline_t).values(
                    incident_id=survivor_id, at=r["at"], kind=r["kind"], actor=r["actor"],
                    summary=f"[{duplicate_id}] {r['summary']}",
                    details={**(r["details"] or {}), "merged_from": duplicate_id, "merged_event_id": r["id"]},
                    flow_run_id=r["flow_run_id"], provenance=r["provenance"]))
            for a in (await conn.execute(select(approvals_t).where(approvals_t.c.incident_id == duplicate_id))
                      ).mappings().all():
                await conn.execute(insert(approvals_t).values(incident_id=survivor_id, at=a["at"], data=a["data"]))
            await conn.execute(update(action_items_t).where(action_items_t.c.incident_id == duplicate_id)
                               .values(incident_id=survivor_id))
            # Close the duplicate first: its open fingerprint must be free before the survivor may take it.
            closed = duplicate.model_copy(update={
                "status": Status.RESOLVED, "resolved_at": duplicate.resolved_at or at, "merged_into": survivor_id,
                "links": sorted({*duplicate.links, survivor_id})})
            await self._save(conn, closed)
            await self._event(conn, duplicate_id, TimelineEvent(
                at=at, kind="merged", actor=actor,
                summary=f"Merged into {survivor_id} (duplicate of the same outage); continue there"
                + (f": {reason}" if reason else ""),
                details={"merged_into": survivor_id, **extra}, flow_run_id=flow_run_id))
            if duplicate.status.is_open:
                await self._event(conn, duplicate_id, TimelineEvent(
                    at=at, kind="status_changed", actor=actor,
                    summary=f"Status {duplicate.status} → resolved: merged into {survivor_id}",
                    details={"from": duplicate.status.value, "to": "resolved", "merged_into": survivor_id},
                    flow_run_id=flow_run_id))
            candidates = [x for x in (survivor.acknowledged_at, duplicate.acknowledged_at) if x]
            first_ack = min(candidates) if candidates else None
            acked_by = survivor if survivor.acknowledged_at == first_ack else duplicate
            merged = survivor.model_copy(update={
                "created_at": min(survivor.created_at, duplicate.created_at),
                "severity": min(survivor.severity, duplicate.severity, key=lambda s: s.rank),
                "acknowledged_at": first_ack, "acknowledged_by": acked_by.acknowledged_by if first_ack else None,
                "acknowledged_via": acked_by.acknowledged_via if first_ack else None,
                "fingerprint": survivor.fingerprint or duplicate.fingerprint,
                "scenario": survivor.scenario or duplicate.scenario,
                "statuspage_incident_id": survivor.statuspage_incident_id or duplicate.statuspage_incident_id,
                "links": sorted({*survivor.links, duplicate_id} - {survivor_id}),
                "labels": {**duplicate.labels, **survivor.labels},
            })
            await self._save(conn, merged)
            await self._event(conn, survivor_id, TimelineEvent(
                at=at, kind="merged", actor=actor,
                summary=f"Merged {duplicate_id} ({duplicate.severity} {duplicate.title}) into this incident: "
                f"{len(rows)} timeline events" + (f" — {reason}" if reason else ""),
                details={"merged_from": duplicate_id, "events": len(rows), **extra}, flow_run_id=flow_run_id))
            return merged, closed, True

    async def active_locks(self, prefix: str = "") -> builtins.list[dict[str, Any]]:
        """Return the locks held now (not expired) whose name starts with prefix."""
        q = select(locks_t).where(and_(locks_t.c.name.startswith(prefix), locks_t.c.expires_at >= utcnow()))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    # -- timeline ---------------------------------------------------------------------------------------------

    async def append_event(self, incident_id: str, ev: TimelineEvent) -> TimelineEvent:
        """Append one event to the incident's timeline (the timeline is append-only)."""
        async with self.engine.begin() as conn:
            await self._get(conn, incident_id)
            return await self._event(conn, incident_id, ev)

    async def timeline(self, incident_id: str, kind: str | None = None) -> builtins.list[TimelineEvent]:
        """Return the incident's timeline in order."""
        q = select(timeline_t).where(timeline_t.c.incident_id == incident_id).order_by(timeline_t.c.at, timeline_t.c.id)
        if kind is not None:
            q = q.where(timeline_t.c.kind == kind)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [
            TimelineEvent(id=r["id"], at=r["at"], kind=r["kind"], actor=r["actor"], summary=r["summary"],
                          details=r["details"] or {}, flow_run_id=r["flow_run_id"], provenance=r["provenance"] or {})
            for r in rows
        ]

    # -- approvals --------------------------------------------------------------------------------------------

    async def record_approval(self, incident_id: str, approval: Approval, flow_run_id: str | None = None) -> None:
        """Record a decision on a plan, and its timeline event."""
        async with self.engine.begin() as conn:
            await self._get(conn, incident_id)
            await conn.execute(
                insert(approvals_t).values(incident_id=incident_id, at=approval.at,
                                           data=approval.model_dump(mode="json"))
            )
            verb = {"approve": "approved", "reject": "rejected", "timeout": "timed out"}[approval.decision]
            await self._event(
                conn,
                incident_id,
                TimelineEvent(
                    at=approval.at,
                    kind="approval",
                    actor=approval.approver,
                    summary=f"{approval.action or 'Remediation'} {verb} by {approval.approver} via {approval.via}"
                    + (f": {approval.reason}" if approval.reason else ""),
                    details=approval.model_dump(mode="json"),
                    flow_run_id=flow_run_id,
                ),
            )

    async def approvals(self, incident_id: str) -> builtins.list[Approval]:
        """Return the decisions recorded on an incident, in order."""
        q = select(approvals_t.c.data).where(approvals_t.c.incident_id == incident_id).order_by(approvals_t.c.id)
        async with self.engine.connect() as conn:
            return [Approval.model_validate(r[0]) for r in (await conn.execute(q)).all()]

    # -- approval requests (one decision per plan) -------------------------------------------------------------

    @staticmethod
    def _request(row: Any) -> ApprovalRequest:
        return ApprovalRequest.model_validate({**row["data"], "status": row["status"], "claim": row["claim"],
                                               "message": row["message"] or {}})

    async def open_approval_request(self, request: ApprovalRequest) -> tuple[ApprovalRequest, bool]:
        """Register a plan waiting for a decision (once per run and hash); older pending plans of the run and
        action are superseded. Return (the stored request, newly opened)."""
        data = request.model_dump(mode="json", exclude={"status", "claim", "message"})
        c = approval_requests_t.c
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(approval_requests_t).where(
                and_(c.flow_run_id == request.flow_run_id, c.plan_hash == request.plan_hash)))).mappings().first()
            if row is not None:
                return self._request(row), False
            await conn.execute(update(approval_requests_t).where(
                and_(c.flow_run_id == request.flow_run_id, c.action == request.action, c.status == "pending"))
                .values(status="superseded"))
            await conn.execute(insert(approval_requests_t).values(
                flow_run_id=request.flow_run_id, plan_hash=request.plan_hash, action=request.action,
                status="pending", requested_at=request.requested_at, data=data, claim=None, message=None))
        return request.model_copy(update={"status": "pending", "claim": None, "message": {}}), True

    async def approval_request(self, flow_run_id: str, plan_hash: str | None = None,
                               action: str | None = None) -> ApprovalRequest | None:
        """Return the request of a run with that plan hash, or (no hash) the run's latest one (of an action)."""
        c = approval_requests_t.c
        q = select(approval_requests_t).where(c.flow_run_id == flow_run_id)
        if plan_hash is not None:
            q = q.where(c.plan_hash == plan_hash)
        if action is not None:
            q = q.where(c.action == action)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q.order_by(c.requested_at.desc()).limit(1))).mappings().first()
        return self._request(row) if row is not None else None

    async def newest_approval_request(self, action: str, incident_id: str) -> ApprovalRequest | None:
        """Return the most recent request of an action for an incident, whichever run made it."""
        c = approval_requests_t.c
        q = select(approval_requests_t).where(c.action == action).order_by(c.requested_at.desc()).limit(200)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return next((self._request(r) for r in rows if (r["data"] or {}).get("incident_id") == incident_id), None)

    async def claim_approval(self, flow_run_id: str, plan_hash: str, claim: Approval
                             ) -> tuple[ApprovalRequest | None, bool]:
        """Take the decision on a pending request (compare-and-set); return (the request now, whether we won)."""
        c = approval_requests_t.c
        async with self.engine.begin() as conn:
            result = await conn.execute(update(approval_requests_t).where(
                and_(c.flow_run_id == flow_run_id, c.plan_hash == plan_hash, c.status == "pending"))
                .values(status="claimed", claim=claim.model_dump(mode="json")))
            won = result.rowcount == 1
        return await self.approval_request(flow_run_id, plan_hash), won

    async def release_approval(self, flow_run_id: str, plan_hash: str, claim: Approval, *,
                               status: str = "pending") -> bool:
        """Give back a claim that could not be delivered (the run was no longer waiting); True if it was ours."""
        c = approval_requests_t.c
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(c.claim).where(
                and_(c.flow_run_id == flow_run_id, c.plan_hash == plan_hash, c.status == "claimed")))).all()
            if not rows or (rows[0][0] or {}).get("at") != claim.model_dump(mode="json")["at"]:
                return False
            result = await conn.execute(update(approval_requests_t).where(
                and_(c.flow_run_id == flow_run_id, c.plan_hash == plan_hash, c.status == "claimed"))
                .values(status=status, claim=None if status == "pending" else rows[0][0]))
            return result.rowcount == 1

    async def settle_approval(self, flow_run_id: str, plan_hash: str, approval: Approval) -> None:
        """Record the decision the flow took on a request (whatever channel it came from)."""
        c = approval_requests_t.c
        async with self.engine.begin() as conn:
            await conn.execute(update(approval_requests_t).where(
                and_(c.flow_run_id == flow_run_id, c.plan_hash == plan_hash))
                .values(status="decided", claim=approval.model_dump(mode="json")))

    async def set_approval_message(self, flow_run_id: str, plan_hash: str, message: dict[str, str]) -> None:
        """Remember where a request was posted (e.g. Slack channel id and message ts) to update it later."""
        c = approval_requests_t.c
        async with self.engine.begin() as conn:
            await conn.execute(update(approval_requests_t).where(
                and_(c.flow_run_id == flow_run_id, c.plan_hash == plan_hash)).values(message=message))

    # -- follow-ups -------------------------------------------------------------------------------------------

    async def add_follow_up(self, incident_id: str, follow_up: FollowUp) -> tuple[FollowUp, bool]:
        """Record a scheduled follow-up once per kind; return (follow_up, created)."""
        try:
            async with self.engine.begin() as conn:
                await self._get(conn, incident_id)
                result = await conn.execute(
                    insert(follow_ups_t).values(incident_id=incident_id, kind=follow_up.kind.value,
                                                due=follow_up.due, done=follow_up.done,
                                                flow_run_id=follow_up.flow_run_id)
                )
                return follow_up.model_copy(update={"id": _pk(result)}), True
        except IntegrityError:
            existing = [f for f in await self.follow_ups(incident_id) if f.kind == follow_up.kind]
            return existing[0], False

    async def follow_ups(self, incident_id: str) -> builtins.list[FollowUp]:
        """Return the incident's follow-ups."""
        q = select(follow_ups_t).where(follow_ups_t.c.incident_id == incident_id).order_by(follow_ups_t.c.due)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [FollowUp(id=r["id"], kind=FollowUpKind(r["kind"]), due=r["due"], done=r["done"],
                         flow_run_id=r["flow_run_id"]) for r in rows]

    async def set_follow_up(self, incident_id: str, kind: FollowUpKind, *, done: bool | None = None,
                            flow_run_id: str | None = None) -> None:
        """Mark a follow-up done or attach its flow run."""
        values: dict[str, Any] = {}
        if done is not None:
            values["done"] = done
        if flow_run_id is not None:
            values["flow_run_id"] = flow_run_id
        if not values:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(follow_ups_t)
                .where(and_(follow_ups_t.c.incident_id == incident_id, follow_ups_t.c.kind == kind.value))
                .values(**values)
            )

    # -- action items -----------------------------------------------------------------------------------------

    async def add_action_item(self, incident_id: str, item: ActionItem) -> ActionItem:
        """Add a post-incident action item."""
        async with self.engine.begin() as conn:
            await self._get(conn, incident_id)
            result = await conn.execute(
                insert(action_items_t).values(incident_id=incident_id, title=item.title, owner=item.owner,
                                              due=item.due, done=item.done)
            )
            return item.model_copy(update={"id": _pk(result)})

    async def action_items(self, incident_id: str) -> builtins.list[ActionItem]:
        """Return the incident's action items."""
        q = select(action_items_t).where(action_items_t.c.incident_id == incident_id).order_by(action_items_t.c.id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [ActionItem(id=r["id"], title=r["title"], owner=r["owner"], due=r["due"], done=r["done"],
                           reminded_at=r["reminded_at"], escalated_at=r["escalated_at"]) for r in rows]

    async def update_action_item(self, item_id: int, **fields: Any) -> None:
        """Set done / reminded_at / escalated_at on an action item."""
        allowed = {"done", "reminded_at", "escalated_at", "due", "owner"}
        if set(fields) - allowed:
            raise InputError(f"action items only change {sorted(allowed)}")
        async with self.engine.begin() as conn:
            await conn.execute(update(action_items_t).where(action_items_t.c.id == item_id).values(**fields))

    # -- raw alerts -------------------------------------------------------------------------------------------

    async def _alert(self, conn: AsyncConnection, alert: Alert | dict[str, Any], *, valid: bool, error: str | None,
                     incident_id: str | None) -> int:
        if isinstance(alert, Alert):
            raw = alert.raw or alert.model_dump(mode="json", exclude={"raw"})
            values = {"received_at": alert.received_at, "source": alert.source, "fingerprint": alert.fingerprint}
        else:
            raw = alert
            values = {"received_at": utcnow(), "source": str(alert.get("source", ""))[:100] or None,
                      "fingerprint": str(alert.get("fingerprint", ""))[:200] or None}
        result = await conn.execute(
            insert(alerts_t).values(valid=valid, error=error, incident_id=incident_id, raw=_jsonable(raw), **values)
        )
        return int(_pk(result))

    async def store_raw_alert(self, raw: dict[str, Any], *, error: str) -> int:
        """Keep an alert that failed validation, with the reason; return its id."""
        async with self.engine.begin() as conn:
            return await self._alert(conn, raw, valid=False, error=error, incident_id=None)

    async def alerts(self, *, valid: bool | None = None, fingerprint: str | None = None,
                     limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Return stored alerts, newest first (only those of one fingerprint when given)."""
        q = select(alerts_t).order_by(alerts_t.c.id.desc()).limit(limit)
        if valid is not None:
            q = q.where(alerts_t.c.valid.is_(valid))
        if fingerprint is not None:
            q = q.where(alerts_t.c.fingerprint == fingerprint)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    # -- locks ------------------------------------------------------------------------------------------------

    async def acquire_lock(self, name: str, holder: str, ttl: timedelta, *,
                           holder_gone: Callable[[str], Awaitable[bool]] | None = None) -> str | None:
        """Take a named lock or raise RemediationLocked naming the holder; return the holder taken over, if any.

        An expired lock is taken over; so is one whose holder is known dead before its TTL: `holder_gone(holder)`
        (default: `holder_run_ended`, the holder's Prefect flow run — named in the holder as `run <uuid>` — is in a
        final state: crashed with its worker, cancelled, or ended without releasing). Unknown means alive.
        """
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(delete(locks_t).where(and_(locks_t.c.name == name, locks_t.c.expires_at < now)))
        gone = holder_run_ended if holder_gone is None else holder_gone
        taken_over: str | None = None
        for attempt in range(2):
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(insert(locks_t).values(name=name, holder=holder, acquired_at=now,
                                                              expires_at=now + ttl))
                return taken_over
            except IntegrityError:
                async with self.engine.connect() as conn:
                    row = (await conn.execute(select(locks_t).where(locks_t.c.name == name))).mappings().first()
            if row and row["holder"] == holder:
                return None
            if row and attempt == 0 and await gone(row["holder"]):
                async with self.engine.begin() as conn:  # only that holder's row: a newer one stays
                    await conn.execute(delete(locks_t).where(and_(
                        locks_t.c.name == name, locks_t.c.holder == row["holder"],
                        locks_t.c.acquired_at == row["acquired_at"])))
                taken_over = row["holder"]
                continue
            break
        who = f"{row['holder']} since {row['acquired_at']:%H:%M:%S}Z" if row else "another run"
        raise RemediationLocked(f"{name} is held by {who}; wait for it to finish or resolve it first")

    async def break_lock(self, name: str, holder: str) -> bool:
        """Remove a lock held by `holder` whatever its expiry (an operator's unlock); True when it was there."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(locks_t).where(and_(locks_t.c.name == name,
                                                                   locks_t.c.holder == holder)))
        return bool(result.rowcount)

    async def release_lock(self, name: str, holder: str) -> None:
        """Release a lock held by holder (no-op otherwise)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(locks_t).where(and_(locks_t.c.name == name, locks_t.c.holder == holder)))

    # -- guardrails: the circuit breaker's count and the freeze ---------------------------------------------------

    async def record_application(self, environment: str, action: str, target: str, *, incident_id: str | None,
                                 flow_run_id: str | None, at: datetime | None = None) -> None:
        """Count one applied remediation for the circuit breaker."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(applications_t).values(
                environment=environment, action=action, target=target, incident_id=incident_id,
                flow_run_id=flow_run_id, at=at or utcnow()))

    async def applications(self, environment: str, *, since: datetime | None = None,
                           incident_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """Return the applied remediations of an environment (since a time, or of one incident), oldest first."""
        c = applications_t.c
        q = select(applications_t).where(c.environment == environment).order_by(c.at, c.id)
        if since is not None:
            q = q.where(c.at >= since)
        if incident_id is not None:
            q = q.where(c.incident_id == incident_id)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    async def freeze(self, environment: str, *, reason: str, by: str, at: datetime | None = None
                     ) -> tuple[dict[str, Any], bool]:
        """Freeze remediations in an environment ("*": every one); return (the freeze in force, created)."""
        existing = [f for f in await self.freezes() if f["environment"] == environment]
        if existing:
            return existing[0], False
        async with self.engine.begin() as conn:
            await conn.execute(insert(freezes_t).values(environment=environment, reason=reason, by=by,
                                                        at=at or utcnow()))
        return next(f for f in await self.freezes() if f["environment"] == environment), True

    async def unfreeze(self, environment: str | None, *, by: str, at: datetime | None = None
                       ) -> builtins.list[dict[str, Any]]:
        """Lift the freeze of an environment (None: every freeze in force); return the freezes lifted."""
        lifted = [f for f in await self.freezes() if environment is None or f["environment"] == environment]
        if lifted:
            c = freezes_t.c
            async with self.engine.begin() as conn:
                await conn.execute(update(freezes_t).where(
                    and_(c.id.in_([f["id"] for f in lifted]), c.lifted_at.is_(None)))
                    .values(lifted_at=at or utcnow(), lifted_by=by))
        return lifted

    async def freezes(self) -> builtins.list[dict[str, Any]]:
        """Return the freezes in force, oldest first."""
        q = select(freezes_t).where(freezes_t.c.lifted_at.is_(None)).order_by(freezes_t.c.at, freezes_t.c.id)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    async def freeze_of(self, environment: str) -> dict[str, Any] | None:
        """Return the freeze that holds an environment (its own or every environment's), if any."""
        return next((f for f in await self.freezes() if f["environment"] in {"*", environment}), None)

_RUN_ID = re.compile(r"\brun ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")


async def holder_run_ended(holder: str) -> bool:
    """Return True when a lock holder's Prefect flow run is known to have ended, asked through Prefect's API.

    The holder names its run (`… run <flow-run uuid>`). A subflow run executes in the process of the run that
    called it, so the process's run is the first one up the chain that is a deployment run (or has no parent): the
    holder is gone when its own run or that run is final (Crashed when its worker died, Cancelled, Failed,
    Completed without releasing). No run id, no Prefect API configured, an unknown run or an unreachable server:
    not known, so not gone (the TTL still frees the lock).
    """
    found = _RUN_ID.search(holder)
    if not found:
        return False
    from uuid import UUID

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # never start a temporary server just to ask
        return False
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(found[1]))
            for _ in range(20):
                if run.state is not None and run.state.is_final():
                    return True
                if run.deployment_id is not None or run.parent_task_run_id is None:
                    return False  # the process's own run, and it is not over
                parent = await client.read_task_run(run.parent_task_run_id)
                if parent.flow_run_id is None:
                    return False
                run = await client.read_flow_run(parent.flow_run_id)
    except Exception:  # unknown run, server unreachable: not known to be gone
        return False
    return False


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _already_exists(exc: BaseException) -> bool:
    """Return True for a CREATE that lost a race: the table or index exists now (SQLite's and Postgres' words)."""
    return "already exists" in str(getattr(exc, "orig", None) or exc)


def _cause(exc: BaseException, url: str) -> str:
    """Name why the store failed in one line: the driver's own error, without SQLAlchemy's wrapping or a password."""
    orig = getattr(exc, "orig", None) or exc
    text = f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}".rstrip(": ")
    password = make_url(url).password
    return text.replace(password, "***") if password else text


@asynccontextmanager
async def open_store(url: str | None = None) -> AsyncIterator[IncidentStore]:
    """Open the incident store (the settings' store unless a URL is given), creating its schema if needed."""
    if url is None:
        from runbook.settings import get_settings

        url = get_settings().resolved_store_url
    store = IncidentStore(url)
    try:
        await store.init()
        yield store
    finally:
        await store.close()


def today() -> date:
    """Return today's date in UTC."""
    return utcnow().date()


__all__ = ["Admitted", "IncidentStore", "open_store", "SCHEMA_VERSION", "OperationalError"]
