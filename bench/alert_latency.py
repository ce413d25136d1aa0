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
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, task

from bench._support import cpu_seconds, final_run, in_temp_home, until
from deployments.local_server import free_port, prefect_on_postgres
from deployments.serve import PROJECT_DIR, load_deployments
from deployments.warm_start import warm_process
from runbook.drill import DrillStack
from runbook.store import open_store

# Statuspage takes one request a second per API token (the client paces every request: runbook/clients/statuspage.py):
# alerts closer together than that measure the vendor's pace, not the path. Real alerts of separate incidents do not
# come every second; a burst is bench/burst.py's.
GAP_S = 1.5
IDLE_S = 10.0


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


async def _alerts(stack: DrillStack, base_url: str, store_url: str, count: int, label: str,
                  timeout: float = 120, gap: float = 0.0) -> dict[str, list[float]]:
    """Post `count` P0 alerts one at a time, each `gap` seconds after the previous one reached the status page;
    return alert → page, alert → status page and the breakdown."""
    from prefect.client.orchestration import get_client

    headers = {"Authorization": f"Bearer {stack.env['RUNBOOK_INTAKE_TOKEN']}", "Content-Type": "application/json"}
    out: dict[str, list[float]] = {k: [] for k in ("page", "status_page", "intake", "created", "to_start",
                                                    "recorded", "pending", "start_to_page")}
    run: Any = None
    body: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client, get_client() as prefect:
        for i in range(count):
            if i and gap:
                await asyncio.sleep(gap)
            tag = f"{label}-{uuid.uuid4().hex[:8]}"
            alert = {"source": "bench", "fingerprint": f"bench:{tag}", "summary": f"bench {tag} down",
                     "rule": "application_down"}
            began = time.time()
            answer = await client.post("/alerts", content=json.dumps(alert), headers=headers)
            answered = time.time()
            if answer.status_code != 202:
                print(f"  {label} #{i}: {answer.status_code} {answer.text[:200]}", flush=True)
                continue

            async def incident(tag: str = tag) -> Any:
                async with open_store(store_url) as store:
                    found = [x for x in await store.list(limit=50) if x.fingerprint == f"bench:{tag}"]
                return found[0] if found else None

            def page_at(key: str) -> float | None:
                return next((r.time for r in stack.pagerduty.requests if isinstance(r.body, dict)
                             and r.body.get("event_action") == "trigger" and r.body.get("dedup_key") == key), None)

            def status_at(tag: str = tag) -> float | None:
                return next((r.time for r in stack.statuspage.requests if r.method == "POST"
                             and tag in json.dumps(r.body)), None)

            declared = await until(incident, timeout)
            key = declared.id if declared else None
            paged = await until(lambda key=key: page_at(key), timeout) if key else None
            posted = await until(status_at, timeout) if paged else None
            if paged is None or posted is None:
                print(f"  {label} #{i}: no page or status page within {timeout:.0f} s", flush=True)
                continue
            out["page"].append(paged - began)
            out["status_page"].append(posted - began)
            out["intake"].append(answered - began)
            out["recorded"].append(declared.created_at.timestamp() - began)
            async with open_store(store_url) as store:
                pending = next((e.at for e in await store.timeline(declared.id)
                                if e.details.get("page_pending") and e.details.get("dedup_key") == key), None)
            if pending is not None:
                out["pending"].append(pending.timestamp() - began)
            body = answer.json()  # a `queued` answer (the hand-off outlasted the answer) names no run
            run = None
            if "task_run_id" in body:
                run = await prefect.read_task_run(uuid.UUID(body["task_run_id"]))
            elif "incident_flow_run_id" in body:
                run = await prefect.read_flow_run(uuid.UUID(body["incident_flow_run_id"]))
            if run is not None and run.created is not None:
                out["created"].append(run.created.timestamp() - began)
            if run is not None and run.start_time is not None:
                out["to_start"].append(run.start_time.timestamp() - began)
                out["start_to_page"].append(paged - run.start_time.timestamp())
        if run is not None:  # the last declaration's tail (Slack, the respond run) ends before the process stops
            await final_run(prefect.read_task_run if "task_run_id" in body else prefect.read_flow_run, run.id, 60)
    return out


def _report(label: str, found: dict[str, list[float]]) -> None:
    print(f"{label}: alert → page {_stats(found['page'])}", flush=True)
    print(f"{' ' * len(label)}  alert → status page {_stats(found['status_page'])}", flush=True)
    print(f"{' ' * len(label)}  breakdown (p50, from the POST): run created {_p50(found['created'])}, intake "
          f"answered {_p50(found['intake'])}, run started {_p50(found['to_start'])}, incident recorded "
          f"{_p50(found['recorded'])}, page pending {_p50(found['pending'])}, start → page "
          f"{_p50(found['start_to_page'])}", flush=True)


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
                run = await final_run(prefect.read_task_run, future.task_run_id, 60)
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
                final = await final_run(prefect.read_flow_run, run.id, 120)
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
    parser.add_argument("--served-alerts", type=int, default=10,
                        help="alerts through the served hop (slow; 0: neither it nor its floor)")
    parser.add_argument("--gap", type=float, default=GAP_S,
                        help=f"seconds between an alert's status page and the next alert (default {GAP_S:g})")
    parser.add_argument("--query-seconds", type=float, default=2.0, help="the runner's poll (runbook up: 2)")
    parser.add_argument("--imports", type=int, default=0, metavar="RUNS",
                        help="only time each entrypoint's import, RUNS times each (median)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (the warm process's log)")
    args = parser.parse_args()
    if args.imports:
        _imports(args.imports)
        return
    in_temp_home("runbook-bench-latency-", lambda home: _run(args, home), keep=args.keep)


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
        with warm_process(env, home / "warm.log", intake_port=port) as process:
            _wait_http(f"http://127.0.0.1:{port}/healthz")
            time.sleep(3)  # the task worker subscribed
            asyncio.run(_alerts(stack, f"http://127.0.0.1:{port}", store_url, 2, "warmup"))
            postgres = str(home / "prefect" / "postgres")
            pids = {"warm process": ({process.pid}, None), "its PostgreSQL": (set(), postgres),
                    "Prefect server": ({server.process.pid} if server.process else set(), None)}
            idle = {name: cpu_seconds(*p) for name, p in pids.items()}
            time.sleep(IDLE_S)  # what the processes use doing nothing (polls, heartbeats), taken off below
            before, began = {name: cpu_seconds(*p) for name, p in pids.items()}, time.monotonic()
            warm = asyncio.run(_alerts(stack, f"http://127.0.0.1:{port}", store_url, args.alerts, "warm",
                                       gap=args.gap))
            after, took = {name: cpu_seconds(*p) for name, p in pids.items()}, time.monotonic() - began
            _report("warm   ", warm)
            if warm["page"]:
                used = {name: (after[name] - before[name] - (before[name] - idle[name]) * took / IDLE_S)
                        / len(warm["page"]) for name in before}
                print("         CPU per alert (its whole declaration, idle use taken off): "
                      + ", ".join(f"{name} {cpu * 1000:.0f} ms" for name, cpu in used.items()), flush=True)
            print(f"  after warm: {_load()}", flush=True)
        asyncio.run(_delete_scheduled())
        if args.served_alerts:
            served = asyncio.run(_served_alerts(stack, store_url, args.served_alerts, args.query_seconds,
                                                     args.gap))
            _report("served ", served)
            print(f"  after served: {_load()}", flush=True)
            asyncio.run(_delete_scheduled())
        print(f"floor, empty background task: {_stats(asyncio.run(_floor_task(args.alerts)))}", flush=True)
        if args.served_alerts:
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


async def _served_alerts(stack: DrillStack, store_url: str, count: int, query_seconds: float, gap: float = 0.0
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
        return await _alerts(stack, f"http://127.0.0.1:{port}", store_url, count, "served", timeout=180, gap=gap)
    finally:
        server.should_exit = True
        await serving
        await runner.astop()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running


if __name__ == "__main__":
    main()
