"""Approve, reject and acknowledge from Slack: signed clicks from the Slack stand-in reach the real intake, the
clicking user is verified against the policy's approvers, and the paused runs decide with their own checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prefect import flow

from deployments.local_server import free_port
from flows._remediation import Plan, request_approval
from flows.code_rollback import CodeRollbackParams, code_rollback
from flows.escalate_incident import EscalateParams, escalate_incident
from runbook.clients.slack import ACKNOWLEDGE, APPROVE, REASON_BLOCK, REASON_INPUT, REJECT
from runbook.drill import DrillStack
from runbook.errors import ApprovalDenied
from runbook.intake import create_app
from runbook.models import Approval, EventKind
from runbook.store import open_store
from tests.conftest import write_policy
from tests.flows.remediation_support import new_incident, paused_run, timeline
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

POLICY = """
response: {ack_poll_seconds: 0.2}
approvers:
  U0BEN: {name: Ben, may_approve: [code-rollback, test-approval]}
  U0ALICE: {name: Alice, may_approve: ["*"]}
  U0CAROL: {name: Carol, may_approve: [database-rollback]}
"""


@pytest.fixture
async def slack(drill_env: DrillStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DrillStack]:
    """The Slack app configured (bot token, signing secret), the approvers map, the intake served on 127.0.0.1."""
    for key, value in drill_env.slack.app_env().items():
        monkeypatch.setenv(key, value)
    write_policy(tmp_path, monkeypatch, POLICY)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, "the intake to start", timeout=20)
    drill_env.slack.interaction_url = f"http://127.0.0.1:{port}/slack/interactions"
    yield drill_env
    server.should_exit = True
    await task


def _with_button(stack: DrillStack, action_id: str, *, exclude: set[str] = frozenset()) -> dict[str, Any] | None:  # type: ignore[assignment]
    for message in stack.slack.messages("incidents"):
        if message.get("ts") not in exclude and action_id in stack.slack.buttons(message):
            return message
    return None


async def request_message(stack: DrillStack, exclude: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """Wait for an approval request with buttons in #incidents; return it."""
    return await eventually(lambda: _with_button(stack, APPROVE, exclude=exclude), "an approval request in Slack")


async def told(stack: DrillStack, user: str, words: str) -> str:
    """Wait for an ephemeral answer to a user containing words; return it."""
    return await eventually(lambda: next((m["text"] for m in stack.slack.ephemeral(user) if words in m["text"]),
                                         None), f"an ephemeral answer to {user} saying {words!r}")


@flow(name="test-approval", flow_run_name="test-approval {incident_id}")
async def ask(incident_id: str, plans: list[dict[str, Any]], two_person: bool = False,
              requested_by: str | None = None, requester_identity: str | None = None,
              first_timeout_s: float = 3600) -> list[Any]:
    """Ask for approval of each plan in turn (the first may time out), as a remediation does; return decisions."""
    out: list[Any] = []
    for i, data in enumerate(plans):
        timeout = timedelta(seconds=first_timeout_s if i == 0 else 3600)
        try:
            out.append(await request_approval(Plan(**data), incident_id=incident_id, requested_by=requested_by,
                                              requester_identity=requester_identity, two_person=two_person,
                                              timeout=timeout))
        except ApprovalDenied as exc:
            out.append(str(exc))
    return out


def plan(n: int = 1) -> dict[str, Any]:
    return {"action": "test-approval", "environment": "drill", "summary": f"test plan {n}",
            "steps": [f"step {n}"], "state": {"n": n}}


async def test_approve_in_slack_runs_the_remediation_and_names_the_slack_user(slack: DrillStack) -> None:
    """A signed Approve click by an allowed approver resumes the code rollback; the timeline says Ben via slack."""
    slack.inject("bad-deploy")
    incident = await new_incident()
    run = asyncio.ensure_future(code_rollback(CodeRollbackParams(incident_id=incident, verify_within_seconds=20)))
    message = await request_message(slack)
    assert {b["value"].split("|")[2] for b in slack.slack.buttons(message).values()} == {
        e.details["plan_hash"] for e in await timeline(incident, EventKind.APPROVAL_REQUESTED)}
    assert (await slack.slack.click(message["ts"], APPROVE, "U0BEN", "ben")).status_code == 200
    result = await asyncio.wait_for(run, 120)
    assert result.outcome == "verified", result.detail
    [event] = await timeline(incident, EventKind.APPROVAL)
    assert event.actor == "Ben" and event.details["via"] == "slack" and event.details["identity"] == "U0BEN"
    assert "via slack" in event.summary
    final = slack.slack.message(message["ts"])
    assert "Approved by Ben" in final["text"] and slack.slack.buttons(final) == {}


async def test_forged_stale_and_unauthorised_clicks_change_nothing(slack: DrillStack) -> None:
    """Bad signature and old timestamp → 401; unknown or not-allowed users → ephemeral refusals; then a reject."""
    incident = await new_incident()
    run = asyncio.ensure_future(ask(incident, [plan()]))
    message = await request_message(slack)
    payload = slack.slack.click_payload(message["ts"], APPROVE, "U0ALICE")
    forged = await slack.slack.send_interaction(payload, secret="not-the-signing-secret")
    old = await slack.slack.send_interaction(payload, timestamp=int(time.time()) - 6 * 60)
    assert (forged.status_code, old.status_code) == (401, 401)
    assert "5 minutes" in old.json()["error"]
    await slack.slack.click(message["ts"], APPROVE, "U0MALLORY")
    await told(slack, "U0MALLORY", "not in the runbook's approvers")
    await slack.slack.click(message["ts"], APPROVE, "U0CAROL")
    await told(slack, "U0CAROL", "may not approve or reject test-approval")
    assert await paused_run(incident, timeout=5) is not None and not run.done()
    async with open_store() as store:
        assert await store.approvals(incident) == []
    await slack.slack.click(message["ts"], REJECT, "U0ALICE")
    [view] = await eventually(lambda: slack.slack.views(), "the reject modal")
    answer = await slack.slack.submit_view(view["id"], "U0ALICE", {REASON_BLOCK: {REASON_INPUT: "wrong target"}})
    assert answer.status_code == 200 and not answer.content
    [decision] = await asyncio.wait_for(run, 60)
    assert "rejected by Alice: wrong target" in decision
    async with open_store() as store:
        [approval] = await store.approvals(incident)
    assert (approval.decision, approval.via, approval.identity) == ("reject", "slack", "U0ALICE")


async def test_requester_cannot_approve_their_own_two_person_plan(slack: DrillStack) -> None:
    """The requester's own Approve is refused with the two-person rule; the run waits for someone else."""
    incident = await new_incident()
    run = asyncio.ensure_future(ask(incident, [plan()], two_person=True, requested_by="alice",
                                    requester_identity="U0ALICE"))
    message = await request_message(slack)
    await slack.slack.click(message["ts"], APPROVE, "U0ALICE")
    assert "two-person rule" in await told(slack, "U0ALICE", "two-person rule")
    assert not run.done() and await paused_run(incident, timeout=5) is not None
    await slack.slack.click(message["ts"], APPROVE, "U0BEN")
    [approval] = await asyncio.wait_for(run, 60)
    assert isinstance(approval, Approval) and (approval.approver, approval.identity) == ("Ben", "U0BEN")


async def test_stale_clicks_answer_plan_changed_and_already_decided(slack: DrillStack) -> None:
    """A click on the old plan's message says 'plan changed'; a click after the decision says 'already decided'."""
    incident = await new_incident()
    first_run = asyncio.ensure_future(ask(incident, [plan(1)], first_timeout_s=2))
    first = await request_message(slack)
    stale = slack.slack.click_payload(first["ts"], APPROVE, "U0BEN")  # Slack still shows the old buttons
    [timed_out] = await asyncio.wait_for(first_run, 60)
    assert "no decision" in timed_out
    run = asyncio.ensure_future(ask(incident, [plan(2)]))  # the state moved on: a new plan, a new message
    second = await request_message(slack, exclude={first["ts"]})
    late = slack.slack.click_payload(second["ts"], APPROVE, "U0ALICE")  # sent after the decision
    await slack.slack.send_interaction(stale)
    assert "see the new message" in await told(slack, "U0BEN", "The plan changed")
    await slack.slack.click(second["ts"], APPROVE, "U0BEN")
    [approved] = await asyncio.wait_for(run, 60)
    assert isinstance(approved, Approval) and approved.approver == "Ben"
    await slack.slack.send_interaction(late)
    assert "Already decided by Ben" in await told(slack, "U0ALICE", "Already decided")
    async with open_store() as store:
        assert [(a.decision, a.approver) for a in await store.approvals(incident)] == [
            ("timeout", "(nobody)"), ("approve", "Ben")]


async def test_two_concurrent_clicks_give_one_decision(slack: DrillStack) -> None:
    """Ben and Alice click Approve at the same moment: one decision is recorded, the other is told so."""
    incident = await new_incident()
    run = asyncio.ensure_future(ask(incident, [plan()]))
    message = await request_message(slack)
    await paused_run(incident)
    payloads = [slack.slack.click_payload(message["ts"], APPROVE, user) for user in ("U0BEN", "U0ALICE")]
    answers = await asyncio.gather(*(slack.slack.send_interaction(p) for p in payloads))
    assert [a.status_code for a in answers] == [200, 200]
    [approval] = await asyncio.wait_for(run, 60)
    loser = "U0ALICE" if approval.identity == "U0BEN" else "U0BEN"
    await told(slack, loser, "Already decided")
    async with open_store() as store:
        assert len(await store.approvals(incident)) == 1


async def test_acknowledge_button_stops_the_escalation(slack: DrillStack) -> None:
    """The page's message has an Acknowledge button; a click acknowledges through the store (via slack) and the
    escalation stops like any ack. A re-run of the escalation does not post the button twice."""
    incident = await new_incident()
    run = asyncio.create_task(escalate_incident(EscalateParams(incident_id=incident)))
    message = await eventually(lambda: _with_button(slack, ACKNOWLEDGE), "the Acknowledge button of the page")
    assert "Paged On-Call Engineer" in message["text"]
    await slack.slack.click(message["ts"], ACKNOWLEDGE, "U0BEN")
    outcome = await asyncio.wait_for(run, 120)
    assert outcome.acknowledged_by == "Ben"
    [event] = await timeline(incident, EventKind.ACKNOWLEDGED)
    assert event.details["via"] == "slack" and event.details["identity"] == "U0BEN"
    assert "Acknowledged by Ben" in slack.slack.message(message["ts"])["text"]
    assert slack.slack.buttons(slack.slack.message(message["ts"])) == {}
    await escalate_incident(EscalateParams(incident_id=incident))  # acknowledged: returns at once
    posted = [e for e in await timeline(incident, EventKind.SLACK) if e.details.get("acknowledge")]
    assert len(posted) == 1 and len(slack.slack.messages("incidents")) == 1
