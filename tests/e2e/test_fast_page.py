"""The warm path (issue 18): an alert through the intake is declared by a Prefect background task on a long-running
task worker, which pages on-call once, then posts the status page and #incidents; duplicates, re-runs and the later
respond deployment run page nobody twice; a page left pending by a dead background task run goes out at the next
sweep. Order and counts, not timing (timing: bench/alert_latency.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client

from deployments.local_server import free_port
from deployments.warm_start import aserve_warm
from flows._response import first_response
from flows.declare_incident import DeclareParams, declare_alert
from flows.follow_up_sweep import FollowUpSweepParams, follow_up_sweep
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.intake.outbox import read_outbox
from runbook.models import EventKind, Incident, Severity
from runbook.policy import get_policy
from runbook.store import open_store
from tasks.pagerduty import TASK_RUN_SENDER, page_contact, pending_pages
from tests.e2e.deploy_support import delete_runs, runs_of
from tests.paging import paged_roles
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

ALERT = {"source": "uptime-robot", "fingerprint": "uptime:fast-page", "summary": "permit.school is down",
         "rule": "application_down", "labels": {"region": "us-east"}}


@pytest.fixture
async def warm(drill_env: DrillStack, registered_deployments: dict[str, UUID]) -> AsyncIterator[str]:
    """The task worker and the intake (built with the warm starter) on a free port; the runs they cause are deleted
    afterwards. Returns the intake's base URL."""
    before = {r.id for name in ("declare-incident", "respond-p0") for r in await runs_of(registered_deployments[name])}
    async with open_store():  # created once: three first opens at the same time race on a fresh SQLite file
        pass
    port, ready = free_port(), asyncio.Event()
    serving = asyncio.create_task(aserve_warm(intake_port=port, ready=ready, handle_signals=False))
    await asyncio.wait_for(ready.wait(), timeout=120)
    yield f"http://127.0.0.1:{port}"
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    after = {r.id for name in ("declare-incident", "respond-p0") for r in await runs_of(registered_deployments[name])}
    await delete_runs(list(after - before))


async def _handed_off(answer: dict[str, Any]) -> str:
    """Return the task run an answer names or, answered `queued` (the hand-off took longer than the answer may
    wait), the one the intake's outbox started for it."""
    if "task_run_id" in answer:
        return str(answer["task_run_id"])

    async def started() -> str | None:
        row = next(r for r in await read_outbox() if r["id"] == answer["intake_id"])
        return (row["started"] or {}).get("task_run_id")

    return str(await eventually(started, "the intake to hand the alert to Prefect"))


def _posted(stack: DrillStack, stand_in: Any, path_part: str) -> list[Any]:
    return [r for r in stand_in.requests if path_part in r.path and r.method == "POST"]


def _investigating_messages(stack: DrillStack) -> list[Any]:
    return [m for m in stack.slack.messages("#incidents") if "investigating:" in str(m)]


async def test_an_alert_pages_once_then_status_page_and_slack(warm: str, drill_env: DrillStack,
                                                              registered_deployments: dict[str, UUID]) -> None:
    """Three copies of one P0 alert at once through the intake: one incident, one page to on-call, then the status
    page "investigating" and #incidents; the declaration is a task run of the task worker, with no flow run of its
    own (the page is a task run under it); the rest of the response is a respond-p0 deployment run; a re-run of the
    first response and of the task pages nobody again."""
    token = drill_env.env["RUNBOOK_INTAKE_TOKEN"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=warm, timeout=60) as client:
        answers = await asyncio.gather(*(client.post("/alerts", content=json.dumps(ALERT), headers=headers)
                                         for _ in range(3)))
    assert [a.status_code for a in answers] == [202] * 3, [a.text for a in answers]
    task_runs = [UUID(await _handed_off(a.json())) for a in answers]

    async def finished() -> bool:
        async with get_client() as prefect:
            runs = [await prefect.read_task_run(t) for t in task_runs]
        return all(r.state is not None and r.state.is_final() for r in runs)

    await eventually(finished, "the three declare-alert task runs to finish", timeout=180)
    async with get_client() as prefect:
        states = [(await prefect.read_task_run(t)).state for t in task_runs]
    assert all(s is not None and s.is_completed() for s in states), states

    async with open_store() as store:
        incidents = await store.list(include_drill=True)
        assert len(incidents) == 1, incidents
        incident = incidents[0]
        timeline = await store.timeline(incident.id)
    assert len(paged_roles(drill_env)) == 1, paged_roles(drill_env)
    kinds = [e.kind for e in timeline]
    paged_at = next(e.at for e in timeline if e.kind == EventKind.PAGED)
    status_at = next(e.at for e in timeline if e.kind == EventKind.STATUS_PAGE)
    slack_at = next(e.at for e in timeline if e.kind == EventKind.SLACK and "investigating" in e.summary)
    assert kinds.count(EventKind.PAGED) == 1 and kinds.count(EventKind.STATUS_PAGE) == 1
    assert paged_at <= status_at <= slack_at, [(e.kind, e.summary) for e in timeline]
    assert len(_posted(drill_env, drill_env.statuspage, "/incidents")) == 1
    assert len(_investigating_messages(drill_env)) == 1
    respond_runs = await runs_of(registered_deployments["respond-p0"])
    assert [r.parameters["params"]["incident_id"] for r in respond_runs].count(incident.id) == 1
    paged = next(e for e in timeline if e.kind == EventKind.PAGED)
    assert paged.flow_run_id is None, paged  # declared in the task run itself: no nested flow run before the page
    async with get_client() as prefect:
        page_run = await prefect.read_task_run(UUID(paged.provenance["task_run_id"]))
    # under the declare-alert task run (its parent); the page's task run once showed a flow_run_id on a loaded CI
    # run although the event had none (not understood yet, see the stop note), so that id is not asserted here
    assert page_run.name.startswith("page_contact"), page_run
    assert {p.id for p in page_run.task_inputs["__parents__"]} & set(task_runs), page_run.task_inputs

    @flow(name="first-response-again")
    async def again() -> None:
        await first_response(incident)  # what the respond-p0 run (or its re-run) does first

    await again()
    declared = await declare_alert(DeclareParams.model_validate({"alert": {**ALERT, "raw": ALERT}}))  # a retry
    assert declared.created is False and declared.incident_id == incident.id
    assert len(paged_roles(drill_env)) == 1
    assert len(_posted(drill_env, drill_env.statuspage, "/incidents")) == 1
    assert len(_investigating_messages(drill_env)) == 1
    respond_runs = await runs_of(registered_deployments["respond-p0"])
    assert [r.parameters["params"]["incident_id"] for r in respond_runs].count(incident.id) == 1


@task(name="pages-in-the-background")
async def pages_in_a_task(incident: Incident) -> None:
    """Page on-call from a task run outside any flow run, as the warm path's declare-alert does."""
    await page_contact(incident, get_policy().chain()[0])


async def test_a_page_left_pending_by_a_dead_background_task_is_sent_by_the_sweep(drill_env: DrillStack) -> None:
    """The warm path pages from a task run with no flow run: its pending page names that task run as its sender.
    While the task run lives (PagerDuty hanging) the follow-up sweep leaves the page to it; once it is killed the
    next sweep finds it over in Prefect and sends the page, once."""
    async with open_store() as store:
        incident, _ = await store.declare(Incident(title="Permits down", severity=Severity.P0,
                                                   fingerprint="warm-sender-dies"))
    drill_env.pagerduty.inject(Fault.hang(seconds=120, times=1))
    sender = asyncio.create_task(pages_in_a_task(incident))
    try:
        await eventually(lambda: drill_env.pagerduty.requests_to("/v2/enqueue"), "the page to reach PagerDuty")
        [pending] = await pending_pages(incident.id)
        assert pending["state"] == "in-flight" and pending["sender_run_id"].startswith(TASK_RUN_SENDER), pending
        alive = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
        assert alive.pages_sent == [] and len(drill_env.pagerduty.requests_to("/v2/enqueue")) == 1
    finally:
        sender.cancel()  # the task run dies with its page in flight
        with contextlib.suppress(asyncio.CancelledError, BaseException):
            await sender
    drill_env.pagerduty.clear_faults()

    async def sender_over() -> bool:
        async with get_client() as client:
            run = await client.read_task_run(UUID(pending["sender_run_id"].removeprefix(TASK_RUN_SENDER)))
        return run.state is not None and run.state.is_final()

    await eventually(sender_over, "the killed task run to end in Prefect")
    outcome = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
    assert outcome.pages_sent == [incident.id]
    assert drill_env.pagerduty.alert(incident.id) is not None and await pending_pages(incident.id) == []
    again = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
    assert again.pages_sent == []
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind=EventKind.PAGED)) == 1
