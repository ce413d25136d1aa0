"""The severity procedures: a rejected fix leaves the incident open; P2/P3 reminds and files the release follow-up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import pytest

from flows.respond import RespondParams, respond_p0, respond_p2_p3
from runbook.clock import ManualClock, use_clock
from runbook.drill import DrillStack
from runbook.drill.approver import pause_form, resume, wait_for_pause
from runbook.models import Incident, Severity, Status
from runbook.policy import get_policy
from runbook.store import open_store
from tests.conftest import write_policy
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = """
monitoring: {interval_seconds: 1}
response: {ack_poll_seconds: 0.3, stable_checks: 2, stable_interval_seconds: 0.5, reminder_fraction: 0.5}
severities:
  P3: {response_minutes: 0.1}
"""


async def _has(kinds: Awaitable[list[str]], *wanted: str) -> list[str] | None:
    """Return the timeline's kinds once every wanted kind is among them."""
    seen = await kinds
    return seen if all(w in seen for w in wanted) else None


async def _declare(title: str, severity: Severity, scenario: str) -> Incident:
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title=title, severity=severity, scenario=scenario, fingerprint=title))
    return inc


async def test_rejected_rollback_keeps_the_incident_open(drill_env: DrillStack, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """P0 bad deploy: when the approver rejects the rollback, nothing changes and the incident stays open."""
    write_policy(tmp_path, monkeypatch, FAST)
    drill_env.inject("bad-deploy")
    inc = await _declare("Site completely down", Severity.P0, "performance")
    run = asyncio.create_task(respond_p0(RespondParams(incident_id=inc.id)))
    ack = await wait_for_pause(["escalate-incident"])
    await resume(ack, {"by": "ana"})
    approval = await wait_for_pause(["code-rollback"])
    schema, description = await pause_form(approval)
    assert "decision" in schema["properties"] and "Plan" in description
    plan_hash = schema["properties"]["plan_hash"]["default"]
    await resume(approval, {"decision": "reject", "approver": "ben", "reason": "want a hotfix", "plan_hash": plan_hash})
    outcome = await asyncio.wait_for(run, timeout=60)
    assert not outcome.resolved and outcome.status is not Status.RESOLVED
    assert outcome.remediation == "code-rollback: rejected"
    assert not drill_env.healthy("bad-deploy")
    assert not [r for r in drill_env.vercel.requests if "/rollback/" in r.path]
    statuses = [r.body["incident"]["status"] for r in drill_env.statuspage.requests
                if r.method in {"POST", "PATCH"} and isinstance(r.body, dict) and "incident" in r.body]
    assert "resolved" not in statuses and statuses[0] == "investigating"
    texts = [str(r.body) for r in drill_env.slack.requests]
    assert any("stays OPEN" in t for t in texts)


async def test_p3_reminds_then_pages_and_files_release_follow_up(drill_env: DrillStack, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """P3 unacknowledged: a reminder, a page when the SLA runs out, a next-release item; open while degraded."""
    write_policy(tmp_path, monkeypatch, FAST)
    drill_env.inject("third-party-outage")  # keeps the service degraded, so the incident stays open
    inc = await _declare("UI glitches in the course list", Severity.P3, "performance")

    async def kinds() -> list[str]:
        async with open_store() as store:
            return [e.kind for e in await store.timeline(inc.id)]

    # The escalation's steps follow a manual clock: the reminder, the page and the SLA fire when the test moves
    # the clock, and the escalation window cannot run out while a loaded machine is slow to deliver the resume.
    with use_clock(ManualClock(inc.created_at)) as manual:
        assert isinstance(manual, ManualClock)
        run = asyncio.create_task(respond_p2_p3(RespondParams(incident_id=inc.id)))
        paused = await wait_for_pause(["escalate-incident"])
        assert "reminder" not in await kinds()
        due = inc.created_at + get_policy().response_time(Severity.P3)  # the policy's 6 s, not the model's default
        manual.advance_to(inc.created_at + (due - inc.created_at) / 2)  # reminder_fraction 0.5
        await eventually(lambda: _has(kinds(), "reminder"), "the reminder")
        assert "paged" not in await kinds()
        manual.advance_to(due)  # the page and the SLA; the window stays open until due + 6 s
        seen = await eventually(lambda: _has(kinds(), "paged", "sla_missed"), "the page and the missed SLA")
        assert seen.index("reminder") < seen.index("paged")
        await resume(paused, {"by": "ana"})
        outcome = await asyncio.wait_for(run, timeout=120)
    assert outcome.acknowledged_by == "ana" and not outcome.resolved
    async with open_store() as store:
        items = await store.action_items(inc.id)
    assert items and "next regular release" in items[0].title


async def test_acknowledging_the_p0_acknowledges_the_page(drill_env: DrillStack, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The on-call page sent by the response is acknowledged in PagerDuty when someone takes the incident."""
    write_policy(tmp_path, monkeypatch, FAST)
    drill_env.inject("bad-deploy")
    inc = await _declare("Site completely down", Severity.P0, "performance")
    run = asyncio.create_task(respond_p0(RespondParams(incident_id=inc.id, remediate=False)))
    await resume(await wait_for_pause(["escalate-incident"]), {"by": "ana"})
    for _ in range(40):
        alert = drill_env.pagerduty.alert(inc.id)
        if alert and alert["status"] == "acknowledged":
            break
        await asyncio.sleep(0.25)
    assert alert is not None and alert["status"] == "acknowledged"
    outcome = await asyncio.wait_for(run, timeout=90)
    assert outcome.acknowledged_by == "ana" and not outcome.resolved


async def test_a_rerun_of_the_response_does_not_announce_again(drill_env: DrillStack, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The first announcement (status page "investigating", #incidents, the stakeholder notice) goes out once per
    incident: the response run again (an operator's retry after a crash) posts none of it a second time."""
    from prefect import flow

    from flows._response import communicate

    write_policy(tmp_path, monkeypatch, FAST)
    inc = await _declare("Checkout slow for some", Severity.P1, "payment")

    @flow(name="announce-twice")
    async def announce_twice() -> None:
        await communicate(inc, Status.INVESTIGATING, "We are investigating degraded functionality.")

    await announce_twice()
    await announce_twice()
    texts = [str(r.body) for r in drill_env.slack.requests]
    assert sum("Stakeholder notice" in t for t in texts) == 1
    assert sum("investigating: We are investigating" in t for t in texts) == 1, texts
    created = [r for r in drill_env.statuspage.requests if r.method == "POST" and "incidents" in r.path]
    assert len(created) == 1


async def test_pagerduty_down_does_not_hold_up_the_p0_response(drill_env: DrillStack, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """PagerDuty answering 503: the status page says "investigating" and #incidents is told while the page is still
    pending (retried); once PagerDuty answers, the page lands, once."""
    from runbook.drill.faults import Fault

    write_policy(tmp_path, monkeypatch, FAST)
    outage = drill_env.pagerduty.inject(Fault.error(503, times=None))
    # a person's report: verification alone never resolves it (so the escalation waits for the acknowledgement
    # below whatever the machine's speed), and the confirmation it then asks for times out at once
    inc = await _declare("Site completely down", Severity.P0, "performance")
    run = asyncio.create_task(respond_p0(RespondParams(incident_id=inc.id, remediate=False,
                                                       confirm_within_minutes=0.05)))

    async def announced() -> list[str] | None:
        statuses = [r.body["incident"]["status"] for r in drill_env.statuspage.requests
                    if r.method == "POST" and isinstance(r.body, dict) and "incident" in r.body]
        told = any("investigating" in str(r.body) for r in drill_env.slack.requests)
        return statuses if statuses and told else None

    assert await eventually(announced, "the status page and #incidents told", timeout=120) == ["investigating"]
    assert drill_env.pagerduty.alert(inc.id) is None  # still failing: not delivered, not dropped
    async with open_store() as store:
        notes = [e.summary for e in await store.timeline(inc.id) if e.details.get("dedup_key") == inc.id]
    assert notes and "pending" in notes[0]
    assert outage.used >= 1  # PagerDuty was asked and failed
    drill_env.pagerduty.clear_faults()
    await eventually(lambda: _paged(inc.id), "the page delivered once PagerDuty answers", timeout=120)
    ack = await wait_for_pause(["escalate-incident"])
    await resume(ack, {"by": "ana"})
    outcome = await asyncio.wait_for(run, timeout=300)
    assert outcome.acknowledged_by == "ana"
    async with open_store() as store:
        assert len([e for e in await store.timeline(inc.id) if e.kind == "paged"]) == 1


async def _paged(incident_id: str) -> bool | None:
    async with open_store() as store:
        return any(e.kind == "paged" for e in await store.timeline(incident_id)) or None


async def test_a_resolution_is_announced_once(drill_env: DrillStack, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """P0 bad deploy, rollback approved and verified: #incidents hears "resolved" once and the status page is
    resolved once (the resolution announced, then close-out announced it again: two posts in every drill)."""
    write_policy(tmp_path, monkeypatch, FAST)
    drill_env.inject("bad-deploy")
    async with open_store() as store:  # the monitor's: a passed verification resolves it without a person
        inc, _ = await store.declare(Incident(title="Site completely down", severity=Severity.P0,
                                              scenario="performance", fingerprint="monitor:application_down:app",
                                              source="monitor"))
    run = asyncio.create_task(respond_p0(RespondParams(incident_id=inc.id)))
    await resume(await wait_for_pause(["escalate-incident"]), {"by": "ana"})
    approval = await wait_for_pause(["code-rollback"])
    schema, _ = await pause_form(approval)
    await resume(approval, {"decision": "approve", "approver": "ben", "reason": "roll back",
                            "plan_hash": schema["properties"]["plan_hash"]["default"]})
    outcome = await asyncio.wait_for(run, timeout=120)
    assert outcome.resolved and outcome.status is Status.RESOLVED
    texts = [str(r.body) for r in drill_env.slack.requests]
    assert sum(f"({inc.id}) — resolved:" in t for t in texts) == 1, [t for t in texts if "resolved" in t]
    resolved = [r for r in drill_env.statuspage.requests if r.method in {"POST", "PATCH"} and isinstance(r.body, dict)
                and r.body.get("incident", {}).get("status") == "resolved" and (r.status or 0) < 300]
    assert len(resolved) == 1
