"""`runbook resolve` against a live Prefect server: the record changes at once, the CLI starts resolve-incident on
that server, and a worker runs it to the end (status page resolved, pages, follow-ups) in the same state dir."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.local_server import LocalPrefectServer, prefect_command
from runbook.clients.statuspage import StatuspageClient
from runbook.drill import DrillStack
from runbook.models import Incident, Severity, Status
from runbook.store import open_store
from tasks.common import open_client
from tests.e2e.deploy_support import POOL_SERVER

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(POOL_SERVER)]

RUNBOOK = Path(sys.executable).with_name("runbook")


async def _declare_with_public_incident(title: str) -> Incident:
    """Record an identified P1 whose status page incident is up, as its response left it."""
    async with open_store() as store:
        inc, _ = await store.declare(Incident(title=title, severity=Severity.P1, scenario="payment"), actor="dana")
        await store.transition(inc.id, Status.IDENTIFIED, actor="dana")
        async with open_client(StatuspageClient) as sp:
            public = await sp.create_incident(title, status="identified", body="Checkout is failing for some",
                                              impact_override="major")
        return await store.update(inc.id, statuspage_incident_id=public.id)


async def _record(incident_id: str) -> tuple[Incident, list[Any], list[Any]]:
    async with open_store() as store:
        return (await store.get(incident_id), await store.timeline(incident_id),
                await store.follow_ups(incident_id))


def test_runbook_resolve_starts_the_resolve_deployment_on_the_server(
        deployed: tuple[LocalPrefectServer, dict[str, str]], drill_env: DrillStack, tmp_path: Path) -> None:
    """`runbook resolve` with PREFECT_API_URL set resolves the record, names the resolve-incident run it started, and
    that run, executed by a worker of the pool, closes out: the public incident resolved, follow-ups scheduled."""
    server, server_env = deployed
    state = tmp_path / "state"  # drill_env's state dir: the CLI, the worker's runs and this test share one store
    env = {**server_env, **drill_env.env, "RUNBOOK_STATE_DIR": str(state)}
    inc = asyncio.run(_declare_with_public_incident("Checkout returns 500 for some students"))

    done = subprocess.run([str(RUNBOOK), "resolve", inc.id, "--reason", "Stripe recovered", "--by", "ana"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    started = re.search(r"^started resolve-incident run ([0-9a-f-]{36}) ", done.stdout, re.MULTILINE)
    assert started and done.stdout.startswith(f"resolved: {inc.id}"), done.stdout
    assert "Traceback" not in done.stdout + done.stderr and done.stderr.strip() == "", done.stderr
    record, _, _ = asyncio.run(_record(inc.id))
    assert record.status is Status.RESOLVED  # the record changed at once, before any run

    run_id = started[1]
    run = httpx.get(f"{server.api_url}/flow_runs/{run_id}", timeout=10, headers=server.api_headers).json()
    assert run["parameters"]["params"] == {"incident_id": inc.id, "reason": "Stripe recovered", "by": "ana",
                                           "via": "cli"}
    worker = subprocess.run([*prefect_command(), "worker", "start", "--pool", "runbook-pool", "--run-once"],
                            env=env, cwd="/", capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    run = httpx.get(f"{server.api_url}/flow_runs/{run_id}", timeout=10, headers=server.api_headers).json()
    assert run["state_type"] == "COMPLETED", run["state"]

    _, timeline, follow_ups = asyncio.run(_record(inc.id))
    public = next(i for i in drill_env.statuspage.incidents if i["id"] == inc.statuspage_incident_id)
    assert public["status"] == "resolved"
    posted = [e for e in timeline if e.kind == "status_page" and e.details.get("status") == "resolved"]
    assert [e.flow_run_id for e in posted] == [run_id]  # by the run the CLI started, once
    resolved = [e for e in timeline if e.kind == "status_changed" and e.details["to"] == "resolved"]
    assert [(e.actor, e.details["via"]) for e in resolved] == [("ana", "cli")]  # the record changed once
    assert {f.kind for f in follow_ups} == {"review-24h", "follow-up-1w"}
