"""The drill approver: a second client that resumes paused runs through Prefect's API, as a person does in the UI.

It reads the run's pause (its RunInput schema and description, as the UI's Resume dialog shows them) and answers:
an acknowledgement (`by`) or an approval (`decision`, `approver`, `reason`, `plan_hash` read from the run's own
pre-filled input). Used by `runbook drill --approve auto` and by the tests.

`slack_approver` is the drill's approver in Slack (`runbook drill --approve slack`): it watches the Slack stand-in's
#incidents for messages with buttons and clicks Approve / Acknowledge as a user of the policy's approvers map —
Slack's signed interaction payload to the intake, which verifies it and resumes the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_runs import aresume_flow_run


async def paused_runs(flow_names: list[str] | None = None) -> list[FlowRun]:
    """Return flow runs waiting in a pause or suspension, optionally only of some flows."""
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            flow_filter=FlowFilter(name=FlowFilterName(any_=flow_names)) if flow_names else None,
        )


async def pause_form(run: FlowRun) -> tuple[dict[str, Any], str]:
    """Return (the pause form's JSON schema, its Markdown description) as the UI's Resume dialog shows them."""
    import json

    keyset = run.state.state_details.run_input_keyset if run.state and run.state.state_details else None
    if not keyset:
        return {}, ""
    async with get_client() as client:
        schema_raw = await client.read_flow_run_input(flow_run_id=run.id, key=keyset["schema"])
        try:
            description_raw = await client.read_flow_run_input(flow_run_id=run.id, key=keyset["description"])
        except Exception:  # a pause without a description
            description_raw = "null"
    schema = json.loads(schema_raw) if schema_raw else {}
    description = json.loads(description_raw) if description_raw else ""
    return schema, description or ""


async def prefilled_input(run: FlowRun) -> dict[str, Any]:
    """Return the values the run pre-filled in its pause form (e.g. the plan hash)."""
    schema, _ = await pause_form(run)
    return {k: v["default"] for k, v in (schema.get("properties") or {}).items() if "default" in v}


async def wait_for_pause(flow_names: list[str] | None = None, timeout: float = 30.0,
                         exclude: set[UUID] | None = None) -> FlowRun:
    """Wait until a run of one of these flows is paused; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in await paused_runs(flow_names):
            if not exclude or run.id not in exclude:
                return run
        await asyncio.sleep(0.3)
    raise TimeoutError(f"no paused run of {flow_names or 'any flow'} within {timeout:g}s")


async def resume(run: FlowRun | UUID, run_input: dict[str, Any]) -> None:
    """Resume a paused run with the given input (validated by the server against the run's schema)."""
    await aresume_flow_run(run.id if isinstance(run, FlowRun) else run, run_input=run_input)


async def slack_approver(slack: Any, user_id: str, stop: asyncio.Event, answered: list[dict[str, Any]],
                         incident_ids: set[str] | None = None) -> None:
    """Click Approve on every approval request (and Acknowledge on every page) in #incidents as `user_id`."""
    from runbook.clients.slack import ACKNOWLEDGE, APPROVE

    clicked: set[tuple[str, str]] = set()
    while not stop.is_set():
        for message in slack.messages("incidents"):
            text = str(message.get("text") or "")
            if incident_ids and not any(i in text or i in str(message.get("blocks")) for i in incident_ids):
                continue
            for action_id in (APPROVE, ACKNOWLEDGE):
                key = (str(message.get("ts")), action_id)
                if key in clicked or action_id not in slack.buttons(message):
                    continue
                clicked.add(key)
                try:
                    response = await slack.click(message["ts"], action_id, user_id, "drill-approver")
                    answered.append({"slack": action_id, "ts": message["ts"], "status": response.status_code})
                except Exception as exc:  # the intake down: say so in the result, keep watching
                    answered.append({"slack": action_id, "ts": message["ts"], "error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.3)
