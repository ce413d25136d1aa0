"""The incident store on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest

from runbook.errors import IncidentNotFound, InvalidTransition, RemediationLocked
from runbook.models import (
    ActionItem,
    Alert,
    Approval,
    FollowUp,
    FollowUpKind,
    Incident,
    Severity,
    Status,
    TimelineEvent,
    utcnow,
)
from runbook.store import SCHEMA_VERSION, IncidentStore


def _incident(fp: str | None = "fp-app-down", **kw: object) -> Incident:
    return Incident(title="Site completely down", severity=Severity.P0, fingerprint=fp, **kw)  # type: ignore[arg-type]


async def test_schema_version_is_recorded(store: IncidentStore) -> None:
    """A new store records the current schema version."""
    assert await store.schema_version() == SCHEMA_VERSION


async def test_declare_then_get_round_trips(store: IncidentStore) -> None:
    """A declared incident comes back with the same fields and a 'declared' timeline event."""
    inc, created = await store.declare(_incident(), Alert(source="monitor", fingerprint="fp-app-down", summary="x"))
    assert created
    got = await store.get(inc.id)
    assert got.title == "Site completely down" and got.severity is Severity.P0
    assert got.created_at == inc.created_at
    assert [e.kind for e in await store.timeline(inc.id)] == ["declared"]


async def test_duplicate_fingerprint_attaches_to_open_incident(store: IncidentStore) -> None:
    """A second alert with the same fingerprint attaches to the open incident instead of creating one."""
    first, _ = await store.declare(_incident())
    second, created = await store.declare(_incident(), Alert(source="monitor", fingerprint="fp-app-down",
                                                             summary="still down"))
    assert not created and second.id == first.id
    kinds = [e.kind for e in await store.timeline(first.id)]
    assert kinds == ["declared", "duplicate_alert"]
    assert len(await store.list()) == 1


async def test_concurrent_declarations_give_one_incident(store_url: str) -> None:
    """Ten simultaneous declarations of one fingerprint from separate connections give exactly one incident."""
    stores = [IncidentStore(store_url) for _ in range(4)]
    await stores[0].init()
    try:
        results = await asyncio.gather(*[stores[i % 4].declare(_incident("fp-race")) for i in range(10)])
    finally:
        for s in stores:
            await s.close()
    assert sum(created for _, created in results) == 1
    assert len({inc.id for inc, _ in results}) == 1


async def test_resolved_fingerprint_can_open_again(store: IncidentStore) -> None:
    """After resolution, past the reopen window (none here), the same fingerprint opens a new incident."""
    first, _ = await store.declare(_incident())
    await store.transition(first.id, Status.RESOLVED)
    second = await store.admit(_incident(), reopen_within=timedelta(0))
    assert second.outcome == "created" and second.incident.id != first.id


async def test_lifecycle_transitions_and_timestamps(store: IncidentStore) -> None:
    """Investigating → identified → monitoring → resolved sets each timestamp and logs each change."""
    inc, _ = await store.declare(_incident())
    for s in (Status.IDENTIFIED, Status.MONITORING, Status.RESOLVED):
        inc = await store.transition(inc.id, s, actor="tester")
    assert inc.identified_at and inc.mitigated_at and inc.resolved_at
    assert inc.identified_at <= inc.mitigated_at <= inc.resolved_at
    changes = [(e.details["from"], e.details["to"]) for e in await store.timeline(inc.id, kind="status_changed")]
    assert changes == [("investigating", "identified"), ("identified", "monitoring"), ("monitoring", "resolved")]


async def test_invalid_transition_is_refused(store: IncidentStore) -> None:
    """Resolved → monitoring is not a lifecycle move."""
    inc, _ = await store.declare(_incident())
    await store.transition(inc.id, Status.RESOLVED)
    with pytest.raises(InvalidTransition):
        await store.transition(inc.id, Status.MONITORING)


async def test_same_status_is_a_noop(store: IncidentStore) -> None:
    """Moving to the current status changes nothing and logs nothing."""
    inc, _ = await store.declare(_incident())
    await store.transition(inc.id, Status.INVESTIGATING)
    assert [e.kind for e in await store.timeline(inc.id)] == ["declared"]


async def test_acknowledge_is_recorded_once(store: IncidentStore) -> None:
    """The first acknowledgement wins; a second one changes nothing."""
    inc, _ = await store.declare(_incident())
    _, newly = await store.acknowledge(inc.id, "alice")
    again, newly2 = await store.acknowledge(inc.id, "bob")
    assert newly and not newly2 and again.acknowledged_by == "alice"
    assert len(await store.timeline(inc.id, kind="acknowledged")) == 1


async def test_unknown_incident_raises(store: IncidentStore) -> None:
    """Reading an unknown id raises IncidentNotFound."""
    with pytest.raises(IncidentNotFound):
        await store.get("inc-00000000-000000")


async def test_timeline_keeps_order_and_details(store: IncidentStore) -> None:
    """Appended events come back in time order with their details and flow-run id."""
    inc, _ = await store.declare(_incident())
    t0 = utcnow()
    await store.append_event(inc.id, TimelineEvent(at=t0 + timedelta(seconds=2), kind="paged", summary="b",
                                                   details={"dedup_key": inc.id}, flow_run_id="run-1"))
    await store.append_event(inc.id, TimelineEvent(at=t0 + timedelta(seconds=1), kind="slack", summary="a"))
    events = await store.timeline(inc.id)
    assert [e.summary for e in events][1:] == ["a", "b"]
    assert events[-1].details == {"dedup_key": inc.id} and events[-1].flow_run_id == "run-1"


async def test_approvals_follow_ups_and_action_items(store: IncidentStore) -> None:
    """Approvals, follow-ups (once per kind) and action items are kept per incident."""
    inc, _ = await store.declare(_incident())
    await store.record_approval(inc.id, Approval(decision="approve", approver="bob", plan_hash="abc",
                                                 action="code-rollback"))
    due = utcnow() + timedelta(hours=24)
    _, c1 = await store.add_follow_up(inc.id, FollowUp(kind=FollowUpKind.REVIEW_24H, due=due))
    _, c2 = await store.add_follow_up(inc.id, FollowUp(kind=FollowUpKind.REVIEW_24H, due=due))
    item = await store.add_action_item(inc.id, ActionItem(title="Add a down script check", owner="carol",
                                                          due=date(2026, 12, 1)))
    await store.update_action_item(item.id or 0, done=True)
    assert (await store.approvals(inc.id))[0].approver == "bob"
    assert (c1, c2) == (True, False) and len(await store.follow_ups(inc.id)) == 1
    assert (await store.action_items(inc.id))[0].done is True
    assert "approved by bob" in (await store.timeline(inc.id, kind="approval"))[0].summary


async def test_invalid_raw_alert_is_kept(store: IncidentStore) -> None:
    """An alert that failed validation is stored with its reason."""
    await store.store_raw_alert({"source": "sentry", "oops": True}, error="summary: field required")
    kept = await store.alerts(valid=False)
    assert kept[0]["raw"] == {"source": "sentry", "oops": True} and "summary" in kept[0]["error"]


async def test_lock_refuses_second_holder(store: IncidentStore) -> None:
    """A held remediation lock refuses another holder until released."""
    await store.acquire_lock("remediation:production", "run-a", timedelta(minutes=5))
    with pytest.raises(RemediationLocked, match="run-a"):
        await store.acquire_lock("remediation:production", "run-b", timedelta(minutes=5))
    await store.release_lock("remediation:production", "run-a")
    await store.acquire_lock("remediation:production", "run-b", timedelta(minutes=5))


async def test_expired_lock_is_taken_over(store: IncidentStore) -> None:
    """A lock past its expiry is taken over by the next holder."""
    await store.acquire_lock("remediation:production", "run-a", timedelta(seconds=-1))
    await store.acquire_lock("remediation:production", "run-b", timedelta(minutes=5))


async def test_lock_of_a_holder_known_gone_is_taken_over_before_its_ttl(store: IncidentStore) -> None:
    """A lock whose holder is known dead is taken over at once (the old holder named); alive holders refuse."""
    dead = {"database-rollback inc-1 run a"}

    async def gone(holder: str) -> bool:
        return holder in dead

    await store.acquire_lock("remediation:production", "database-rollback inc-1 run a", timedelta(hours=2))
    with pytest.raises(RemediationLocked, match="run a"):
        await store.acquire_lock("remediation:production", "code-rollback inc-2 run b", timedelta(hours=2),
                                 holder_gone=lambda h: _false())
    took = await store.acquire_lock("remediation:production", "code-rollback inc-2 run b", timedelta(hours=2),
                                    holder_gone=gone)
    assert took == "database-rollback inc-1 run a"
    assert [lock["holder"] for lock in await store.active_locks("remediation:")] == ["code-rollback inc-2 run b"]
    await store.release_lock("remediation:production", "database-rollback inc-1 run a")  # the old one: no-op
    assert [lock["holder"] for lock in await store.active_locks("remediation:")] == ["code-rollback inc-2 run b"]


async def _false() -> bool:
    return False


async def test_lock_takeover_asks_prefect_whether_the_holder_run_ended(store: IncidentStore,
                                                                       prefect_harness: None) -> None:
    """Through Prefect's API: a holder whose flow run is Running keeps the lock; once it is Crashed the lock is
    taken over; a holder without a run id is never presumed dead."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    from runbook.store import holder_run_ended

    @flow(name="lock-holder")
    def holder_flow() -> None:
        """Stand for a remediation run (never executed: its state is set through the API)."""

    async with get_client() as client:
        run = await client.create_flow_run(holder_flow, state=Running())
        holder = f"database-rollback inc-1 run {run.id}"
        await store.acquire_lock("remediation:production", holder, timedelta(hours=2))
        assert not await holder_run_ended(holder) and not await holder_run_ended("run-a")
        with pytest.raises(RemediationLocked, match=str(run.id)):
            await store.acquire_lock("remediation:production", "code-rollback inc-2 run other", timedelta(hours=2))
        await client.set_flow_run_state(run.id, Crashed(message="its worker died"), force=True)
    assert await holder_run_ended(holder)
    took = await store.acquire_lock("remediation:production", "code-rollback inc-2 run other", timedelta(hours=2))
    assert took == holder
