"""Reopen on regression on the drill stack: the fault back within the window reopens the incident just resolved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from flows.declare_incident import Declared, DeclareParams, declare_incident
from flows.lifecycle import ResolveParams, resolve_incident
from runbook.clock import ManualClock, use_clock
from runbook.drill import DrillStack
from runbook.models import Alert, EventKind, FollowUpKind, Severity, Status, utcnow
from runbook.report.incident import load_report, render_markdown
from runbook.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")

FINGERPRINT = "monitor:authentication_failing:auth"
RESPOND = "respond-p1"


@pytest.fixture(scope="module")
async def deployments(prefect_harness: None) -> AsyncIterator[None]:
    """Register respond-p1 (its runs stay scheduled: nothing executes them here, the declaration's own steps are
    what is tested) and the post-incident deployments; respond-p1 is removed after the module."""
    from prefect.client.orchestration import get_client

    from flows.post_incident import FOLLOW_UP_FLOW, REVIEW_FLOW, post_incident_follow_up, post_incident_review
    from flows.respond import respond_p1

    for flow_, name in ((post_incident_review, REVIEW_FLOW), (post_incident_follow_up, FOLLOW_UP_FLOW),
                        (respond_p1, RESPOND)):
        await (await flow_.to_deployment(name=name)).apply()
    yield
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"{RESPOND}/{RESPOND}")
        await client.delete_deployment(deployment.id)


def _alert(summary: str = "Login fails for every student") -> Alert:
    return Alert(source="monitor", fingerprint=FINGERPRINT, summary=summary, severity=Severity.P1,
                 scenario="authentication", rule="authentication_failing")


async def _declare(summary: str = "Login fails for every student") -> Declared:
    return await declare_incident(DeclareParams(alert=_alert(summary), respond="deployment"))


def _triggers(stack: DrillStack, key: str) -> list[dict[str, Any]]:
    return [r.body for r in stack.pagerduty.requests if r.path.endswith("/enqueue")
            and r.body.get("event_action") == "trigger" and r.body.get("dedup_key") == key]


def _public(stack: DrillStack, incident_id: str) -> dict[str, Any]:
    ours = [i for i in stack.statuspage.incidents if i["name"] == "Login fails for every student"]
    assert len(ours) == 1, ours
    return ours[0]


def _returned(stack: DrillStack) -> list[str]:
    return [m["text"] for m in stack.slack.messages("#incidents") if "The problem returned" in m["text"]]


async def _runs(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


async def _resolve(incident_id: str, reason: str) -> None:
    await resolve_incident(ResolveParams(incident_id=incident_id, reason=reason, by="ana"))


async def test_the_fault_back_within_the_window_reopens_and_pages_again(drill_env: DrillStack,
                                                                        deployments: None) -> None:
    """Resolved, then the same fault within the window: the same incident is investigating again, on-call is paged
    with the same dedup key (PagerDuty opens a new alert on it), the status page and #incidents say the problem
    returned, the procedure runs again; the follow-ups and MTTR count from the final resolution; one incident."""
    first = await _declare()
    assert first.created and first.response_run_id
    inc_id = first.incident_id
    assert drill_env.pagerduty.alert(inc_id)["status"] == "triggered"  # type: ignore[index]
    async with open_store() as store:
        await store.acknowledge(inc_id, "dana", via="pagerduty")
    await _resolve(inc_id, "auth provider recovered")
    assert drill_env.pagerduty.alert(inc_id)["status"] == "resolved"  # type: ignore[index]
    assert _public(drill_env, inc_id)["status"] == "resolved"
    async with open_store() as store:
        first_resolution = (await store.get(inc_id)).resolved_at
    assert first_resolution is not None
    review_runs = await _runs(f"post-incident-review {inc_id}")
    assert [r.expected_start_time for r in review_runs] == [first_resolution + timedelta(hours=24)]

    again = await _declare("Login fails again")
    assert again.reopened and not again.created and again.incident_id == inc_id
    assert again.response_run_id and again.response_run_id != first.response_run_id
    async with open_store() as store:
        current = await store.get(inc_id)
        assert current.status is Status.INVESTIGATING and current.resolved_at is None
        assert current.acknowledged_at is None and current.escalation_start == current.reopened_at  # a new cycle
        assert len(await store.list()) == 1
        reopen = (await store.timeline(inc_id, kind=EventKind.REOPENED))[0]
        assert reopen.details["alert"]["summary"] == "Login fails again"
        assert not await store.follow_ups(inc_id)  # withdrawn: scheduled again from the final resolution
    # PagerDuty: the same dedup key triggered again; after the resolve it is a new alert (and incident) there.
    assert len(_triggers(drill_env, inc_id)) == 2
    alerts = [a for a in drill_env.pagerduty.alerts if a["dedup_key"] == inc_id]
    assert [a["status"] for a in alerts] == ["resolved", "triggered"]
    assert drill_env.pagerduty.incident(inc_id)["status"] == "triggered"  # type: ignore[index]
    public = _public(drill_env, inc_id)
    assert public["status"] == "investigating"
    assert public["incident_updates"][0]["body"].startswith("The problem returned")
    assert len(_returned(drill_env)) == 1 and "REOPENED" in _returned(drill_env)[0]
    assert not await _runs(f"post-incident-review {inc_id}")  # the run of the undone resolution is gone
    respond_runs = await _runs(f"{RESPOND} {inc_id}")
    assert {str(r.id) for r in respond_runs} == {first.response_run_id, again.response_run_id}

    await _resolve(inc_id, "fixed for good")
    async with open_store() as store:
        final = await store.get(inc_id)
        follow_ups = {f.kind: f for f in await store.follow_ups(inc_id)}
        report = render_markdown(await load_report(store, inc_id))
    assert final.status is Status.RESOLVED and final.resolved_at is not None and final.resolved_at > first_resolution
    assert follow_ups[FollowUpKind.REVIEW_24H].due == final.resolved_at + timedelta(hours=24)
    assert follow_ups[FollowUpKind.FOLLOW_UP_1W].due == final.resolved_at + timedelta(days=7)
    review_runs = await _runs(f"post-incident-review {inc_id}")
    assert [r.expected_start_time for r in review_runs] == [final.resolved_at + timedelta(hours=24)]
    assert drill_env.pagerduty.incident(inc_id)["status"] == "resolved"  # type: ignore[index]
    assert _public(drill_env, inc_id)["status"] == "resolved"
    assert "Reopened: 1 time(s)" in report and "- Reopened " in report and "Login fails again" in report
    assert "MTTR (declared → resolved (to the final resolution))" in report
    assert "Acknowledged by dana via pagerduty" in report  # MTTA: the first acknowledgement


async def test_a_reopen_page_pagerduty_does_not_take_stays_pending_and_is_sent(drill_env: DrillStack,
                                                                               deployments: None) -> None:
    """PagerDuty failing at the reopen: the page stays pending (the incident was acknowledged before, but the
    reopen waits for a new acknowledgement), "the problem returned" still goes out, and the sweep's resend delivers
    it on the same dedup key."""
    from runbook.drill.faults import Fault
    from tasks.pagerduty import pending_pages, resend_pending_pages

    first = await _declare()
    async with open_store() as store:
        await store.acknowledge(first.incident_id, "dana", via="pagerduty")
    await _resolve(first.incident_id, "auth provider recovered")
    drill_env.pagerduty.inject(Fault.error(503, times=3))  # the reopen page's quick first try: three attempts
    again = await _declare("Login fails again")
    assert again.reopened
    assert [p["dedup_key"] for p in await pending_pages(first.incident_id)] == [first.incident_id]
    assert len(_returned(drill_env)) == 1 and _public(drill_env, first.incident_id)["status"] == "investigating"
    async with open_store() as store:
        incident = await store.get(first.incident_id)
    assert await resend_pending_pages.fn(incident) == [first.incident_id]
    assert drill_env.pagerduty.incident(first.incident_id)["status"] == "triggered"  # type: ignore[index]
    assert await pending_pages(first.incident_id) == []


async def test_the_acknowledgement_of_the_cycle_before_the_reopen_is_not_taken_for_the_new_one(
        drill_env: DrillStack, deployments: None) -> None:
    """On-call acknowledged the first page in PagerDuty and resolved it there; after the reopen, while its page is
    still pending, the PagerDuty incident the REST poll finds for the key is that old one, resolved by a person:
    not an acknowledgement of the reopened incident, which still waits for one."""
    from runbook.drill.faults import Fault
    from runbook.drill.pagerduty import acknowledge_as_oncall
    from tasks.pagerduty import pager_acknowledgement, pending_pages

    first = await _declare()
    assert acknowledge_as_oncall(drill_env.pagerduty, first.incident_id) is not None
    async with open_store() as store:
        incident = await store.get(first.incident_id)
    await pager_acknowledgement(incident)  # the first cycle's acknowledgement (or the escalation's poll took it)
    async with open_store() as store:
        assert (await store.get(first.incident_id)).acknowledged_via == "pagerduty"
    drill_env.pagerduty.press_resolve(first.incident_id)  # on-call resolves the page in PagerDuty
    await _resolve(first.incident_id, "auth provider recovered")
    drill_env.pagerduty.inject(Fault.error(503, times=3))
    again = await _declare("Login fails again")
    assert again.reopened and await pending_pages(first.incident_id)
    async with open_store() as store:
        reopened = await store.get(first.incident_id)
    assert reopened.acknowledged_at is None
    assert await pager_acknowledgement(reopened) is None
    async with open_store() as store:
        assert (await store.get(first.incident_id)).acknowledged_at is None


async def test_the_fault_back_after_the_window_is_a_new_incident(drill_env: DrillStack, deployments: None) -> None:
    """61 minutes (runbook clock) after the resolution the same fault opens a new incident, paged on its own key."""
    first = await _declare()
    await _resolve(first.incident_id, "auth provider recovered")
    with use_clock(ManualClock(utcnow() + timedelta(minutes=61))):
        later = await _declare("Login fails again")
    assert later.created and not later.reopened and later.incident_id != first.incident_id
    assert len(_triggers(drill_env, first.incident_id)) == 1 and len(_triggers(drill_env, later.incident_id)) == 1
    assert not _returned(drill_env)
    async with open_store() as store:
        assert (await store.get(first.incident_id)).status is Status.RESOLVED
        assert not await store.timeline(first.incident_id, kind=EventKind.REOPENED)


async def test_two_alerts_at_once_reopen_it_once(drill_env: DrillStack, deployments: None) -> None:
    """Two alerts of the resolved fault at the same moment: one reopens it (one page, one "the problem returned"),
    the other attaches to it as a duplicate."""
    first = await _declare()
    await _resolve(first.incident_id, "auth provider recovered")
    one, two = await asyncio.gather(_declare("Login fails again (1)"), _declare("Login fails again (2)"))
    assert {one.incident_id, two.incident_id} == {first.incident_id}
    assert sorted([one.reopened, two.reopened]) == [False, True] and not one.created and not two.created
    assert len(_triggers(drill_env, first.incident_id)) == 2  # the first page and the one reopen
    assert len(_returned(drill_env)) == 1
    async with open_store() as store:
        assert len(await store.timeline(first.incident_id, kind=EventKind.REOPENED)) == 1
        assert len(await store.timeline(first.incident_id, kind=EventKind.DUPLICATE_ALERT)) == 1
        assert len(await store.list()) == 1


async def test_the_monitor_seeing_the_fault_again_reopens_the_incident(drill_env: DrillStack, deployments: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's own path: an auth outage declared (P1, on-call paged), repaired and resolved; the outage back
    and the monitor's next run reopens that incident and pages on-call again on its key; one incident in all."""
    from flows.monitor import MonitorParams, monitor

    async def watch() -> str:
        result = await monitor(MonitorParams(respond="deployment", cycles=2, interval_seconds=0))
        assert [d.rule for d in result.declared] == ["authentication_failing"], result.declared
        return result.declared[0].incident_id

    for key, value in drill_env.inject("auth-outage").items():
        monkeypatch.setenv(key, value)
    inc_id = await watch()
    drill_env.repair("auth-outage")
    await _resolve(inc_id, "auth provider recovered")
    for key, value in drill_env.inject("auth-outage").items():
        monkeypatch.setenv(key, value)
    assert await watch() == inc_id
    assert len(_triggers(drill_env, inc_id)) == 2
    assert drill_env.pagerduty.incident(inc_id)["status"] == "triggered"  # type: ignore[index]
    async with open_store() as store:
        assert [i.id for i in await store.list()] == [inc_id]
        assert (await store.get(inc_id)).status is Status.INVESTIGATING
        [reopen] = await store.timeline(inc_id, kind=EventKind.REOPENED)
    assert reopen.details["alert"]["source"] == "monitor" and reopen.actor
    assert len(_returned(drill_env)) == 1
