"""A pending page whose sender died goes out at the next follow-up sweep (issue 17): the page is durable in the store,
the sweep finds its sender's flow run over in Prefect and sends it, once; a second sweep sends nothing."""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from flows.follow_up_sweep import FollowUpSweepParams, follow_up_sweep
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.models import EventKind, Incident, Severity
from runbook.policy import get_policy
from runbook.store import open_store
from tasks.pagerduty import page_contact, pending_pages
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")


@flow(name="pages-then-dies")
async def pages_then_dies(incident: Incident) -> None:
    """Page on-call (PagerDuty hangs: the page is pending, in flight) until this run is killed."""
    await page_contact(incident, get_policy().chain()[0])


async def test_a_pending_page_with_no_live_run_is_sent_by_the_sweep(drill_env: DrillStack) -> None:
    """The run paging on-call is killed while PagerDuty hangs: its page stays pending with no live sender; the next
    sweep sends it (same dedup key, one page), the one after sends nothing."""
    async with open_store() as store:
        incident, _ = await store.declare(Incident(title="Checkout down", severity=Severity.P0, scenario="payment",
                                                   fingerprint="sweep-pending"))
    drill_env.pagerduty.inject(Fault.hang(seconds=120, times=1))
    sender = asyncio.create_task(pages_then_dies(incident))
    await eventually(lambda: drill_env.pagerduty.requests_to("/v2/enqueue"), "the page to reach PagerDuty")
    sender.cancel()  # the run dies with its page in flight
    with contextlib.suppress(asyncio.CancelledError, BaseException):
        await sender
    drill_env.pagerduty.clear_faults()
    [pending] = await pending_pages(incident.id)
    assert pending["state"] == "in-flight" and pending["sender_run_id"]

    async def sender_over() -> bool:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(pending["sender_run_id"]))
        return run.state is not None and run.state.is_final()

    await eventually(sender_over, "the killed run to end in Prefect")
    outcome = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
    assert outcome.pages_sent == [incident.id]
    assert drill_env.pagerduty.alert(incident.id) is not None and await pending_pages(incident.id) == []
    again = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
    assert again.pages_sent == []
    async with open_store() as store:
        assert len(await store.timeline(incident.id, kind=EventKind.PAGED)) == 1


async def test_a_page_still_in_flight_in_a_live_run_is_left_to_it(drill_env: DrillStack) -> None:
    """While the paging run is alive (PagerDuty hanging), the sweep leaves its pending page alone."""
    async with open_store() as store:
        incident, _ = await store.declare(Incident(title="Login down", severity=Severity.P0, scenario="authentication",
                                                   fingerprint="sweep-live"))
    drill_env.pagerduty.inject(Fault.hang(seconds=120, times=1))
    sender = asyncio.create_task(pages_then_dies(incident))
    try:
        await eventually(lambda: drill_env.pagerduty.requests_to("/v2/enqueue"), "the page to reach PagerDuty")
        outcome = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
        assert outcome.pages_sent == [] and len(drill_env.pagerduty.requests_to("/v2/enqueue")) == 1
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, BaseException):
            await sender
