"""A person steering an incident by hand (runbook/lifecycle.py, the store's link/merge, `runbook resolve …`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from runbook import lifecycle
from runbook.cli.main import main
from runbook.errors import InputError, InvalidTransition
from runbook.escalation import escalation_schedule
from runbook.models import Alert, Incident, Severity, Status, utcnow
from runbook.policy import Policy, get_policy
from runbook.store import IncidentStore, open_store
from tests.conftest import write_policy


async def _declare(store: IncidentStore, title: str = "Checkout returns 500", **kw: object) -> Incident:
    incident, _ = await store.declare(Incident(title=title, severity=Severity.P1, **kw))  # type: ignore[arg-type]
    return incident


async def test_resolve_needs_a_reason_and_records_who_and_via(store: IncidentStore) -> None:
    """A hand resolution without a reason is refused; with one it is a status change naming who, via and why."""
    inc = await _declare(store)
    with pytest.raises(InputError, match="reason"):
        await lifecycle.resolve(store, inc.id, reason=" ", by="ana")
    resolved, changed = await lifecycle.resolve(store, inc.id, reason="hotfix deployed", by="ana", via="prefect-ui")
    assert changed and resolved.status is Status.RESOLVED and resolved.resolved_at is not None
    event = (await store.timeline(inc.id, kind="status_changed"))[-1]
    assert event.actor == "ana" and event.details["via"] == "prefect-ui"
    assert event.details["reason"] == "hotfix deployed"
    assert (await lifecycle.resolve(store, inc.id, reason="again", by="ana"))[1] is False


async def test_resolve_is_refused_while_a_remediation_holds_the_lock(store: IncidentStore) -> None:
    """While a remediation of the incident holds the environment's lock (e.g. suspended for approval) resolve fails."""
    inc, other = await _declare(store), await _declare(store, "Login fails")
    holder = f"database-rollback {inc.id} run 0b1c"  # the holder flows/_remediation.py writes
    await store.acquire_lock("remediation:production", holder, timedelta(hours=2))
    with pytest.raises(InvalidTransition, match="remediation is in flight"):
        await lifecycle.resolve(store, inc.id, reason="looks fine", by="ana")
    assert (await store.get(inc.id)).status is Status.INVESTIGATING
    assert (await lifecycle.resolve(store, other.id, reason="unrelated", by="ana"))[1]  # not this incident's
    await store.release_lock("remediation:production", holder)
    assert (await lifecycle.resolve(store, inc.id, reason="rollback verified", by="ana"))[1]


async def test_set_status_and_severity_are_timeline_events(store: IncidentStore) -> None:
    """set-status moves along the lifecycle; set-severity records from/to and restarts the escalation clock."""
    inc = await _declare(store)
    moved, _ = await lifecycle.set_status(store, inc.id, "identified", by="ana", reason="bad migration")
    assert moved.status is Status.IDENTIFIED and moved.identified_at is not None
    with pytest.raises(InputError, match="reason"):
        await lifecycle.set_status(store, inc.id, "resolved", by="ana")
    before = utcnow()
    raised, changed = await lifecycle.set_severity(store, inc.id, "P0", by="ben", reason="all pages down")
    assert changed and raised.severity is Severity.P0 and raised.severity_set_at is not None
    event = (await store.timeline(inc.id, kind="severity_changed"))[0]
    assert (event.details["from"], event.details["to"], event.actor) == ("P1", "P0", "ben")
    assert "raised" in event.summary
    first_page = escalation_schedule(raised, Policy())[0]
    assert first_page.at >= before  # the P0 chain counts from the change, not from the declaration
    assert (await lifecycle.set_severity(store, inc.id, "P0", by="ben"))[1] is False


async def test_link_records_on_both_timelines(store: IncidentStore) -> None:
    """Linking names each incident on the other's record and timeline, once."""
    a, b = await _declare(store), await _declare(store, "Payments slow")
    first, second, changed = await lifecycle.link(store, a.id, b.id, by="ana")
    assert changed and first.links == [b.id] and second.links == [a.id]
    assert (await store.timeline(b.id, kind="linked"))[0].details["other"] == a.id
    assert (await lifecycle.link(store, b.id, a.id, by="ana"))[2] is False
    with pytest.raises(InputError):
        await lifecycle.link(store, a.id, a.id, by="ana")


async def test_merge_makes_one_record_with_both_timelines(store: IncidentStore) -> None:
    """The monitor's P0 and a person's P1 for one outage: one record, both timelines, the duplicate closed."""
    monitor, _ = await store.declare(Incident(title="Site down", severity=Severity.P0, source="monitor",
                                              fingerprint="application_down:app"),
                                     Alert(source="monitor", fingerprint="application_down:app", summary="down"))
    person = await _declare(store, "Checkout returns 500 for some students")
    await store.acknowledge(monitor.id, "chen", via="pagerduty")
    survivor, duplicate, changed = await lifecycle.merge(store, person.id, monitor.id, by="ana",
                                                         reason="same outage")
    assert changed and duplicate.status is Status.RESOLVED and duplicate.merged_into == person.id
    assert survivor.severity is Severity.P0 and survivor.acknowledged_by == "chen"
    assert survivor.created_at == min(monitor.created_at, person.created_at)
    timeline = await store.timeline(person.id)
    copied = [e for e in timeline if e.details.get("merged_from") == monitor.id and e.kind == "declared"]
    assert copied and [e for e in timeline if e.kind == "declared" and "merged_from" not in e.details]
    assert any(e.kind == "merged" and "continue there" in e.summary for e in await store.timeline(monitor.id))
    # The monitor's next alert for the same outage attaches to the survivor instead of opening a third incident.
    again, created = await store.declare(Incident(title="Site down", severity=Severity.P0, source="monitor",
                                                  fingerprint="application_down:app"))
    assert not created and again.id == person.id
    assert (await lifecycle.merge(store, person.id, monitor.id, by="ana"))[2] is False
    with pytest.raises(InvalidTransition, match="merged into"):
        await lifecycle.merge(store, monitor.id, person.id, by="ana")


async def test_note_needs_who_and_text(store: IncidentStore) -> None:
    """A note is a timeline event by a named person."""
    inc = await _declare(store)
    with pytest.raises(InputError):
        await lifecycle.note(store, inc.id, "checked", by="")
    event = await lifecycle.note(store, inc.id, "customer support confirms", by="dana")
    assert event.actor == "dana" and event.details["via"] == "cli"


async def test_unlock_releases_a_dead_holders_lock_and_refuses_a_live_one(store: IncidentStore,
                                                                       prefect_harness: None) -> None:
    """`runbook unlock`: refused while the holder's Prefect run is Running (it may be acting) unless forced; once
    that run is Crashed it is released at once, recorded on the holder's incident with who and why."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    @flow(name="lock-holder")
    def holder_flow() -> None:
        """Stand for a remediation run (never executed: its state is set through the API)."""

    inc = await _declare(store)
    with pytest.raises(InputError, match="no remediation lock"):
        await lifecycle.unlock(store, "production", by="ana", reason="stuck")
    async with get_client() as client:
        run = await client.create_flow_run(holder_flow, state=Running())
        holder = f"code-rollback {inc.id} run {run.id}"
        await store.acquire_lock("remediation:production", holder, timedelta(hours=2))
        with pytest.raises(InputError, match="--force"):
            await lifecycle.unlock(store, "production", by="ana", reason="stuck")
        with pytest.raises(InputError, match="why"):
            await lifecycle.unlock(store, "production", by="ana", reason=" ")
        assert [lock["holder"] for lock in await store.active_locks("remediation:")] == [holder]
        await client.set_flow_run_state(run.id, Crashed(message="its worker died"), force=True)
    released = await lifecycle.unlock(store, "production", by="ana", reason="its worker died")
    assert released["holder"] == holder and await store.active_locks("remediation:") == []
    note = (await store.timeline(inc.id, kind="note"))[-1]
    assert note.actor == "ana" and "its run had ended" in note.summary and note.details["forced"] is False
    await store.acquire_lock("remediation:production", f"code-rollback {inc.id} run 0b1c", timedelta(hours=2))
    assert (await lifecycle.unlock(store, "production", by="ben", reason="known dead", force=True))["holder"]
    assert (await store.timeline(inc.id, kind="note"))[-1].details["forced"] is True


def test_cli_controls_change_the_record_and_say_what_was_not_told(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook set-severity|note|resolve` write the store (via cli); without a Prefect server they say so."""
    import asyncio

    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    async def declare() -> str:
        async with open_store() as store:
            return (await _declare(store)).id

    inc = asyncio.run(declare())
    assert main(["set-severity", inc, "P0", "--by", "ana", "--reason", "everyone affected"]) == 0
    assert main(["note", inc, "status page checked", "--by", "ana"]) == 0
    with pytest.raises(SystemExit):  # --reason is required
        main(["resolve", inc, "--by", "ana"])
    captured = capsys.readouterr()
    assert "severity set" in captured.out and "PREFECT_API_URL" in captured.err
    assert main(["resolve", inc, "--by", "ana", "--reason", "fixed", "--no-follow-up"]) == 0
    assert "resolved:" in capsys.readouterr().out

    async def read() -> tuple[Incident, list[str]]:
        async with open_store() as store:
            return await store.get(inc), [f"{e.kind}:{e.actor}:{e.details.get('via')}"
                                          for e in await store.timeline(inc)]

    incident, kinds = asyncio.run(read())
    assert incident.severity is Severity.P0 and incident.status is Status.RESOLVED
    assert {"severity_changed:ana:cli", "note:ana:cli", "status_changed:ana:cli"} <= set(kinds)


async def test_response_due_and_late_acks_follow_the_policy(store: IncidentStore, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy with a 5-minute P1 response time: due 5 minutes after declaration, an ack at 7 minutes is late
    (the model's default P1 of 1 hour would have called it on time)."""
    write_policy(tmp_path, monkeypatch, "severities:\n  P1: {response_minutes: 5}\n")
    inc = await _declare(store)
    assert get_policy().response_due(inc) == inc.created_at + timedelta(minutes=5)
    await store.acknowledge(inc.id, "ana", at=inc.created_at + timedelta(minutes=7), via="cli")
    [ack] = await store.timeline(inc.id, kind="acknowledged")
    assert ack.details["late"] is True and ack.details["via"] == "cli"
