"""The lifecycle forms (flows/lifecycle.py) against the drill stack, and a person's incident waiting for a person."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.lifecycle import (
    MergeParams,
    ResolveParams,
    SetSeverityParams,
    SetStatusParams,
    merge_incidents,
    resolve_incident,
    set_incident_severity,
    set_incident_status,
)
from flows.respond import RespondParams, respond_p2_p3
from runbook.drill import DrillStack
from runbook.drill.approver import pause_form, resume, wait_for_pause
from runbook.errors import InvalidTransition
from runbook.models import Incident, Severity, Status
from runbook.store import open_store
from tests.conftest import write_policy

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = """
response: {ack_poll_seconds: 0.3, stable_checks: 2, stable_interval_seconds: 0.5}
"""


async def _declare(title: str, severity: Severity, **kw: Any) -> Incident:
    by = kw.pop("by", "dana")
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title=title, severity=severity, **kw), actor=by)
    return inc


def _triggers(stack: DrillStack) -> list[str]:
    return [r.body["payload"]["custom_details"]["role"] for r in stack.pagerduty.requests
            if r.path.endswith("/enqueue") and r.body.get("event_action") == "trigger"]


def _status_page(stack: DrillStack) -> list[dict[str, Any]]:
    return [r.body["incident"] for r in stack.statuspage.requests
            if r.method in {"POST", "PATCH"} and isinstance(r.body, dict) and "incident" in r.body]


async def test_raising_to_p0_pages_on_call_and_opens_the_status_page(drill_env: DrillStack) -> None:
    """A P2 raised to P0 while unacknowledged: on-call paged now, a critical status page incident, #incidents told."""
    inc = await _declare("Course list slow", Severity.P2, scenario="performance")
    outcome = await set_incident_severity(SetSeverityParams(incident_id=inc.id, severity="P0", by="ana",
                                                            reason="the whole site is down", escalate="none"))
    assert outcome.changed and outcome.severity is Severity.P0
    assert _triggers(drill_env) == ["On-Call Engineer"]
    page = _status_page(drill_env)
    assert page and page[0]["status"] == "investigating" and page[0]["impact_override"] == "critical"
    assert any("RAISED P2 → P0" in str(r.body) for r in drill_env.slack.requests)
    async with open_store() as store:
        kinds = [e.kind for e in await store.timeline(inc.id)]
    assert kinds.count("severity_changed") == 1 and "paged" in kinds


async def test_resolve_form_refuses_mid_remediation_then_closes_out(drill_env: DrillStack) -> None:
    """resolve-incident fails while a remediation holds the lock; afterwards it resolves and schedules follow-ups."""
    inc = await _declare("Checkout returns 500", Severity.P1, scenario="payment")
    holder = f"webhook-check {inc.id} run 1234"
    async with open_store() as store:
        await store.acquire_lock("remediation:production", holder, timedelta(hours=1))
    params = ResolveParams(incident_id=inc.id, reason="Stripe recovered on its own", by="ana")
    with pytest.raises(InvalidTransition, match="in flight"):
        await resolve_incident(params)
    async with open_store() as store:
        await store.release_lock("remediation:production", holder)
    outcome = await resolve_incident(params)
    assert outcome.changed and outcome.status is Status.RESOLVED
    async with open_store() as store:
        follow_ups = await store.follow_ups(inc.id)
        resolved = [e for e in await store.timeline(inc.id, kind="status_changed") if e.details["to"] == "resolved"]
    assert {f.kind for f in follow_ups} == {"review-24h", "follow-up-1w"}
    assert resolved[0].actor == "ana" and resolved[0].details["via"] == "prefect-ui"


async def test_merge_form_closes_the_duplicates_status_page(drill_env: DrillStack) -> None:
    """Merging the monitor's P0 (with its own status page incident) into a person's P1 closes the duplicate's page."""
    monitor = await _declare("Site down", Severity.P0, source="monitor", fingerprint="application_down:app")
    person = await _declare("Checkout returns 500 for some students", Severity.P1)
    async with open_store() as store:
        await store.update(monitor.id, statuspage_incident_id="dup-page")
        await store.update(person.id, statuspage_incident_id=None)
    outcome = await merge_incidents(MergeParams(survivor_id=person.id, duplicate_id=monitor.id, by="ana"))
    assert outcome.changed and outcome.severity is Severity.P0
    async with open_store() as store:
        survivor = await store.get(person.id)
    assert survivor.statuspage_incident_id == "dup-page"  # the public incident carries on with the survivor
    assert not [p for p in _status_page(drill_env) if p.get("status") == "resolved"]
    assert any("merged into" in str(r.body) for r in drill_env.slack.requests)


async def test_a_persons_incident_waits_for_a_person_to_confirm(drill_env: DrillStack, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification passing moves a person's P2 to monitoring and pauses for the acknowledger to confirm."""
    write_policy(tmp_path, monkeypatch, FAST)
    inc = await _declare("Certificates page shows an error", Severity.P2, scenario="performance")
    run = asyncio.create_task(respond_p2_p3(RespondParams(incident_id=inc.id)))
    ack = await wait_for_pause(["escalate-incident"], timeout=60)
    await resume(ack, {"by": "ana"})
    confirm = await wait_for_pause(["respond-p2-p3"], timeout=90)
    schema, description = await pause_form(confirm)
    assert set(schema["properties"]["decision"]["enum"]) == {"resolved", "not resolved"}
    assert "resolved?" in description
    async with open_store() as store:
        assert (await store.get(inc.id)).status is Status.MONITORING
        asked = await store.timeline(inc.id, kind="confirmation_requested")
    assert asked and asked[0].details["asked"] == "ana"
    assert any("is it resolved for you" in str(r.body) for r in drill_env.slack.requests)
    await resume(confirm, {"decision": "resolved", "by": "ana", "reason": "students can download again"})
    outcome = await asyncio.wait_for(run, timeout=60)
    assert outcome.resolved and outcome.status is Status.RESOLVED
    async with open_store() as store:
        resolved = [e for e in await store.timeline(inc.id, kind="status_changed") if e.details["to"] == "resolved"]
    assert resolved[0].actor == "ana" and "confirmed by ana" in resolved[0].summary


async def test_the_monitors_incident_resolves_after_verification(drill_env: DrillStack, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's own P2 is resolved by a passed verification, with no confirmation asked."""
    write_policy(tmp_path, monkeypatch, FAST)
    inc = await _declare("Slow responses", Severity.P2, scenario="performance", source="monitor",
                         fingerprint="slow_response:app")
    run = asyncio.create_task(respond_p2_p3(RespondParams(incident_id=inc.id)))
    outcome = await asyncio.wait_for(run, timeout=90)
    assert outcome.resolved and outcome.status is Status.RESOLVED
    async with open_store() as store:
        assert not await store.timeline(inc.id, kind="confirmation_requested")


def _public(stack: DrillStack, inc: Incident) -> dict[str, Any]:
    """Return the stand-in's public incident of ours (as Statuspage holds it now)."""
    ours = [i for i in stack.statuspage.incidents if i["name"] == inc.title]
    assert len(ours) == 1, ours
    return ours[0]


async def test_reopening_announces_the_incident_on_the_status_page_again(drill_env: DrillStack) -> None:
    """Resolved, then set back to investigating: the public incident is investigating again; a re-run posts nothing."""
    inc = await _declare("Login fails for every student", Severity.P1, scenario="authentication")
    await set_incident_status(SetStatusParams(incident_id=inc.id, status="identified", by="ana"))
    await resolve_incident(ResolveParams(incident_id=inc.id, reason="auth provider recovered", by="ana"))
    assert _public(drill_env, inc)["status"] == "resolved"
    reopen = SetStatusParams(incident_id=inc.id, status="investigating", by="ana", reason="logins fail again")
    assert (await set_incident_status(reopen)).changed
    public = _public(drill_env, inc)
    assert public["status"] == "investigating" and public["incident_updates"][0]["body"] == "logins fail again"
    assert [p["status"] for p in _status_page(drill_env)] == ["identified", "resolved", "investigating"]
    assert not (await set_incident_status(reopen)).changed
    assert len(_status_page(drill_env)) == 3  # the same reopen again: nothing posted twice
    await resolve_incident(ResolveParams(incident_id=inc.id, reason="fixed for good", by="ana"))
    assert _public(drill_env, inc)["status"] == "resolved"  # and it can be resolved again


async def test_a_severity_change_keeping_the_status_updates_the_public_impact(drill_env: DrillStack) -> None:
    """A P2 raised to P0 while identified: the public incident stays identified with critical impact and its
    component down; a re-run of the same change posts nothing more (status page, #incidents, stakeholders)."""
    inc = await _declare("Course list slow", Severity.P2, scenario="performance")
    await set_incident_status(SetStatusParams(incident_id=inc.id, status="identified", by="ana"))
    assert _public(drill_env, inc)["impact"] == "minor"
    raise_it = SetSeverityParams(incident_id=inc.id, severity="P0", by="ana", reason="site down", escalate="none")
    await set_incident_severity(raise_it)
    public = _public(drill_env, inc)
    assert public["status"] == "identified" and public["impact"] == "critical"
    assert {c["status"] for c in public["components"]} == {"major_outage"}
    posted, told = len(_status_page(drill_env)), len(drill_env.slack.requests)
    await set_incident_severity(raise_it)
    assert len(_status_page(drill_env)) == posted and len(drill_env.slack.requests) == told
