"""Reopen on regression in the store: the fingerprint's incident resolved within the window is reopened, once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from runbook.clock import ManualClock, use_clock
from runbook.models import Alert, EventKind, FollowUp, FollowUpKind, Incident, Severity, Status, utcnow
from runbook.store import IncidentStore


def _incident(fp: str = "monitor:application_down:app") -> Incident:
    return Incident(title="Site completely down", severity=Severity.P0, fingerprint=fp, source="monitor")


def _alert(summary: str = "503 again", fp: str = "monitor:application_down:app") -> Alert:
    return Alert(source="monitor", fingerprint=fp, summary=summary, rule="application_down")


async def _resolved(store: IncidentStore) -> Incident:
    first, _ = await store.declare(_incident(), _alert("503 on /api/health"))
    return await store.transition(first.id, Status.RESOLVED, summary="verified")


async def test_a_fault_back_within_the_window_reopens_the_incident(store: IncidentStore) -> None:
    """Resolved, then the same fingerprint again: the same incident is investigating again, with a status change
    from resolved and a `reopened` event that keeps the alert; its open fingerprint is held again."""
    resolved = await _resolved(store)
    admitted = await store.admit(_incident(), _alert())
    assert admitted.outcome == "reopened" and admitted.incident.id == resolved.id
    current = await store.get(resolved.id)
    assert current.status is Status.INVESTIGATING and current.resolved_at is None
    assert (await store.find_open("monitor:application_down:app")).id == resolved.id  # type: ignore[union-attr]
    events = await store.timeline(resolved.id)
    assert [e.kind for e in events][-2:] == [EventKind.STATUS_CHANGED, EventKind.REOPENED]
    change, reopen = events[-2], events[-1]
    assert change.details["from"] == "resolved" and change.details["to"] == "investigating"
    assert reopen.details["alert"]["summary"] == "503 again" and reopen == admitted.event
    assert "the problem returned" in reopen.summary
    assert len(await store.list()) == 1
    assert [a["incident_id"] for a in await store.alerts(fingerprint="monitor:application_down:app")] == \
        [resolved.id, resolved.id]
    again = await store.admit(_incident(), _alert("still 503"))  # open now: a duplicate, not a second reopen
    assert again.outcome == "duplicate" and again.incident.id == resolved.id
    assert len(await store.timeline(resolved.id, kind=EventKind.REOPENED)) == 1


async def test_a_reopen_starts_a_new_response_cycle(store: IncidentStore) -> None:
    """The reopened incident waits for a new acknowledgement and escalates from the reopen; the first
    acknowledgement stays on the timeline (MTTA)."""
    first, _ = await store.declare(_incident(), _alert("503 on /api/health"))
    await store.acknowledge(first.id, "dana", via="pagerduty")
    await store.transition(first.id, Status.RESOLVED)
    admitted = await store.admit(_incident(), _alert())
    current = await store.get(first.id)
    assert current.acknowledged_at is None and current.acknowledged_by is None
    assert current.reopened_at is not None and current.escalation_start == current.reopened_at > current.created_at
    assert admitted.event is not None and admitted.event.details["acknowledged_before_by"] == "dana"
    _, newly = await store.acknowledge(first.id, "eli", via="slack")
    assert newly
    assert [e.actor for e in await store.timeline(first.id, kind=EventKind.ACKNOWLEDGED)] == ["dana", "eli"]


async def test_a_fault_back_after_the_window_opens_a_new_incident(store: IncidentStore) -> None:
    """61 minutes (runbook clock) after the resolution the same fingerprint opens a new incident; the old stays
    resolved."""
    resolved = await _resolved(store)
    with use_clock(ManualClock(utcnow() + timedelta(minutes=61))):
        admitted = await store.admit(_incident(), _alert())
    assert admitted.outcome == "created" and admitted.incident.id != resolved.id
    assert (await store.get(resolved.id)).status is Status.RESOLVED
    assert not await store.timeline(resolved.id, kind=EventKind.REOPENED)
    with use_clock(ManualClock(utcnow() + timedelta(minutes=59))):  # inside the window (of the new one) again
        assert (await store.admit(_incident(), _alert())).outcome == "duplicate"


async def test_a_zero_window_never_reopens(store: IncidentStore) -> None:
    """A window of 0 (the drills' policy) keeps today's behaviour: a new incident."""
    resolved = await _resolved(store)
    admitted = await store.admit(_incident(), _alert(), reopen_within=timedelta(0))
    assert admitted.outcome == "created" and admitted.incident.id != resolved.id


async def test_a_reopen_withdraws_the_follow_ups_not_done(store: IncidentStore) -> None:
    """The follow-ups scheduled from the undone resolution are withdrawn (named on the reopen event) so the final
    resolution schedules them again; one already done stays."""
    resolved = await _resolved(store)
    assert resolved.resolved_at is not None
    await store.add_follow_up(resolved.id, FollowUp(kind=FollowUpKind.REVIEW_24H, flow_run_id="run-review",
                                                    due=resolved.resolved_at + timedelta(hours=24)))
    await store.add_follow_up(resolved.id, FollowUp(kind=FollowUpKind.FOLLOW_UP_1W, done=True,
                                                    due=resolved.resolved_at + timedelta(days=7)))
    admitted = await store.admit(_incident(), _alert())
    assert admitted.event is not None
    assert [(w["kind"], w["flow_run_id"]) for w in admitted.event.details["withdrawn_follow_ups"]] == \
        [("review-24h", "run-review")]
    assert [f.kind for f in await store.follow_ups(resolved.id)] == [FollowUpKind.FOLLOW_UP_1W]
    final = await store.transition(resolved.id, Status.RESOLVED)
    assert final.resolved_at is not None and final.resolved_at > resolved.resolved_at
    row, created = await store.add_follow_up(resolved.id, FollowUp(kind=FollowUpKind.REVIEW_24H,
                                                                   due=final.resolved_at + timedelta(hours=24)))
    assert created and row.due == final.resolved_at + timedelta(hours=24)


async def test_a_merged_duplicate_is_not_reopened(store: IncidentStore) -> None:
    """An incident merged away (resolved pointing at its survivor) is not reopened by its old fingerprint."""
    survivor, _ = await store.declare(Incident(title="Site down", severity=Severity.P0, fingerprint="other"))
    duplicate, _ = await store.declare(_incident(), _alert())
    await store.merge(survivor.id, duplicate.id, actor="ana")
    await store.transition(survivor.id, Status.RESOLVED)
    admitted = await store.admit(_incident(), _alert())
    assert admitted.outcome == "created" and admitted.incident.id not in {survivor.id, duplicate.id}


async def test_two_alerts_at_once_reopen_it_once(store_url: str) -> None:
    """Ten alerts of the resolved fingerprint at once from four connections (SQLite and Postgres): one reopens it,
    the nine others attach to it as duplicates; one incident in all, one reopen on its timeline."""
    stores = [IncidentStore(store_url) for _ in range(4)]
    await stores[0].init()
    try:
        resolved = await _resolved(stores[0])
        results = await asyncio.gather(*[stores[i % 4].admit(_incident(), _alert(f"503 #{i}")) for i in range(10)])
        outcomes = sorted(r.outcome for r in results)
        assert outcomes == ["duplicate"] * 9 + ["reopened"], outcomes
        assert {r.incident.id for r in results} == {resolved.id}
        assert len(await stores[0].list()) == 1
        timeline = await stores[0].timeline(resolved.id)
        assert len([e for e in timeline if e.kind == EventKind.REOPENED]) == 1
        assert len([e for e in timeline if e.kind == EventKind.STATUS_CHANGED and e.details["from"] == "resolved"]) \
            == 1
        assert len([e for e in timeline if e.kind == EventKind.DUPLICATE_ALERT]) == 9
        assert (await stores[0].get(resolved.id)).status is Status.INVESTIGATING
    finally:
        for s in stores:
            await s.close()
