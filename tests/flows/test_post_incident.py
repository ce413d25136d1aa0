"""Post-incident flows on a real Prefect server (test harness): scheduling, the sweep, the review, the follow-up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runbook.drill import DrillStack
from runbook.models import (
    ActionItem,
    EventKind,
    FollowUpKind,
    Incident,
    Severity,
    Status,
    TimelineEvent,
    new_incident_id,
    utcnow,
)
from runbook.store import IncidentStore, open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


# -- Slack: the drill stack's stand-in (real HTTP on loopback) ----------------------------------------------------


@dataclass
class Slack:
    """The drill stack's Slack stand-in, seen per channel."""

    stack: DrillStack

    def url(self, channel: str) -> str:
        """Return the webhook URL of a channel."""
        return self.stack.slack.webhook_url(channel)

    def texts(self, channel: str) -> list[str]:
        """Return the texts posted to a channel, oldest first."""
        return [str(m["text"]) for m in self.stack.slack.messages(channel)]

    @property
    def count(self) -> int:
        """Return how many messages were posted to any channel."""
        return len(self.stack.slack.messages())


@pytest.fixture
def slack(drill_stack: DrillStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Slack]:
    """Point the #incidents, #engineering and #operations webhooks at the drill stack's Slack; start empty."""
    drill_stack.slack.reset()
    for channel in ("incidents", "engineering", "operations"):
        monkeypatch.setenv(f"RUNBOOK_SLACK_WEBHOOK_{channel.upper()}", drill_stack.slack.webhook_url(channel))
    yield Slack(drill_stack)
    drill_stack.slack.reset()


@pytest.fixture
async def store(state_dir: Path, slack: Slack) -> AsyncIterator[IncidentStore]:
    """Open the store of a fresh state directory (Slack configured)."""
    async with open_store() as s:
        yield s


@pytest.fixture(scope="module")
async def deployments(prefect_harness: None) -> None:
    """Register the post-incident deployments on the harness server (no work pool needed)."""
    from flows.post_incident import FOLLOW_UP_FLOW, REVIEW_FLOW, post_incident_follow_up, post_incident_review

    for flow_, name in ((post_incident_review, REVIEW_FLOW), (post_incident_follow_up, FOLLOW_UP_FLOW)):
        deployment = await flow_.to_deployment(name=name)
        await deployment.apply()


async def resolved_incident(store: IncidentStore, resolved_at: datetime, severity: Severity = Severity.P0,
                            **fields: Any) -> Incident:
    """Record an incident declared 40 minutes before resolved_at, acknowledged, fixed, verified and resolved."""
    start = resolved_at - timedelta(minutes=40)
    incident = Incident(id=new_incident_id(start), title="Billing broken", severity=severity, created_at=start,
                        **fields)
    await store.declare(incident)
    await store.acknowledge(incident.id, "sam", at=start + timedelta(minutes=5))
    await store.append_event(incident.id, TimelineEvent(at=start + timedelta(minutes=20), kind="remediation_applied",
                                                        actor="runbook", summary="Webhook secret restored"))
    await store.append_event(incident.id, TimelineEvent(at=start + timedelta(minutes=30), kind="verification",
                                                        actor="verify-service", summary="Webhook accepted",
                                                        details={"passed": True}))
    return await store.transition(incident.id, Status.RESOLVED, at=resolved_at)


async def runs_named(name: str) -> list[Any]:
    """Return the flow runs with exactly this name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def now_s() -> datetime:
    """Return now, to the second (Prefect and the store keep microseconds, but a clean clock reads better)."""
    return utcnow().replace(microsecond=0)


# -- scheduling -------------------------------------------------------------------------------------------------


async def test_follow_ups_are_scheduled_24h_and_7d_after_resolution(deployments: None,
                                                                    store: IncidentStore) -> None:
    """The review runs at resolved + 24 h and the follow-up at resolved + 7 days, named after the incident."""
    from flows.post_incident import schedule_follow_ups

    resolved_at = now_s()
    incident = await resolved_incident(store, resolved_at)
    await schedule_follow_ups(incident.id, now=resolved_at)
    review = await runs_named(f"post-incident-review {incident.id}")
    follow_up = await runs_named(f"post-incident-follow-up {incident.id}")
    assert [r.expected_start_time for r in review] == [resolved_at + timedelta(hours=24)]
    assert [r.expected_start_time for r in follow_up] == [resolved_at + timedelta(days=7)]
    assert review[0].parameters == {"params": {"incident_id": incident.id}}
    rows = {f.kind: f.flow_run_id for f in await store.follow_ups(incident.id)}
    assert rows == {FollowUpKind.REVIEW_24H: str(review[0].id), FollowUpKind.FOLLOW_UP_1W: str(follow_up[0].id)}
    assert len(await store.timeline(incident.id, kind=EventKind.FOLLOW_UP_SCHEDULED)) == 2


async def test_scheduling_twice_creates_no_second_run(deployments: None, store: IncidentStore) -> None:
    """Calling schedule_follow_ups again (a retried resolve) leaves exactly one run of each kind."""
    from flows.post_incident import schedule_follow_ups

    incident = await resolved_incident(store, now_s())
    await schedule_follow_ups(incident.id)
    again = await schedule_follow_ups(incident.id)
    assert {r.status for r in again} == {"exists"}
    assert len(await runs_named(f"post-incident-review {incident.id}")) == 1
    assert len(await runs_named(f"post-incident-follow-up {incident.id}")) == 1


async def test_sweep_creates_missing_runs_once(deployments: None, store: IncidentStore) -> None:
    """The sweep creates a missed review to run now and the follow-up at its due time; a second sweep adds none."""
    from flows.follow_up_sweep import follow_up_sweep

    resolved_at = now_s() - timedelta(days=2)
    incident = await resolved_incident(store, resolved_at)
    before = utcnow()
    first = await follow_up_sweep()
    second = await follow_up_sweep()
    review = await runs_named(f"post-incident-review {incident.id}")
    follow_up = await runs_named(f"post-incident-follow-up {incident.id}")
    assert len(first.created) == 2 and second.created == []
    assert len(review) == 1 and len(follow_up) == 1
    assert before - timedelta(seconds=1) <= review[0].expected_start_time <= utcnow()
    assert follow_up[0].expected_start_time == resolved_at + timedelta(days=7)


async def test_sweep_recreates_a_deleted_run(deployments: None, store: IncidentStore) -> None:
    """A follow-up whose run was deleted gets a new run from the sweep, and the row points at it."""
    from prefect.client.orchestration import get_client

    from flows.follow_up_sweep import follow_up_sweep
    from flows.post_incident import schedule_follow_ups

    incident = await resolved_incident(store, now_s())
    scheduled = {r.kind: r.flow_run_id for r in await schedule_follow_ups(incident.id)}
    async with get_client() as client:
        await client.delete_flow_run(scheduled[FollowUpKind.REVIEW_24H])
    outcome = await follow_up_sweep()
    review = await runs_named(f"post-incident-review {incident.id}")
    assert [r.kind for r in outcome.created] == [FollowUpKind.REVIEW_24H]
    assert len(review) == 1 and str(review[0].id) != scheduled[FollowUpKind.REVIEW_24H]
    rows = {f.kind: f.flow_run_id for f in await store.follow_ups(incident.id)}
    assert rows[FollowUpKind.REVIEW_24H] == str(review[0].id)


async def test_sweep_escalates_a_review_past_its_deadline_once(deployments: None, store: IncidentStore,
                                                               slack: Slack) -> None:
    """A review with nothing recorded 24 h + 48 h after resolution is escalated to the lead, by one sweep only."""
    from flows.follow_up_sweep import follow_up_sweep

    incident = await resolved_incident(store, now_s() - timedelta(days=4))
    first = await follow_up_sweep()
    second = await follow_up_sweep()
    assert first.escalated_reviews == [incident.id] and second.escalated_reviews == []
    assert len([t for t in slack.texts("incidents") if "Engineering Lead" in t and incident.id in t]) == 1


# -- the review -------------------------------------------------------------------------------------------------


async def paused_run(name: str, timeout: float = 20) -> Any:
    """Wait until the flow run with this name is PAUSED and return it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    flt = FlowRunFilter(name=FlowRunFilterName(any_=[name]),
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    async with get_client() as client:
        for _ in range(int(timeout * 5)):
            runs = await client.read_flow_runs(flow_run_filter=flt)
            if runs:
                return runs[0]
            await asyncio.sleep(0.2)
    raise AssertionError(f"{name} never paused")


REVIEW_INPUT = {
    "reviewed_by": "alex",
    "root_cause": "The webhook secret was rotated in Stripe but not in Vercel.",
    "lessons_learned": "The webhook check caught it within minutes.",
    "preventive_measures": "Rotate secrets with one script that updates both sides.",
    "action_items": [{"title": "Write the rotation script", "owner": "@kim", "due": "2026-12-10"}],
}


async def test_review_input_from_the_api_ends_up_in_the_report(store: IncidentStore,
                                                               slack: Slack) -> None:
    """The review reminds #incidents, pauses for the form, and the input resumed through the API is reported."""
    from prefect.flow_runs import aresume_flow_run

    from flows.post_incident import PostIncidentReviewParams, post_incident_review

    incident = await resolved_incident(store, now_s() - timedelta(days=1))
    run = asyncio.create_task(post_incident_review(
        PostIncidentReviewParams(incident_id=incident.id, poll_interval_seconds=1)))
    paused = await paused_run(f"post-incident-review {incident.id}")
    await aresume_flow_run(paused.id, run_input=REVIEW_INPUT)
    outcome = await asyncio.wait_for(run, 30)

    assert outcome.outcome == "recorded"
    report = Path(outcome.report_path).read_text()
    assert "## Root Cause\n\nThe webhook secret was rotated in Stripe but not in Vercel.\n" in report
    assert "## Preventive Measures\n\nRotate secrets with one script that updates both sides.\n" in report
    assert "- [ ] Write the rotation script (owner: @kim, due 2026-12-10)" in report
    assert [(i.title, i.owner, i.due) for i in await store.action_items(incident.id)] == [
        ("Write the rotation script", "@kim", date(2026, 12, 10))]
    assert any(incident.id in text and "review" in text.lower() for text in slack.texts("incidents"))
    assert [e.actor for e in await store.timeline(incident.id, kind=EventKind.REVIEW_RECORDED)] == ["alex"]


async def test_blank_review_input_is_refused_at_resume(store: IncidentStore) -> None:
    """The server refuses a review whose root cause is blank (the rule is in the JSON schema), before the flow."""
    from prefect.flow_runs import aresume_flow_run

    from flows.post_incident import PostIncidentReviewParams, post_incident_review

    incident = await resolved_incident(store, now_s() - timedelta(days=1))
    run = asyncio.create_task(post_incident_review(
        PostIncidentReviewParams(incident_id=incident.id, poll_interval_seconds=1)))
    paused = await paused_run(f"post-incident-review {incident.id}")
    with pytest.raises(RuntimeError, match="Validation failed for field 'root_cause'"):
        await aresume_flow_run(paused.id, run_input={**REVIEW_INPUT, "root_cause": "   "})
    await aresume_flow_run(paused.id, run_input=REVIEW_INPUT)
    assert (await asyncio.wait_for(run, 30)).outcome == "recorded"


async def test_missed_review_deadline_escalates_to_the_lead(store: IncidentStore, slack: Slack) -> None:
    """With nothing filled in before the deadline, #incidents hears of it naming the engineering lead; run completes."""
    from prefect.client.orchestration import get_client

    from flows.post_incident import PostIncidentReviewParams, post_incident_review

    incident = await resolved_incident(store, now_s() - timedelta(days=1))
    state = await post_incident_review(
        PostIncidentReviewParams(incident_id=incident.id, review_deadline_hours=1 / 3600, poll_interval_seconds=1),
        return_state=True,
    )
    outcome = await state.aresult()
    assert outcome.outcome == "escalated"
    assert any("Engineering Lead" in t and incident.id in t for t in slack.texts("incidents"))
    escalations = await store.timeline(incident.id, kind=EventKind.ESCALATED)
    assert [e.details["role"] for e in escalations] == ["Engineering Lead"]
    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    assert run.state is not None and run.state.is_completed()


# -- the 1-week follow-up ---------------------------------------------------------------------------------------


async def test_follow_up_reminds_and_escalates_overdue_action_items(store: IncidentStore,
                                                                    slack: Slack) -> None:
    """Overdue items remind their owner in #engineering; past the grace days the lead is told too."""
    from flows.post_incident import PostIncidentFollowUpParams, post_incident_follow_up

    incident = await resolved_incident(store, now_s() - timedelta(days=7))
    today = utcnow().date()
    late = await store.add_action_item(incident.id, ActionItem(title="Add alert", owner="kim",
                                                               due=today - timedelta(days=1)))
    very_late = await store.add_action_item(incident.id, ActionItem(title="Fix docs", owner="@lee",
                                                                    due=today - timedelta(days=5)))
    await store.add_action_item(incident.id, ActionItem(title="Later", owner="max", due=today + timedelta(days=3)))
    await store.add_action_item(incident.id, ActionItem(title="Done", owner="ned", due=today - timedelta(days=9),
                                                        done=True))
    outcome = await post_incident_follow_up(PostIncidentFollowUpParams(incident_id=incident.id))

    assert sorted(outcome.reminded_items) == sorted([late.id, very_late.id])
    assert outcome.escalated_items == [very_late.id]
    engineering = slack.texts("engineering")
    assert any(t.startswith("@kim: action item \"Add alert\"") for t in engineering)
    assert any("Engineering Lead" in t and "Fix docs" in t and "@lee" in t for t in engineering)
    items = {i.title: i for i in await store.action_items(incident.id)}
    assert items["Add alert"].reminded_at is not None and items["Add alert"].escalated_at is None
    assert items["Fix docs"].escalated_at is not None
    assert items["Later"].reminded_at is None and items["Done"].reminded_at is None


async def test_follow_up_shares_learnings_and_sends_the_executive_summary(store: IncidentStore,
                                                                          slack: Slack) -> None:
    """A P1 follow-up reminds #operations to update the runbook, shares learnings, sends the executive summary."""
    from flows.post_incident import PostIncidentFollowUpParams, post_incident_follow_up

    incident = await resolved_incident(store, now_s() - timedelta(days=7), Severity.P1,
                                       lessons_learned="Checks caught it.", root_cause="Secret drift.")
    await post_incident_follow_up(PostIncidentFollowUpParams(incident_id=incident.id))

    operations = slack.texts("operations")
    assert any("Runbook update due" in t for t in operations)
    summary = [t for t in operations if t.startswith("Executive summary")]
    assert len(summary) == 1
    assert all(s in summary[0] for s in ("P1", "Duration: 40m 00s", "Root cause: Secret drift.",
                                         "MTTA 5m 00s", "MTTR 40m 00s", "users medium"))
    assert any("Lessons learned: Checks caught it." in t for t in slack.texts("engineering"))
    assert slack.count == 3
    assert len([e for e in await store.timeline(incident.id) if e.details.get("sent") is True]) == 3


async def test_follow_up_sends_no_executive_summary_below_p1(store: IncidentStore, slack: Slack) -> None:
    """A P2 incident's follow-up sends no executive summary."""
    from flows.post_incident import PostIncidentFollowUpParams, post_incident_follow_up

    incident = await resolved_incident(store, now_s() - timedelta(days=7), Severity.P2)
    await post_incident_follow_up(PostIncidentFollowUpParams(incident_id=incident.id))
    assert not any(t.startswith("Executive summary") for t in slack.texts("operations"))
    assert len(slack.texts("operations")) == 1


async def test_follow_up_run_again_sends_nothing_twice(store: IncidentStore, slack: Slack) -> None:
    """Running the follow-up a second time repeats no message."""
    from flows.post_incident import PostIncidentFollowUpParams, post_incident_follow_up

    incident = await resolved_incident(store, now_s() - timedelta(days=7))
    await store.add_action_item(incident.id, ActionItem(title="Add alert", owner="kim",
                                                        due=utcnow().date() - timedelta(days=4)))
    await post_incident_follow_up(PostIncidentFollowUpParams(incident_id=incident.id))
    first = slack.count
    await post_incident_follow_up(PostIncidentFollowUpParams(incident_id=incident.id))
    assert first == 5 and slack.count == first


async def test_unconfigured_channel_is_recorded_as_not_sent(store: IncidentStore, slack: Slack,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an #operations webhook the follow-up still completes and records the messages as not sent, why."""
    from flows.post_incident import PostIncidentFollowUpParams, post_incident_follow_up

    monkeypatch.delenv("RUNBOOK_SLACK_WEBHOOK_OPERATIONS")
    incident = await resolved_incident(store, now_s() - timedelta(days=7))
    state = await post_incident_follow_up(PostIncidentFollowUpParams(incident_id=incident.id), return_state=True)
    assert state.is_completed()
    unsent = [e for e in await store.timeline(incident.id) if e.details.get("sent") is False]
    assert len(unsent) == 2
    assert all("RUNBOOK_SLACK_WEBHOOK_OPERATIONS" in e.details["reason"] for e in unsent)
    everything = json.dumps([e.model_dump(mode="json") for e in await store.timeline(incident.id)])
    token = slack.url("engineering").rsplit("/", 1)[1]
    assert slack.url("engineering") not in everything and token not in everything


async def test_report_artifact_is_published_keyed_by_incident(store: IncidentStore) -> None:
    """Inside a flow the report is also a markdown artifact keyed report-<incident id>."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.post_incident import PostIncidentFollowUpParams, post_incident_follow_up

    incident = await resolved_incident(store, now_s() - timedelta(days=7))
    await post_incident_follow_up(PostIncidentFollowUpParams(incident_id=incident.id))
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"report-{incident.id}"])))
    assert len(artifacts) == 1 and artifacts[0].type == "markdown"
    assert f"# Incident Report: {incident.title}" in str(artifacts[0].data)


# -- the runbook's own review -----------------------------------------------------------------------------------


async def test_runbook_review_reminder_reminds_the_owner_when_due(state_dir: Path, slack: Slack) -> None:
    """Past the runbook's next review date, #operations is reminded, naming the owner."""
    from flows.runbook_review_reminder import RunbookReviewReminderParams, runbook_review_reminder

    outcome = await runbook_review_reminder(RunbookReviewReminderParams(as_of=date(2025, 3, 1)))
    assert outcome.outcome == "reminded"
    assert [t for t in slack.texts("operations") if "owner: Operations" in t and "2025-02-27" in t]


async def test_runbook_review_reminder_has_nothing_to_do_before_the_date(state_dir: Path,
                                                                         slack: Slack) -> None:
    """Before the next review date the flow ends as a named nothing-to-do and posts nothing."""
    from flows.runbook_review_reminder import RunbookReviewReminderParams, runbook_review_reminder

    outcome = await runbook_review_reminder(RunbookReviewReminderParams(as_of=date(2025, 2, 1)))
    assert outcome.outcome == "nothing-to-do"
    assert slack.count == 0


# -- a deployment run: suspended, resumed, re-run from the top ---------------------------------------------------


async def test_deployment_review_suspends_and_resumes_without_reminding_twice(
    deployments: None, store: IncidentStore, slack: Slack
) -> None:
    """From a deployment the review suspends (no process held); the resumed re-run records it, reminding once."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.flow_runs import arun_deployment
    from prefect.flow_runs import aresume_flow_run
    from prefect.runner import Runner

    from flows.post_incident import REVIEW_DEPLOYMENT, REVIEW_FLOW, post_incident_review

    incident = await resolved_incident(store, now_s() - timedelta(days=1))
    run = await arun_deployment(REVIEW_DEPLOYMENT, parameters={"params": {"incident_id": incident.id}},
                                timeout=0, as_subflow=False, flow_run_name=f"{REVIEW_FLOW} {incident.id}")

    async def execute_due_runs() -> None:
        runner = Runner(name=f"review-{incident.id}", query_seconds=1)
        await runner.aadd_flow(post_incident_review, name=REVIEW_FLOW)
        await runner.start(run_once=True)

    await execute_due_runs()
    async with get_client() as client:
        suspended = await client.read_flow_run(run.id)
    assert suspended.state is not None and suspended.state.is_paused()
    await aresume_flow_run(run.id, run_input=REVIEW_INPUT)
    await execute_due_runs()
    async with get_client() as client:
        finished = await client.read_flow_run(run.id)
        await client.set_deployment_paused_state(finished.deployment_id, False)
    assert finished.state is not None and finished.state.is_completed()
    assert (await store.get(incident.id)).root_cause == REVIEW_INPUT["root_cause"]
    assert len(await store.timeline(incident.id, kind=EventKind.REMINDER)) == 1
    assert len([t for t in slack.texts("incidents") if "review due" in t]) == 1
