"""Acknowledging in PagerDuty stops the escalation: V3 webhooks to the drill's intake, or the REST API polled.

The drill stack's PagerDuty stand-in opens an incident per dedup key, lets the test press Acknowledge / Resolve as
a person does in the app, and delivers signed V3 webhooks to the stack's intake (our real intake app), retrying
on 5xx. The escalation runs on a manual clock: a step fires only when the test moves the clock past it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.escalate_incident import EscalateParams, escalate_incident
from runbook.clock import ManualClock
from runbook.drill import DrillStack, Fault
from runbook.drill.approver import wait_for_pause
from runbook.drill.pagerduty import ONCALL_USER
from runbook.intake.signatures import sign_pagerduty
from runbook.models import Incident, Severity
from runbook.report import build_report, render_markdown
from runbook.store import open_store
from tasks.pagerduty import resolve_pages
from tests.conftest import write_policy
from tests.paging import clock_stopped_at_declaration, paged, paged_roles
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

POLICY = "response: {ack_poll_seconds: 0.2}\n"
LEAD_AT, CTO_AT = timedelta(minutes=15), timedelta(minutes=30)


@pytest.fixture
async def incident(drill_env: DrillStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Incident:
    """Declare a P0 with the runbook's chain (on-call at 0, lead at 15, CTO at 30 minutes)."""
    write_policy(tmp_path, monkeypatch, POLICY)
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Site completely down", severity=Severity.P0, fingerprint="pd"))
    return inc


@pytest.fixture
def webhooks_only(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> DrillStack:
    """No REST token: an acknowledgement can only arrive by webhook (so the test proves that path)."""
    monkeypatch.delenv("RUNBOOK_PAGERDUTY_API_TOKEN")
    return drill_env


@pytest.fixture
def polling_only(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[DrillStack]:
    """No webhook subscription and no signing secret: only the REST API tells of an acknowledgement."""
    monkeypatch.delenv("RUNBOOK_PAGERDUTY_WEBHOOK_SECRET")
    drill_env.pagerduty.unsubscribe()
    try:
        yield drill_env
    finally:
        drill_env.pagerduty.subscribe(drill_env.intake.webhook_url, drill_env.pagerduty_webhook_secret)


@pytest.fixture
def manual(incident: Incident) -> Iterator[ManualClock]:
    """Stop the escalation's clock at the moment the incident was declared."""
    with clock_stopped_at_declaration(incident) as fixed:
        yield fixed


async def _acks(incident_id: str) -> list[Any]:
    async with open_store() as store:
        return await store.timeline(incident_id, kind="acknowledged")


async def _start(incident: Incident) -> asyncio.Task[Any]:
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident.id)))
    await wait_for_pause(["escalate-incident"], timeout=120)
    return run


async def test_ack_in_pagerduty_stops_the_escalation(incident: Incident, webhooks_only: DrillStack,
                                                     manual: ManualClock) -> None:
    """On-call presses Acknowledge in PagerDuty after the first page: nobody else is paged, the timeline names the
    PagerDuty user, MTTA ends at PagerDuty's acknowledgement, and the report shows channel and person."""
    stack = webhooks_only
    run = await _start(incident)
    assert await paged(stack, 1) == ["On-Call Engineer"]
    pressed = stack.pagerduty.press_acknowledge(incident.id)
    delivery = await asyncio.to_thread(stack.pagerduty.wait_delivered, "incident.acknowledged", incident.id)
    outcome = await asyncio.wait_for(run, timeout=120)
    manual.advance(CTO_AT * 2)  # long past the lead's and the CTO's steps: nobody else is paged
    assert paged_roles(stack) == ["On-Call Engineer"] and outcome.pages == ["On-Call Engineer"]
    assert outcome.acknowledged_by == ONCALL_USER["name"] and outcome.channel == "pagerduty"
    [ack] = await _acks(incident.id)
    assert ack.actor == ONCALL_USER["name"] and ack.details["via"] == "pagerduty"
    assert ack.details["identity"] == ONCALL_USER["id"] and ack.details["source"] == "webhook"
    assert ack.details["pagerduty_incident"] == pressed["id"] and ack.details["dedup_key"] == incident.id
    pressed_at = datetime.fromisoformat(delivery["body"]["event"]["occurred_at"].replace("Z", "+00:00"))
    async with open_store() as store:
        current = await store.get(incident.id)
        timeline = await store.timeline(incident.id)
    assert current.acknowledged_at == pressed_at and current.acknowledged_via == "pagerduty"
    assert current.mtta == pressed_at - incident.created_at
    report = build_report(current, timeline)
    assert report.mtta == current.mtta
    assert f"Acknowledged by {ONCALL_USER['name']} via pagerduty (pagerduty user {ONCALL_USER['id']})" \
        in render_markdown(report)
    # our own acknowledge_pages afterwards reaches PagerDuty as the integration, recorded as ours, not a person
    ours = await eventually(lambda: _ours_noted(incident.id), "our own acknowledgement noted")
    assert ours and len(await _acks(incident.id)) == 1


async def _ours_noted(incident_id: str) -> bool:
    async with open_store() as store:
        return any(e.details.get("ours") for e in await store.timeline(incident_id, kind="note"))


async def test_ack_of_the_leads_page_stops_before_the_cto(incident: Incident, webhooks_only: DrillStack,
                                                          manual: ManualClock) -> None:
    """The engineering lead acknowledges their own page in PagerDuty: the CTO is never paged."""
    stack = webhooks_only
    lead = stack.pagerduty.add_user("Ben Lead", "ben@permit.school")
    run = await _start(incident)
    await paged(stack, 1)
    manual.advance_to(incident.created_at + LEAD_AT)
    assert await paged(stack, 2) == ["On-Call Engineer", "Engineering Lead"]
    stack.pagerduty.press_acknowledge(f"{incident.id}-engineering-lead", lead["id"])
    outcome = await asyncio.wait_for(run, timeout=120)
    manual.advance_to(incident.created_at + CTO_AT * 2)
    assert paged_roles(stack) == ["On-Call Engineer", "Engineering Lead"]
    assert outcome.acknowledged_by == "Ben Lead" and outcome.pages == ["On-Call Engineer", "Engineering Lead"]
    [ack] = await _acks(incident.id)
    assert ack.details["page_role"] == "Engineering Lead" and ack.details["identity"] == lead["id"]


async def test_a_reassign_in_pagerduty_is_a_response(incident: Incident, webhooks_only: DrillStack,
                                                      manual: ManualClock) -> None:
    """On-call reassigns the page to a colleague in PagerDuty: PagerDuty pages the colleague, and our chain stops
    (no engineering lead, no CTO); the timeline says who routed it to whom."""
    stack = webhooks_only
    colleague = stack.pagerduty.add_user("Dana Backup", "dana@permit.school")
    run = await _start(incident)
    await paged(stack, 1)
    stack.pagerduty.press_reassign(incident.id, colleague["id"])
    await asyncio.to_thread(stack.pagerduty.wait_delivered, "incident.reassigned", incident.id)
    outcome = await asyncio.wait_for(run, timeout=120)
    manual.advance(CTO_AT * 2)
    assert paged_roles(stack) == ["On-Call Engineer"] and outcome.pages == ["On-Call Engineer"]
    [ack] = await _acks(incident.id)
    assert ack.actor == ONCALL_USER["name"] and ack.details["via"] == "pagerduty"
    assert ack.details["pagerduty_event"] == "incident.reassigned" and "Dana Backup" in ack.details["response"]


def _webhook(stack: DrillStack, incident_id: str) -> bytes:
    """Return a V3 incident.acknowledged body for the stand-in's incident (as PagerDuty would send it)."""
    pd = stack.pagerduty.incident(incident_id)
    assert pd is not None
    user = {"id": ONCALL_USER["id"], "type": "user_reference", "summary": ONCALL_USER["name"]}
    event = {"id": f"evt-{incident_id}", "event_type": "incident.acknowledged", "resource_type": "incident",
             "occurred_at": datetime.now().astimezone().isoformat(), "agent": user, "client": {"name": "PagerDuty"},
             "data": {**{k: pd[k] for k in ("id", "type", "self", "html_url", "title", "incident_key")},
                      "number": pd["incident_number"], "status": "acknowledged", "assignees": [user]}}
    return json.dumps({"event": event}).encode()


async def test_bad_signatures_are_401_and_record_nothing(incident: Incident, webhooks_only: DrillStack) -> None:
    """A wrong signature, no signature, or a replayed body under another body's signature answers 401, changes
    nothing; the same body correctly signed is recorded (so the 401s are the signature's doing)."""
    from runbook.policy import get_policy
    from tasks.pagerduty import page_contact

    stack = webhooks_only
    await page_contact(incident, get_policy().chain()[0])
    body, secret = _webhook(stack, incident.id), stack.pagerduty_webhook_secret
    other = body.replace(b"acknowledged", b"acknowledged ")
    url = stack.intake.webhook_url
    attempts = {
        "wrong": {"X-PagerDuty-Signature": sign_pagerduty(body, "not-the-secret")},
        "missing": {},
        "another body's": {"X-PagerDuty-Signature": sign_pagerduty(other, secret)},
        "not v1": {"X-PagerDuty-Signature": sign_pagerduty(body, secret).replace("v1=", "v0=")},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        for headers in attempts.values():
            answer = await http.post(url, content=body, headers={**headers, "X-Webhook-Id": "w1",
                                                                 "Content-Type": "application/json"})
            assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
        assert await _acks(incident.id) == []
        rotated = sign_pagerduty(body, "the-old-secret", secret)  # during a rotation PagerDuty signs with both
        good = await http.post(url, content=body, headers={"X-PagerDuty-Signature": rotated, "X-Webhook-Id": "w1"})
    assert good.status_code == 202 and good.json()["recorded"] == "acknowledged", good.text
    assert len(await _acks(incident.id)) == 1
    assert secret not in good.text


async def test_a_webhook_delivered_three_times_is_one_acknowledgement(incident: Incident, webhooks_only: DrillStack,
                                                                      manual: ManualClock) -> None:
    """PagerDuty delivers at least once: the same webhook (same X-Webhook-Id) three times is one acknowledgement."""
    stack = webhooks_only
    run = await _start(incident)
    await paged(stack, 1)
    stack.pagerduty.press_acknowledge(incident.id)
    first = await asyncio.to_thread(stack.pagerduty.wait_delivered, "incident.acknowledged", incident.id)
    await asyncio.wait_for(run, timeout=120)
    for _ in range(2):
        stack.pagerduty.redeliver(first["webhook_id"])
    delivery = next(d for d in stack.pagerduty.deliveries if d["webhook_id"] == first["webhook_id"])
    statuses = await eventually(lambda: len(delivery["statuses"]) >= 3 and delivery["statuses"], "three deliveries")
    assert statuses == [202, 200, 200]
    assert len(await _acks(incident.id)) == 1


async def test_endpoint_down_for_a_while_then_the_retry_stops_the_escalation(
        incident: Incident, webhooks_only: DrillStack, manual: ManualClock) -> None:
    """The intake answers 503 for a while: PagerDuty retries, the escalation goes on meanwhile, and the later
    delivery still stops it (the CTO is never paged)."""
    stack = webhooks_only
    run = await _start(incident)
    await paged(stack, 1)
    stack.intake.inject(Fault.error(503, path="/pagerduty/webhooks", times=None))
    stack.pagerduty.press_acknowledge(incident.id)
    await eventually(lambda: [d for d in stack.pagerduty.deliveries if d["event_type"] == "incident.acknowledged"
                              and d["statuses"].count(503) >= 3], "three refused deliveries")
    manual.advance_to(incident.created_at + LEAD_AT)  # still unacknowledged for us: the lead is paged
    assert await paged(stack, 2) == ["On-Call Engineer", "Engineering Lead"]
    assert not run.done() and await _acks(incident.id) == []
    stack.intake.clear_faults()
    outcome = await asyncio.wait_for(run, timeout=120)
    manual.advance_to(incident.created_at + CTO_AT * 2)
    assert outcome.acknowledged_by == ONCALL_USER["name"]
    assert paged_roles(stack) == ["On-Call Engineer", "Engineering Lead"]
    delivery = stack.pagerduty.wait_delivered("incident.acknowledged", incident.id, timeout=5)
    assert delivery["statuses"][-1] == 202 and delivery["statuses"].count(503) >= 3


async def test_polling_notices_an_ack_through_the_rest_api(incident: Incident, polling_only: DrillStack,
                                                           manual: ManualClock) -> None:
    """Without webhooks, the escalation reads the pages' status through the REST API and stops on the ack."""
    stack = polling_only
    run = await _start(incident)
    await paged(stack, 1)
    stack.pagerduty.press_acknowledge(incident.id)
    outcome = await asyncio.wait_for(run, timeout=120)
    manual.advance(CTO_AT * 2)
    assert outcome.acknowledged_by == ONCALL_USER["name"] and paged_roles(stack) == ["On-Call Engineer"]
    [ack] = await _acks(incident.id)
    assert ack.details["source"] == "rest-poll" and ack.details["identity"] == ONCALL_USER["id"]
    assert ack.details["email"] == ONCALL_USER["email"]  # looked up: GET /users/{id} (the incident names no email)
    assert stack.pagerduty.requests_to(f"/users/{ONCALL_USER['id']}", "GET")
    assert stack.pagerduty.deliveries == []
    reads = stack.pagerduty.requests_to("/incidents", "GET")
    assert reads and all(r.headers["authorization"] == f"Token token={stack.pagerduty.api_token}"
                         and r.headers["accept"] == "application/vnd.pagerduty+json;version=2"
                         and r.query["incident_key"] for r in reads)


async def test_a_resolve_in_pagerduty_leaves_our_incident_open(incident: Incident, webhooks_only: DrillStack,
                                                               manual: ManualClock) -> None:
    """A person resolves the page in PagerDuty: recorded (and counted as the response), our incident stays open
    until verification, and our later resolve of the pages neither re-resolves nor re-triggers it."""
    stack = webhooks_only
    run = await _start(incident)
    await paged(stack, 1)
    stack.pagerduty.press_resolve(incident.id)
    await asyncio.wait_for(run, timeout=120)
    async with open_store() as store:
        current = await store.get(incident.id)
        notes = [e.summary for e in await store.timeline(incident.id, kind="note")]
    assert current.status.is_open and current.resolved_at is None
    assert current.acknowledged_via == "pagerduty"
    assert any("Resolved in PagerDuty by" in n and "stays open until verification" in n for n in notes)
    assert await resolve_pages(current) == []
    actions = [r.body.get("event_action") for r in stack.pagerduty.requests if r.path.endswith("/enqueue")]
    assert "resolve" not in actions and actions.count("trigger") == 1
