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
from prefect.deployments.flow_runs import arun_deployment

from deployments.local_server import free_port
from flows._remediation import Plan, request_approval
from flows.code_rollback import CodeRollbackParams, code_rollback
from flows.escalate_incident import EscalateParams, escalate_incident
from runbook.clients.slack import ACKNOWLEDGE, APPROVE, REASON_BLOCK, REASON_INPUT, REJECT, REQUEST
from runbook.drill import DrillStack
from runbook.errors import ApprovalDenied
from runbook.intake import create_app
from runbook.models import Approval, EventKind
from runbook.store import open_store
from tests.conftest import write_policy
from tests.e2e.deploy_support import delete_runs, execute_due_runs, read_run, runs_of
from tests.flows.remediation_support import new_incident, paused_run, timeline
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

POLICY = """
response: {ack_poll_seconds: 0.2}
approvers:
  U0BEN: {name: Ben, may_approve: [code-rollback, database-rollback, test-approval]}
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


async def test_a_deployment_run_requested_and_approved_in_slack(slack: DrillStack,
                                                               registered_deployments: dict[str, Any]) -> None:
    """A dry run of the database rollback offers its plan in Slack; Alice requests it (her verified Slack id
    becomes the requester), the deployment run suspends and posts its approval request; Alice's own Approve is
    refused by the two-person rule, Ben's resumes the suspended run in a new process, which reverts the migration.
    The timeline names Alice as requester and Ben as approver via slack; the message is updated in place."""
    slack.inject("database-migration")
    incident = await new_incident()
    deployment = registered_deployments["database-rollback"]
    before = {r.id for r in await runs_of(deployment)}
    await arun_deployment("database-rollback/database-rollback", timeout=0, as_subflow=False,
                          parameters={"params": {"incident_id": incident, "requested_by": "runbook",
                                                 "dry_run": True}})
    try:
        await execute_due_runs("database-rollback")
        offer = await eventually(lambda: _with_button(slack, REQUEST), "the dry run's plan with a Request button")
        assert not slack.healthy("database-migration")
        await slack.slack.click(offer["ts"], REQUEST, "U0MALLORY", "mallory")
        assert "nothing was started" in await told(slack, "U0MALLORY", "not in the runbook's approvers")
        second = slack.slack.click_payload(offer["ts"], REQUEST, "U0BEN", "ben")  # Ben still sees the button
        await slack.slack.click(offer["ts"], REQUEST, "U0ALICE", "alice")
        await eventually(lambda: "Requested by Alice" in (slack.slack.message(offer["ts"])["text"] or ""),
                         "the plan's message to say who requested it")
        assert slack.slack.buttons(slack.slack.message(offer["ts"])) == {}
        await slack.slack.send_interaction(second)
        assert "nothing was started" in await told(slack, "U0BEN", "Already requested by Alice")
        [requested] = [r for r in await runs_of(deployment) if r.id not in before and "slack" in r.tags]
        await execute_due_runs("database-rollback")
        suspended = await read_run(requested.id)
        assert suspended.state is not None and suspended.state.name == "Suspended", suspended.state
        message = await request_message(slack)
        assert "Two-person rule" in str(message["blocks"]) and "Alice" in str(message["blocks"])
        await slack.slack.click(message["ts"], APPROVE, "U0ALICE", "alice")
        assert "two-person rule" in await told(slack, "U0ALICE", "two-person rule")
        assert (await read_run(requested.id)).state.name == "Suspended"  # type: ignore[union-attr]
        await slack.slack.click(message["ts"], APPROVE, "U0BEN", "ben")
        await eventually(lambda: "Approved by Ben" in (slack.slack.message(message["ts"])["text"] or ""),
                         "the intake to resume the run and say so")
        await execute_due_runs("database-rollback")  # a new process picks the resumed run up, from the top
        finished = await read_run(requested.id)
        assert finished.state is not None and finished.state.is_completed(), finished.state
        assert slack.healthy("database-migration")
        [asked] = await timeline(incident, EventKind.APPROVAL_REQUESTED)
        assert (asked.actor, asked.details["requester_identity"], asked.details["requested_via"]) == (
            "Alice", "U0ALICE", "slack")
        [started] = await timeline(incident, EventKind.REMEDIATION_STARTED)
        assert started.actor == "Alice" and started.details["requested_via"] == "slack"
        [approved] = await timeline(incident, EventKind.APPROVAL)
        assert (approved.actor, approved.details["via"], approved.details["identity"]) == ("Ben", "slack", "U0BEN")
        final = slack.slack.message(message["ts"])
        assert "Approved by Ben" in final["text"] and "via slack" in final["text"] and slack.slack.buttons(final) == {}
        assert [u["how"] for u in final["updates"]][-1] == "chat.update"  # the flow's own record, in place
    finally:
        await delete_runs([r.id for r in await runs_of(deployment) if r.id not in before])


@flow(name="respond-test-parent")
async def respond_like(incident_id: str) -> Any:
    """Start a remediation as respond does: a subflow whose requester is the runbook itself."""
    return await code_rollback(CodeRollbackParams(incident_id=incident_id, requested_by="runbook",
                                                  verify_within_seconds=20))


async def test_automation_is_the_requester_of_what_respond_starts(slack: DrillStack) -> None:
    """A remediation started by another flow is requested by 'runbook/<that flow>' (no identity): a person's
    Approve is never the requester's, even under the two-person rule; the record says so."""
    slack.inject("bad-deploy")
    incident = await new_incident()
    run = asyncio.ensure_future(respond_like(incident))
    message = await request_message(slack)
    await slack.slack.click(message["ts"], APPROVE, "U0BEN", "ben")
    result = await asyncio.wait_for(run, 120)
    assert result.outcome == "verified", result.detail
    [started] = await timeline(incident, EventKind.REMEDIATION_STARTED)
    [asked] = await timeline(incident, EventKind.APPROVAL_REQUESTED)
    assert started.actor == asked.actor == "runbook/respond-test-parent"
    assert (asked.details["requested_via"], asked.details["requester_identity"]) == ("runbook", None)
    [approval] = await timeline(incident, EventKind.APPROVAL)
    assert (approval.actor, approval.details["identity"]) == ("Ben", "U0BEN")


async def test_a_cli_request_is_the_requesters_own_for_the_two_person_rule(
        slack: DrillStack, registered_deployments: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook remediate database-rollback --by ben` starts the deployment run requested by Ben via cli (his
    approvers-map id and the OS user recorded); Ben's own Approve in Slack is refused by the two-person rule."""
    import getpass

    from runbook.cli.main import main

    slack.inject("database-migration")
    incident = await new_incident()
    deployment = registered_deployments["database-rollback"]
    before = {r.id for r in await runs_of(deployment)}
    try:
        code = await asyncio.to_thread(main, ["remediate", "database-rollback", "--incident", incident, "--by", "ben"])
        out = capsys.readouterr().out
        assert code == 0 and "requested by ben (U0BEN) via cli" in out and "Traceback" not in out
        [run] = [r for r in await runs_of(deployment) if r.id not in before]
        assert "cli" in run.tags
        await execute_due_runs("database-rollback")
        assert (await read_run(run.id)).state.name == "Suspended"  # type: ignore[union-attr]
        [asked] = await timeline(incident, EventKind.APPROVAL_REQUESTED)
        assert (asked.actor, asked.details["requester_identity"], asked.details["requested_via"]) == (
            "ben", "U0BEN", "cli")
        [started] = await timeline(incident, EventKind.REMEDIATION_STARTED)
        assert started.details["requester_os_user"] == getpass.getuser()
        message = await request_message(slack)
        await slack.slack.click(message["ts"], APPROVE, "U0BEN", "ben")
        assert "two-person rule" in await told(slack, "U0BEN", "two-person rule")
        assert (await read_run(run.id)).state.name == "Suspended"  # type: ignore[union-attr]
        assert not slack.healthy("database-migration")
    finally:
        await delete_runs([r.id for r in await runs_of(deployment) if r.id not in before])
