"""The intake's outbox: an accepted alert is kept before it is answered, handed to Prefect in the background, and
tried again until Prefect has it; it is done once it is attached to its incident.

Why: answering only once Prefect had taken the alert held every answer as long as the slowest Prefect call. A burst
of 200 alerts against a Prefect server on SQLite ("database is locked") answered most of them 503 after minutes, kept
but never attached. Now, per alert:

    keep (a row of `intake_outbox` in the incident store, before any answer: nothing accepted is lost)
    → hand it to Prefect (the Starter: a declare-incident deployment run, or the warm path's background task), at
      most HANDOFF_CONCURRENCY at once per intake process, so a burst does not become a burst on Prefect's database
    → 202: with what was started when the hand-off finished within ANSWER_WITHIN_S, else `queued` (it goes on);
      in a burst (no free hand-off slot) `queued` as soon as it is kept
    → a hand-off that failed (Prefect down, slow, refusing) is tried again by the retry loop (RETRY_MIN_S doubling
      to RETRY_MAX_S) for as long as it takes; a process that died holding one leaves it to the next loop once its
      lease has passed (LEASE_S)
    → attached: the declaration recorded the alert on its incident (the store's alerts table, same fingerprint and
      received_at); a started hand-off whose run ended without attaching it, or whose background task run no task
      worker ever started, is handed off again (REHANDOFF_AFTER_S).

The row states: queued (to hand off: new, or failed with `error` and `next_try_at`), started (Prefect has it:
`started` names the run), attached (`incident_id`). The deployment Starter passes an idempotency key per alert, so a
hand-off that timed out after Prefect created the run does not create a second run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, Text, and_, func, or_, select, update

from runbook.intake.common import Starter
from runbook.models import Alert, utcnow
from runbook.store import IncidentStore, UTCDateTime

log = logging.getLogger("runbook.intake")

# An alert with a free hand-off slot is answered within about this long: with what Prefect started, or `queued` while
# the hand-off goes on; one that has to wait for a slot (a burst) is answered `queued` once it is kept.
ANSWER_WITHIN_S = 1.5
# Hand-offs to Prefect at once per intake process: a burst waits here, in memory and kept, not in Prefect's database.
HANDOFF_CONCURRENCY = 4
# One hand-off may take this long (the Prefect client retries a busy server itself) before it is tried again later.
HANDOFF_TIMEOUT_S = 60.0
# A row being handed off by a process is its own for this long; after that (the process died) the loop takes it.
LEASE_S = HANDOFF_TIMEOUT_S + 30.0
RETRY_POLL_S = 2.0
RETRY_MIN_S, RETRY_MAX_S = 2.0, 60.0
# Started rows are checked for their attachment this often; one not attached this long after it was started has
# its run read in Prefect, and is handed off again when that run ended (or is gone) without attaching it.
ATTACH_CHECK_S = 5.0
# A started row not attached this long after its hand-off (doubling with each hand-off, at most 16 times) has its run
# read in Prefect: handed off again when that run ended (or is gone) without attaching it, or when it is a warm-path
# task run still Scheduled while later alerts are attached (pushed to a task worker that died or lost it: it is
# cancelled first, so it never runs twice).
REHANDOFF_AFTER_S = 60.0

_metadata = MetaData()
outbox_t = Table(
    "intake_outbox",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kept_at", UTCDateTime, nullable=False),
    Column("fingerprint", String(200), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("digest", String(64)),  # sha256 of the body as received (a signed delivery's replay is the same bytes)
    Column("alert", JSON, nullable=False),
    Column("respond", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_try_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("started", JSON),
    Column("error", Text),
    Column("incident_id", String(40)),
    Column("updated_at", UTCDateTime, nullable=False),
)

def retry_in(attempts: int) -> float:
    """Return the wait before the next hand-off after `attempts` failed ones: 2 s doubling, at most a minute."""
    return min(RETRY_MAX_S, RETRY_MIN_S * 2 ** max(0, attempts - 1))


class Outbox:
    """The kept alerts of the intake and their hand-off to Prefect (one per app; see the module docstring)."""

    def __init__(self, start: Starter, *, url: str | None = None, concurrency: int = HANDOFF_CONCURRENCY,
                 answer_within: float = ANSWER_WITHIN_S, poll: float = RETRY_POLL_S) -> None:
        self._start = start
        self._url = url
        self._concurrency = concurrency
        self.answer_within = answer_within
        self.poll = poll
        self._store: IncidentStore | None = None
        self._opening: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None
        self._inflight: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._last_attach_check = 0.0
        self._to_keep: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._keeper: asyncio.Task[None] | None = None

    # -- the store --------------------------------------------------------------------------------------------

    async def _open(self) -> IncidentStore:
        if self._store is not None:
            return self._store
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._store is None:
                url = self._url
                if url is None:
                    from runbook.settings import get_settings

                    url = get_settings().resolved_store_url
                store = IncidentStore(url)
                await store.init()
                for attempt in range(5):  # another process may create the table at the same moment
                    try:
                        async with store.engine.begin() as conn:
                            await conn.run_sync(_metadata.create_all, checkfirst=True)
                        break
                    except Exception:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))
                self._store = store
        return self._store

    async def keep(self, alert: Alert, respond: Any, digest: str | None = None) -> int:
        """Keep an accepted alert (leased to this process, which hands it off now); return its outbox id.

        Alerts kept at the same moment are written in one transaction (one commit for a burst, not one each)."""
        now = utcnow()
        values = {"kept_at": now, "fingerprint": alert.fingerprint, "received_at": alert.received_at,
                  "digest": digest, "alert": alert.model_dump(mode="json"), "respond": respond, "state": "queued",
                  "attempts": 0, "next_try_at": now, "lease_until": now + timedelta(seconds=LEASE_S),
                  "updated_at": now}
        kept: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._to_keep.append((values, kept))
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.ensure_future(self._write_kept())
        return await kept

    async def _write_kept(self) -> None:
        while self._to_keep:
            batch, self._to_keep = self._to_keep, []
            try:
                store = await self._open()
                async with store.engine.begin() as conn:
                    ids = [int((await conn.execute(outbox_t.insert().values(**values))).inserted_primary_key[0])
                           for values, _ in batch]
            except Exception as exc:  # the store unreachable: every alert of the batch is answered 503
                for _, kept in batch:
                    if not kept.done():
                        kept.set_exception(exc)
                continue
            for (_, kept), outbox_id in zip(batch, ids, strict=True):
                if not kept.done():
                    kept.set_result(outbox_id)

    async def _set(self, outbox_id: int, *, where: Any = None, **values: Any) -> bool:
        store = await self._open()
        condition = outbox_t.c.id == outbox_id if where is None else and_(outbox_t.c.id == outbox_id, where)
        async with store.engine.begin() as conn:
            result = await conn.execute(update(outbox_t).where(condition).values(updated_at=utcnow(), **values))
        return bool(result.rowcount)

    async def rows(self, state: str | None = None, *, limit: int = 10_000) -> list[dict[str, Any]]:
        """Return the outbox rows (one state, or all), oldest first."""
        store = await self._open()
        query = select(outbox_t).order_by(outbox_t.c.id).limit(limit)
        if state is not None:
            query = query.where(outbox_t.c.state == state)
        async with store.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def seen(self, digest: str) -> bool:
        """Whether these exact bytes were accepted before (kept here, attached or not)."""
        store = await self._open()
        async with store.engine.connect() as conn:
            row = (await conn.execute(select(outbox_t.c.id).where(outbox_t.c.digest == digest).limit(1))).first()
        return row is not None

    # -- the hand-off -----------------------------------------------------------------------------------------

    async def accept(self, alert: Alert, respond: Any, digest: str | None = None
                     ) -> tuple[int, dict[str, str] | None, str | None]:
        """Keep the alert and hand it to Prefect; return (outbox id, what was started or None, the error of a
        failed first hand-off) once the hand-off ended or `answer_within` passed (it then goes on)."""
        outbox_id = await self.keep(alert, respond, digest)
        self.ensure_running(forever=False)
        # Wait for the hand-off only when a slot is free: in a burst the alerts behind the first few are answered
        # `queued` as soon as they are kept, not after waiting their turn.
        free = len(self._inflight) < self._concurrency
        handoff = self._spawn(self._hand_off(outbox_id, alert, respond, 0))
        done, _ = await asyncio.wait({handoff}, timeout=self.answer_within if free else 0)
        if handoff not in done:
            return outbox_id, None, None
        started, error = handoff.result()
        return outbox_id, started, error

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _hand_off(self, outbox_id: int, alert: Alert, respond: Any, attempts: int
                  ) -> Awaitable[tuple[dict[str, str] | None, str | None]]:
        self._inflight.add(outbox_id)  # now, not when the task first runs: the next alert's answer counts it
        return self._handing_off(outbox_id, alert, respond, attempts)

    async def _handing_off(self, outbox_id: int, alert: Alert, respond: Any, attempts: int
                           ) -> tuple[dict[str, str] | None, str | None]:
        try:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self._concurrency)
            async with self._slots:
                attached = await self._attached_to(alert) if attempts else None
                if attached is not None:  # an earlier try landed after all
                    await self._set(outbox_id, state="attached", lease_until=None, incident_id=attached)
                    return None, None
                try:
                    started = await asyncio.wait_for(self._start(alert, respond), HANDOFF_TIMEOUT_S)
                except Exception as exc:  # Prefect unreachable, slow or refusing: kept, tried again later
                    error = f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
                    wait = retry_in(attempts + 1)
                    await self._set(outbox_id, state="queued", attempts=attempts + 1, error=error, lease_until=None,
                                    next_try_at=utcnow() + timedelta(seconds=wait))
                    log.warning("alert %s (kept as intake #%d) not handed to Prefect yet (try %d): %s; next try in "
                                "%.0f s", alert.fingerprint, outbox_id, attempts + 1, error, wait)
                    return None, error
                await self._set(outbox_id, state="started", started=started, error=None, lease_until=None)
                log.info("alert %s (intake #%d) → %s", alert.fingerprint, outbox_id,
                         ", ".join(f"{k} {v}" for k, v in started.items()))
                return started, None
        finally:
            self._inflight.discard(outbox_id)

    # -- the retry loop ---------------------------------------------------------------------------------------

    def ensure_running(self, *, forever: bool = True) -> None:
        """Start the retry loop in this event loop if it is not running: for the app's lifetime (`forever`, from its
        startup), or, started by an alert where no lifespan runs (an ASGI client in a test), until nothing is left
        to hand off."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.ensure_future(self._run(forever))

    async def aclose(self) -> None:
        """Stop the retry loop and the hand-offs in flight (kept rows stay for the next process), close the store."""
        tasks = [t for t in (self._loop, self._keeper, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: S110  (cancelled, or its failure was logged)
                pass
        self._loop = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def _run(self, forever: bool) -> None:
        while True:
            try:
                await self.sweep()
                if not forever and not self._inflight and not await self.rows("queued", limit=1):
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store unreachable: the next poll tries again
                log.warning("intake outbox: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.poll)

    async def sweep(self) -> int:
        """Hand off every kept alert that is due (not leased by a live hand-off); check the started ones for their
        attachment (every ATTACH_CHECK_S). Return the hand-offs begun."""
        store = await self._open()
        now = utcnow()
        due = (and_(outbox_t.c.state == "queued", outbox_t.c.next_try_at <= now,
                    or_(outbox_t.c.lease_until.is_(None), outbox_t.c.lease_until < now)))
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(outbox_t).where(due).order_by(outbox_t.c.id).limit(200))).mappings().all()
        begun = 0
        for row in rows:
            if row["id"] in self._inflight:
                continue
            leased = await self._set(row["id"], where=due, lease_until=now + timedelta(seconds=LEASE_S))
            if not leased:  # another intake process took it
                continue
            self._spawn(self._hand_off(row["id"], Alert.model_validate(row["alert"]), row["respond"],
                                       int(row["attempts"])))
            begun += 1
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_attach_check >= ATTACH_CHECK_S:
            self._last_attach_check = loop_now
            await self.check_attached()
        return begun

    async def _attached_to(self, alert: Alert) -> str | None:
        store = await self._open()
        for row in await store.alerts(fingerprint=alert.fingerprint, valid=True, limit=10_000):
            if row["incident_id"] and row["received_at"] == alert.received_at:
                return str(row["incident_id"])
        return None

    async def check_attached(self) -> int:
        """Mark started rows attached once their alert is on its incident; hand off again a started one whose run
        ended without attaching it, or whose task run is still Scheduled while alerts handed off after it are
        attached (a task worker lost it), after `rehandoff_after`. Return how many were marked attached."""
        store = await self._open()
        by_fingerprint: dict[str, dict[datetime, str]] = {}
        marked, waiting = 0, []
        for row in await self.rows("started"):
            fingerprint = row["fingerprint"]
            if fingerprint not in by_fingerprint:
                by_fingerprint[fingerprint] = {
                    a["received_at"]: str(a["incident_id"])
                    for a in await store.alerts(fingerprint=fingerprint, valid=True, limit=100_000)
                    if a["incident_id"]}
            incident_id = by_fingerprint[fingerprint].get(row["received_at"])
            if incident_id is not None:
                marked += await self._set(row["id"], where=outbox_t.c.state == "started", state="attached",
                                          incident_id=incident_id)
            elif (utcnow() - row["updated_at"]).total_seconds() > rehandoff_after(int(row["attempts"])):
                waiting.append(row)
        if not waiting:
            return marked
        async with store.engine.connect() as conn:
            newest_attached = (await conn.execute(select(func.max(outbox_t.c.id)).where(
                outbox_t.c.state == "attached"))).scalar() or 0
        for row in waiting:
            if await _run_over(row["started"] or {}, overtaken=row["id"] < newest_attached):
                await self._set(row["id"], where=outbox_t.c.state == "started", state="queued",
                                attempts=int(row["attempts"]) + 1, next_try_at=utcnow(),
                                error="its Prefect run ended, or was never started, without attaching it")
                log.warning("alert %s (intake #%d): its run ended or was never started without attaching it; "
                            "handed off again", row["fingerprint"], row["id"])
        return marked


def rehandoff_after(attempts: int) -> float:
    """Return how long a started, unattached row waits before its run is read (REHANDOFF_AFTER_S, doubling)."""
    return REHANDOFF_AFTER_S * 2 ** min(max(0, attempts), 4)


async def _run_over(started: dict[str, Any], *, overtaken: bool) -> bool:
    """Whether the run a hand-off started can no longer attach its alert: final or gone in Prefect, or a background
    task run still Scheduled although alerts handed off after it are attached (`overtaken`: the task worker that
    was pushed it died or lost it; it is cancelled now so that it never runs as well as the next). False when it
    may still run (a Scheduled one in a backlog, or waiting for a task worker), or Prefect cannot be read."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled

    try:
        async with get_client() as client:
            if started.get("incident_flow_run_id"):
                run: Any = await client.read_flow_run(UUID(started["incident_flow_run_id"]))
            elif started.get("task_run_id"):
                run = await client.read_task_run(UUID(started["task_run_id"]))
                if overtaken and run.state is not None and run.state.type is StateType.SCHEDULED:
                    await client.set_task_run_state(run.id, Cancelled(
                        message="no task worker started it; the intake hands the alert off again"), force=True)
                    return True
            else:
                return False
    except ObjectNotFound:
        return True
    except Exception:  # Prefect unreachable: ask again at the next check
        return False
    return run.state is None or run.state.is_final()


async def _hands_off_nothing(alert: Alert, respond: Any) -> dict[str, str]:
    raise RuntimeError("a reader of the outbox hands nothing off")


async def read_outbox(state: str | None = None, *, url: str | None = None) -> list[dict[str, Any]]:
    """Return the kept alerts (one state, or all), oldest first, from the settings' store or `url` (read only)."""
    outbox = Outbox(_hands_off_nothing, url=url)
    try:
        return await outbox.rows(state)
    finally:
        await outbox.aclose()
