"""A burst through the intake on the warm path (issue 21): 40 alerts at once for 4 fingerprints are all answered 202,
all kept in the intake's outbox, all attached to their incident, and exactly 4 incidents are opened. Counts, not
timing (timing: bench/burst.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from uuid import UUID

import httpx
import pytest

from deployments.local_server import free_port
from deployments.warm_start import aserve_warm
from runbook.drill import DrillStack
from runbook.intake.outbox import read_outbox
from runbook.store import open_store
from tests.e2e.deploy_support import delete_runs, runs_of
from tests.paging import paged_roles
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

ALERTS, FINGERPRINTS = 40, 4


@pytest.fixture
async def warm(drill_env: DrillStack, registered_deployments: dict[str, UUID]) -> AsyncIterator[str]:
    """The task worker and the intake (warm starter) on a free port, as `runbook up --intake-port` runs them; the
    runs they cause are deleted afterwards. Returns the intake's base URL."""
    names = ("declare-incident", "respond-p0")
    before = {r.id for name in names for r in await runs_of(registered_deployments[name])}
    async with open_store():  # the store's first open, once
        pass
    port, ready = free_port(), asyncio.Event()
    serving = asyncio.create_task(aserve_warm(intake_port=port, ready=ready, handle_signals=False))
    await asyncio.wait_for(ready.wait(), timeout=120)
    yield f"http://127.0.0.1:{port}"
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    after = {r.id for name in names for r in await runs_of(registered_deployments[name])}
    await delete_runs(list(after - before))


def _alert(i: int) -> dict[str, str]:
    n = i % FINGERPRINTS
    return {"source": "uptime-robot", "fingerprint": f"uptime:burst-{n}", "summary": f"burst target {n} is down",
            "rule": "application_down", "labels": {"copy": str(i)}}


async def test_a_burst_is_answered_kept_and_attached(warm: str, drill_env: DrillStack) -> None:
    """40 concurrent alerts, 4 fingerprints: 40 answers 202, 40 kept, 40 attached (each on its fingerprint's
    incident), 4 incidents, and one page per incident."""
    headers = {"Authorization": f"Bearer {drill_env.env['RUNBOOK_INTAKE_TOKEN']}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=warm, timeout=120) as client:
        answers = await asyncio.gather(*(client.post("/alerts", content=json.dumps(_alert(i)), headers=headers)
                                         for i in range(ALERTS)))
    assert [a.status_code for a in answers] == [202] * ALERTS, [a.text for a in answers if a.status_code != 202]
    assert len({a.json()["intake_id"] for a in answers}) == ALERTS
    assert len(await read_outbox()) == ALERTS

    async def all_attached() -> bool:
        return len(await read_outbox("attached")) == ALERTS

    await eventually(all_attached, "every kept alert to be attached to its incident", timeout=600, interval=1)
    rows = await read_outbox()
    async with open_store() as store:
        incidents = {i.id: i for i in await store.list(include_drill=True)}
        alerts = [a for a in await store.alerts(valid=True, limit=1000) if a["fingerprint"].startswith("uptime:burst")]
    assert len(incidents) == FINGERPRINTS
    assert sorted(i.fingerprint or "" for i in incidents.values()) == [f"uptime:burst-{n}" for n in range(FINGERPRINTS)]
    assert len(alerts) == ALERTS and all(a["incident_id"] in incidents for a in alerts)
    for row in rows:
        assert incidents[row["incident_id"]].fingerprint == row["fingerprint"]
    assert len(paged_roles(drill_env)) == FINGERPRINTS, paged_roles(drill_env)
