"""Benchmark: alert → page and alert → status page through the intake, warm path against the served hop, and the
bare-Prefect floor of each (an empty task / an empty flow the same way).

    .venv/bin/python -m bench.alert_latency [--alerts 20] [--served-alerts 10] [--query-seconds 2]
    .venv/bin/python -m bench.alert_latency --imports 3   (cold start: each entrypoint's import in a new process)

One Prefect server on PostgreSQL (as `runbook up` runs it), the drill stack's stand-ins (PagerDuty, Statuspage,
Slack on loopback), the incident store a SQLite file, prefect.yaml registered and only declare-incident served (the
respond-p0 run each incident starts is created, not run: N full responses at once would measure the machine, not the
path; they are deleted at the end):
  warm    `python -m deployments.warm_start --intake-port P`: the intake submits `declare-alert.delay()` to the task
          worker of the same process (issue 18's path);
  served  the intake with its default Starter: a declare-incident deployment run, picked up at the runner's next
          poll (--query-seconds) in a new Python process, which now pages first itself;
  floor   the same two mechanisms with nothing in them: an empty background task on a task worker in this process
          (`.delay()` → Completed) and an empty flow served by a Runner (`run_deployment` → Completed).
Alerts go one at a time (latency, not throughput). Per alert: from just before POST /alerts to the PagerDuty stand-in
receiving the trigger with the incident's dedup key, and to the Statuspage stand-in receiving the incident; the
breakdown from Prefect's own timestamps (the task or flow run's creation → its start → the page). Not a test:
timings depend on the machine's load (printed with the results). Results go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, task

from deployments.local_server import free_port, prefect_on_postgres
from deployments.serve import PROJECT_DIR, load_deployments
from deployments.warm_start import warm_process
from runbook.drill import DrillStack
from runbook.store import open_store


@task(name="bench-empty-task")
async def empty_task() -> None:
    """Nothing: the floor of a background task."""


@flow(name="bench-empty-flow")
async def empty_flow() -> None:
    """Nothing: the floor of a served flow run."""


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s (n={len(ordered)})"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


async def _until(condition: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition() if asyncio.iscoroutinefunction(condition) else condition()
        if value:
            return value
        await asyncio.sleep(0.02)
    return None


async def _alerts(stack: DrillStack, base_url: str, store_url: str, count: int, label: str,
                  timeout: float = 120) -> dict[str, list[float]]:
    """Post `count` P0 alerts one at a time; return alert → page, alert → status page and the breakdown."""
    from prefect.client.orchestration import get_client

    headers = {"Authorization": f"Bearer {stack.env['RUNBOOK_INTAKE_TOKEN']}", "Content-Type": "application/json"}
    out: dict[str, list[float]] = {"page": [], "status_page": [], "intake": [], "to_start": [], "start_to_page": []}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client, get_client() as prefect:
        for i in range(count):
            tag = f"{label}-{uuid.uuid4().hex[:8]}"
            alert = {"source": "bench", "fingerprint": f"bench:{tag}", "summary": f"bench {tag} down",
                     "rule": "application_down"}
            began = time.time()
            answer = await client.post("/alerts", content=json.dumps(alert), headers=headers)
            answered = time.time()
            if answer.status_code != 202:
                print(f"  {label} #{i}: {answer.status_code} {answer.text[:200]}", flush=True)
                continue

            async def incident_id(tag: str = tag) -> str | None:
                async with open_store(store_url) as store:
                    found = [x for x in await store.list(limit=50) if x.fingerprint == f"bench:{tag}"]
                return found[0].id if found else None

            def page_at(key: str) -> float | None:
                return next((r.time for r in stack.pagerduty.requests if isinstance(r.body, dict)
                             and r.body.get("event_action") == "trigger" and r.body.get("dedup_key") == key), None)

            def status_at(tag: str = tag) -> float | None:
                return next((r.time for r in stack.statuspage.requests if r.method == "POST"
                             and tag in json.dumps(r.body)), None)

            key = await _until(incident_id, timeout)
            paged = await _until(lambda key=key: page_at(key), timeout) if key else None
            posted = await _until(status_at, timeout) if paged else None
            if paged is None or posted is None:
                print(f"  {label} #{i}: no page or status page within {timeout:.0f} s", flush=True)
                continue
            out["page"].append(paged - began)
            out["status_page"].append(posted - began)
            out["intake"].append(answered - began)
            body = answer.json()
            if "task_run_id" in body:
                run: Any = await prefect.read_task_run(uuid.UUID(body["task_run_id"]))
            else:
                run = await prefect.read_flow_run(uuid.UUID(body["incident_flow_run_id"]))
            if run.start_time is not None:
                out["to_start"].append(run.start_time.timestamp() - began)
                out["start_to_page"].append(paged - run.start_time.timestamp())
    return out


def _report(label: str, found: dict[str, list[float]]) -> None:
    print(f"{label}: alert → page {_stats(found['page'])}", flush=True)
    print(f"{' ' * len(label)}  alert → status page {_stats(found['status_page'])}", flush=True)
    print(f"{' ' * len(label)}  breakdown (p50): intake answered {_p50(found['intake'])}, run started "
          f"{_p50(found['to_start'])}, start → page {_p50(found['start_to_page'])}", flush=True)


def _p50(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s" if values else "-"


async def _floor_task(count: int) -> list[float]:
    """Empty background tasks on a task worker in this process: `.delay()` → Completed (Prefect's timestamps)."""
    from prefect.client.orchestration import get_client
    from prefect.task_worker import aserve

    worker = asyncio.create_task(aserve(empty_task, limit=10))
    await asyncio.sleep(3)  # subscribed
    out = []
    try:
        async with get_client() as prefect:
            for _ in range(count):
                began = time.time()
                future = await asyncio.to_thread(empty_task.delay)

                async def done(run_id: uuid.UUID = future.task_run_id) -> Any:
                    run = await prefect.read_task_run(run_id)
                    return run if run.state is not None and run.state.is_final() else None

                run = await _until(done, 60)
                if run is not None and run.end_time is not None:
                    out.append(run.end_time.timestamp() - began)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker
    return out


async def _floor_flow(count: int, query_seconds: float) -> list[float]:
    """An empty flow served by a Runner polling every `query_seconds`: `run_deployment` → Completed."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.flow_runs import arun_deployment
    from prefect.runner import Runner

    runner = Runner(name="bench-floor", query_seconds=query_seconds)
    await runner.aadd_flow(empty_flow, name="bench-empty-flow")
    serving = asyncio.create_task(runner.start())
    await asyncio.sleep(3)
    out = []
    try:
        async with get_client() as prefect:
            for _ in range(count):
                began = time.time()
                run = await arun_deployment("bench-empty-flow/bench-empty-flow", timeout=0)

                async def done(run_id: uuid.UUID = run.id) -> Any:
                    now = await prefect.read_flow_run(run_id)
                    return now if now.state is not None and now.state.is_final() else None

                final = await _until(done, 120)
                if final is not None and final.end_time is not None:
                    out.append(final.end_time.timestamp() - began)
    finally:
        await runner.astop()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving
    return out


async def _register() -> None:
    """Register every deployment of prefect.yaml (not served): declare-incident starts its respond-p0 runs."""
    for deployment in load_deployments(schedules=False):
        await deployment.apply()


async def _delete_scheduled() -> None:
    """Delete the runs left Scheduled (the respond-p0 runs nobody serves here)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        for run in await client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))), limit=200):
            await client.delete_flow_run(run.id)


def _wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {timeout:.0f} s")


def main() -> None:
    """Run every topology and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=20, help="alerts through the warm path (and floor runs)")
    parser.add_argument("--served-alerts", type=int, default=10, help="alerts through the served hop (slow)")
    parser.add_argument("--query-seconds", type=float, default=2.0, help="the runner's poll (runbook up: 2)")
    parser.add_argument("--imports", type=int, default=0, metavar="RUNS",
                        help="only time each entrypoint's import, RUNS times each (median)")
    args = parser.parse_args()
    if args.imports:
        _imports(args.imports)
        return
    home = Path(tempfile.mkdtemp(prefix="runbook-bench-latency-"))
    try:
        _run(args, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(args: argparse.Namespace, home: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    print(f"start: {_load()}", flush=True)
    with DrillStack() as stack, prefect_on_postgres(home / "prefect") as server, \
            temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        store_url = f"sqlite+aiosqlite:///{home / 'state' / 'incidents.db'}"
        (home / "state").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **stack.env, "PREFECT_API_URL": server.api_url, "RUNBOOK_STATE_DIR": str(home / "state"),
               "RUNBOOK_STORE_URL": store_url, "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        os.environ.update({k: v for k, v in env.items() if k.startswith("RUNBOOK_")})
        asyncio.run(_init_store(store_url))
        asyncio.run(_register())
        port = free_port()
        with warm_process(env, home / "warm.log", intake_port=port):
            _wait_http(f"http://127.0.0.1:{port}/healthz")
            time.sleep(3)  # the task worker subscribed
            asyncio.run(_alerts(stack, f"http://127.0.0.1:{port}", store_url, 2, "warmup"))
            warm = asyncio.run(_alerts(stack, f"http://127.0.0.1:{port}", store_url, args.alerts, "warm"))
            _report("warm   ", warm)
            print(f"  after warm: {_load()}", flush=True)
        asyncio.run(_delete_scheduled())
        served = asyncio.run(_served_alerts(stack, store_url, args.served_alerts, args.query_seconds))
        _report("served ", served)
        print(f"  after served: {_load()}", flush=True)
        asyncio.run(_delete_scheduled())
        print(f"floor, empty background task: {_stats(asyncio.run(_floor_task(args.alerts)))}", flush=True)
        print(f"floor, empty served flow (poll {args.query_seconds:g} s): "
              f"{_stats(asyncio.run(_floor_flow(args.served_alerts, args.query_seconds)))}", flush=True)
        print(f"end: {_load()}", flush=True)


def _imports(runs: int = 3) -> None:
    """Print, per prefect.yaml entrypoint (and prefect alone), the median wall time and CPU time (user + system, less
    sensitive to the machine's load) of `python -c "import <module>"` in a new process."""
    import resource

    from deployments.serve import read_specs

    modules = ["prefect", *sorted({spec.module for spec in read_specs()})]
    print(f"start: {_load()}", flush=True)
    for module in modules:
        wall, cpu = [], []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=PROJECT_DIR)
            wall.append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        print(f"  {module:32} wall {statistics.median(wall):5.2f} s   cpu {statistics.median(cpu):5.2f} s", flush=True)
    print(f"end: {_load()}", flush=True)


async def _init_store(store_url: str) -> None:
    async with open_store(store_url):
        pass


async def _served_alerts(stack: DrillStack, store_url: str, count: int, query_seconds: float
                         ) -> dict[str, list[float]]:
    """The intake with its default Starter (a declare-incident deployment run) in this process, declare-incident
    served by a Runner here polling every `query_seconds` (each run in a new Python process, as `runbook up`)."""
    import uvicorn

    from deployments.serve import build_runner
    from runbook.intake import create_app

    runner = await build_runner(names=["declare-incident"], query_seconds=query_seconds, name="bench-served")
    running = asyncio.create_task(runner.start())
    await asyncio.sleep(3)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        return await _alerts(stack, f"http://127.0.0.1:{port}", store_url, count, "served", timeout=180)
    finally:
        server.should_exit = True
        await serving
        await runner.astop()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running


if __name__ == "__main__":
    main()
