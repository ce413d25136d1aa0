"""The dead man's switch on a real Prefect server (issue 19): the monitor stops, the server's proactive automation
runs the watchdog deployment, on-call is paged once; the monitor's next cycle resolves the page's incident."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from uuid import UUID

import pytest

from deployments.serve import load_deployments
from flows.monitor import MonitorParams, monitor
from flows.watchdog import ensure_watchdog_automation
from runbook.drill import DrillStack
from runbook.models import Status
from runbook.store import open_store
from tests.e2e.deploy_support import delete_runs, execute_due_runs, runs_of
from tests.paging import paged_roles
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

WINDOW = timedelta(seconds=10)  # Prefect's smallest proactive window; the policy's default is 5 minutes


async def test_a_silent_monitor_pages_on_call_once(drill_env: DrillStack) -> None:
    """One monitor cycle, then none: the automation fires after the window and again after the next, the
    watchdog runs twice and on-call is paged once; a monitor cycle afterwards resolves the watchdog's incident."""
    [deployment] = load_deployments(names=["watchdog"], schedules=False)
    deployment_id = await deployment.aapply()
    from prefect.client.orchestration import get_client

    automation_id = await ensure_watchdog_automation(deployment_id, within=WINDOW)
    try:
        await monitor(MonitorParams(respond="none", cycles=1, interval_seconds=0))  # the monitor's last cycle
        for fired in (1, 2):  # one watchdog at a time (the deployment's concurrency limit): execute each in turn
            await eventually(partial(_at_least, deployment_id, fired),  # type: ignore[arg-type]
                             f"watchdog run {fired} from the automation",
                             timeout=90, interval=0.5)
            await execute_due_runs("watchdog")
        ran = sorted(await runs_of(deployment_id), key=lambda r: str(r.created))
        assert all(r.parameters["params"]["heartbeat_minutes"] == WINDOW.total_seconds() / 60 for r in ran)
        assert [r.state_name for r in ran][:2] == ["Completed", "Completed"], [r.state for r in ran]
        assert len(paged_roles(drill_env)) == 1  # paged once, however often the automation fired
        async with open_store() as store:
            [incident] = await store.list()
        assert incident.fingerprint == "guard:monitor_heartbeat:drill" and "has not completed a cycle" in \
            incident.title
    finally:
        async with get_client() as client:
            await client.delete_automation(automation_id)  # a served re-apply of the deployment keeps it
        await delete_runs([r.id for r in await runs_of(deployment_id)])
    await monitor(MonitorParams(respond="none", cycles=1, interval_seconds=0))  # the monitor runs again
    async with open_store() as store:
        assert (await store.get(incident.id)).status is Status.RESOLVED


async def _at_least(deployment_id: UUID, count: int) -> bool:
    """Return True once the watchdog has `count` runs."""
    return len(await runs_of(deployment_id)) >= count
