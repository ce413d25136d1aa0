"""Helpers for end-to-end tests over deployments: register prefect.yaml, create runs, execute them with a Runner."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.runner import Runner

from deployments.serve import load_deployments

INCIDENT_ID = "inc-20261126-abcdef"
# The tests that use the `pool_server` fixture (or `deployed`) carry @pytest.mark.xdist_group(POOL_SERVER);
# pyproject's `--dist loadgroup` sends them to one xdist worker, so that server starts once per session.
POOL_SERVER = "pool-server"


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
