"""Benchmark: N concurrent incidents through 1, 2 and 4 workers (alert → page latency, declarations per minute).

    .venv/bin/python -m bench.workers [--incidents 4] [--workers 1 2 4]

The production topology of `runbook up --workers N` (deployments/workers.py) on a Prefect server on PostgreSQL,
the drill stack's PagerDuty stand-in as the pager: for each worker count, `--incidents` P0 declarations are started
at once as `declare-incident` deployment runs (respond: deployment, so each starts `respond-p0` as its own run, on
the workers too); measured per incident from the run's creation to the PagerDuty trigger with its dedup key (the
page), and for the batch until the last page. The responses then wait for an acknowledgement; the topology's stop
cancels them. Not a test: timings depend on the machine's load. Results go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings

from bench._support import in_temp_home
from deployments.local_server import prefect_on_postgres
from deployments.workers import Topology, deploy_to_pool, shared_store
from runbook.drill import DrillStack
from runbook.store import open_store


async def _batch(stack: DrillStack, store_url: str, incidents: int, timeout: float = 600) -> dict[str, Any]:
    """Declare `incidents` P0s at once; return the alert → page latencies and the time to the last page."""
    from prefect.deployments.flow_runs import arun_deployment

    tag = uuid.uuid4().hex[:6]
    titles = [f"bench {tag} #{i}" for i in range(incidents)]
    began = time.monotonic()
    await asyncio.gather(*(arun_deployment(
        "declare-incident/declare-incident", timeout=0,
        parameters={"params": {"title": t, "severity": "P0", "respond": "deployment", "declared_by": "bench"}})
        for t in titles))
    created = time.monotonic()
    paged: dict[str, float] = {}
    ids: dict[str, str] = {}
    while len(paged) < incidents and time.monotonic() - began < timeout:
        if len(ids) < incidents:
            async with open_store(store_url) as store:
                ids = {i.id: i.title for i in await store.list(limit=500) if i.title in titles}
        for request in stack.pagerduty.requests:
            body = request.body if isinstance(request.body, dict) else {}
            key = body.get("dedup_key")
            if body.get("event_action") == "trigger" and key in ids and key not in paged:
                paged[key] = request.time
        await asyncio.sleep(0.1)
    # request.time is wall-clock; convert the monotonic start to it once
    wall_began = time.time() - (time.monotonic() - began)
    latencies = sorted(t - wall_began for t in paged.values())
    return {"incidents": incidents, "paged": len(paged), "create_s": created - began,
            "latencies": latencies, "last_page_s": latencies[-1] if latencies else None}


def main() -> None:
    """Run the batches and print one line per worker count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    in_temp_home("runbook-bench-workers-", lambda home: _run(args, home))


def _run(args: argparse.Namespace, home: Path) -> None:
    with DrillStack() as stack, shared_store({}) as store_url, \
            prefect_on_postgres(home, server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}) as server, \
            temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        asyncio.run(deploy_to_pool(schedules=False))
        for workers in args.workers:
            env = {**stack.env, "RUNBOOK_STORE_URL": store_url}
            with Topology(server.api_url, workers=workers, state_dir=home / f"w{workers}", env=env,
                          deploy=False, prefix=f"bench-{workers}") as _:
                stack.pagerduty.clear_requests()
                result = asyncio.run(_batch(stack, store_url, args.incidents))
            lat = result["latencies"]
            median = f"{statistics.median(lat):.1f}s" if lat else "-"
            last = f"{result['last_page_s']:.1f}s" if lat else "-"
            rate = f"{60 * len(lat) / result['last_page_s']:.1f}/min" if lat and result["last_page_s"] else "-"
            print(f"workers {workers}: {result['paged']}/{args.incidents} paged; alert → page median {median}, "
                  f"last {last}; {rate} incidents paged", flush=True)


if __name__ == "__main__":
    main()
