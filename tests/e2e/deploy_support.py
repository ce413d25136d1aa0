"""Helpers for end-to-end tests over deployments: register prefect.yaml, create runs, execute them with a Runner."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.runner import Runner

from deployments.local_server import drain_api_workers
from deployments.serve import load_deployments

INCIDENT_ID = "inc-20261126-abcdef"
# The tests that use the `pool_server` fixture (or `deployed`) carry @pytest.mark.xdist_group(POOL_SERVER);
# loadgroup (tests/conftest.py) sends them to one xdist worker, so that server starts once per session.
POOL_SERVER = "pool-server"


@contextlib.contextmanager
def prefect_settings(updates: dict[Any, Any]) -> Iterator[None]:
    """Point this process's Prefect client at another server (`updates`: its URL, its credential) for a while.

    Prefect keeps one events worker (and one API log worker) per process for every running server, bound to the
    server that was current when its first event was sent: without a drain on the way in and out, the events of
    later tests went to the previous server (or to none, once it stopped) — `Service 'EventsWorker' failed to
    process item` in the log, and the tests that wait for an event (test_monitor, test_fast_page) timed out.
    """
    from prefect.settings import temporary_settings

    drain_api_workers()
    try:
        with temporary_settings(updates=updates):
            yield
            drain_api_workers()
    finally:
        drain_api_workers()


async def register_all() -> dict[str, UUID]:
    """Apply every deployment of prefect.yaml to the current Prefect server; return name → deployment id."""
    return {d.name: await d.aapply() for d in load_deployments()}


async def execute_due_runs(*names: str, query_seconds: float = 1) -> None:
    """Execute the due runs of the named deployments once, each in a subprocess (Prefect's Runner, run_once)."""
    runner = Runner(name=f"e2e-{'-'.join(names)}"[:60], query_seconds=query_seconds, pause_on_shutdown=False)
    for deployment in load_deployments(names=names, schedules=False):
        await runner.aadd_deployment(deployment)
    await runner.start(run_once=True)


async def read_run(run_id: UUID | str) -> FlowRun:
    """Return a flow run by id."""
    async with get_client() as client:
        return await client.read_flow_run(UUID(str(run_id)))


async def runs_of(deployment_id: UUID) -> list[FlowRun]:
    """Return every flow run of a deployment."""
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), limit=200)


async def delete_runs(run_ids: list[Any]) -> None:
    """Delete flow runs (a test cleans up the runs it created so no later Runner executes them)."""
    async with get_client() as client:
        for run in await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(r)) for r in run_ids]))):
            await client.delete_flow_run(run.id)
