"""Helpers for the remediation tests: a per-test drill fixture, incidents, and a second client that approves.

The approver is a second client of the Prefect API, as the UI is: it finds the PAUSED flow run of the incident,
reads the plan hash from the pause's Markdown description, and resumes the run with a typed `run_input`.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import PrefectHTTPStatusError
from prefect.flow_runs import aresume_flow_run

from flows._remediation import RemediationResult
from runbook.drill import DrillStack
from runbook.models import EventKind, Incident, Severity, TimelineEvent
from runbook.store import open_store

PLAN_HASH = re.compile(r"Plan hash:\*\* `([0-9a-f]{8,64})`")


@pytest.fixture(name="drill")
def drill_fixture(drill_env: DrillStack, prefect_harness: None) -> DrillStack:
    """Return the drill stack with every runbook setting pointed at it, on the Prefect test server."""
    return drill_env


def apply_env(monkeypatch: pytest.MonkeyPatch, changes: dict[str, str]) -> None:
    """Apply the env changes a scenario's inject returned."""
    for key, value in changes.items():
        monkeypatch.setenv(key, value)


async def new_incident(title: str = "drill incident") -> str:
    """Declare a fresh incident in the store and return its id."""
    async with open_store() as store:
        incident, _ = await store.declare(Incident(title=title, severity=Severity.P1, drill=True), None,
                                          actor="test")
    return incident.id


async def timeline(incident_id: str, kind: str | None = None) -> list[TimelineEvent]:
    """Return the incident's timeline (of one kind)."""
    async with open_store() as store:
        return await store.timeline(incident_id, kind=kind)


async def kinds(incident_id: str) -> list[str]:
    """Return the kinds of the incident's timeline events, in order."""
    return [e.kind for e in await timeline(incident_id)]


async def paused_run(incident_id: str, timeout: float = 20.0) -> FlowRun | None:
    """Return the PAUSED flow run whose name carries the incident id (None when none appears in time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with get_client() as client:
        while asyncio.get_running_loop().time() < deadline:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                name=FlowRunFilterName(like_=incident_id)))
            if runs:
                return runs[0]
            await asyncio.sleep(0.2)
    return None


async def pause_description(run: FlowRun, timeout: float = 10.0) -> str:
    """Return the Markdown the Resume dialog shows for a paused run (saved just after the pause starts)."""
    assert run.state is not None and run.state.state_details.run_input_keyset is not None
    key = run.state.state_details.run_input_keyset["description"]
    deadline = asyncio.get_running_loop().time() + timeout
    async with get_client() as client:
        while True:
            try:
                return str(await client.read_flow_run_input(flow_run_id=run.id, key=key))
            except PrefectHTTPStatusError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def plan_hash_of(run: FlowRun) -> str:
    """Return the plan hash shown in a paused run's description."""
    match = PLAN_HASH.search(await pause_description(run))
    assert match, "the pause description shows no plan hash"
    return match.group(1)


Meanwhile = Callable[[], Any] | None


async def decide(
    flow_call: Awaitable[RemediationResult],
    incident_id: str,
    *,
    decision: str = "approve",
    approver: str = "bob",
    meanwhile: Meanwhile = None,
    timeout: float = 60.0,
) -> RemediationResult:
    """Run a remediation flow and decide on its approval from a second client; return the flow's result."""
    task = asyncio.ensure_future(flow_call)
    run: FlowRun | None = None
    while run is None and not task.done():
        run = await paused_run(incident_id, timeout=0.5)
    if run is not None:
        plan_hash = await plan_hash_of(run)
        if meanwhile is not None:
            outcome = meanwhile()
            if inspect.isawaitable(outcome):
                await outcome
        await aresume_flow_run(run.id, run_input={"decision": decision, "approver": approver,
                                                  "reason": "drill test", "plan_hash": plan_hash})
    return await asyncio.wait_for(task, timeout)


async def event_details(incident_id: str, kind: EventKind) -> list[dict[str, Any]]:
    """Return the details of the incident's events of one kind."""
    return [e.details for e in await timeline(incident_id, kind=kind)]
