"""Benchmark: the monitor's own detection → page (issue 18): a breach on the Nth consecutive cycle pages how fast?

    .venv/bin/python -m bench.monitor_latency [--runs 10] [--breach-cycles 2] [--scenario bad-deploy]

One Prefect server on PostgreSQL (as `runbook up` runs it), the drill stack, prefect.yaml registered but nothing
served (the respond-p0 run each incident starts is created, not run; deleted at the end). Per run: the stack reset, a
fresh state directory (incident store and monitor store: no breach history, no open incident), the scenario injected
(bad-deploy: the app's health answers 500, rule application_down), then the monitor flow in this process with
`cycles` = the policy's breach cycles and `interval_seconds=0`, `respond=deployment` as prefect.yaml runs it. The
last cycle declares. Measured from the end of that cycle's measurement (the latest end of its probe task runs:
Prefect's `end_time`, all probes run concurrently) to the PagerDuty stand-in receiving the trigger with the
incident's dedup key; the breakdown: the declare-incident subflow run created and started (Prefect's timestamps),
the page's pending note (the incident's timeline). The first run in the process is printed on its own (its first
declaration imports and connects what later ones reuse) and left out of the figures. Not a test: timings depend on the
machine's load (printed with the results). Results go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from datetime import datetime
from pathlib import Path

import yaml

from bench._support import in_temp_home, until
from deployments.local_server import prefect_on_postgres
from runbook.drill import DrillStack
from runbook.store import open_store

DECLARE_FLOW = "declare-incident"


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s (n={len(ordered)})"


def _p50(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s" if values else "-"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


async def _one(stack: DrillStack, cycles: int) -> dict[str, float] | None:
    """Run the monitor over the broken stack; return the declaring cycle's timings (seconds, from its measurement)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    from flows.monitor import MonitorParams, monitor

    state = await monitor(MonitorParams(respond="deployment", cycles=cycles, interval_seconds=0), return_state=True)
    result = await state.aresult(raise_on_failure=False)
    declared = [d for d in getattr(result, "declared", []) if d.created]
    if not declared:
        print(f"  nothing declared: {state.type.value} {str(result)[:300]}", flush=True)
        return None
    key = declared[0].incident_id

    def page_at() -> float | None:
        return next((r.time for r in stack.pagerduty.requests if isinstance(r.body, dict)
                     and r.body.get("event_action") == "trigger" and r.body.get("dedup_key") == key), None)

    paged = await until(page_at, 30)
    if paged is None:
        print(f"  {key}: no page within 30 s", flush=True)
        return None
    run_id = state.state_details.flow_run_id
    async with get_client() as prefect:
        children = await prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
        subs = [r for r in children if (await prefect.read_flow(r.flow_id)).name == DECLARE_FLOW]
        sub = min(subs, key=lambda r: r.created or datetime.max) if subs else None
        parents = {r.parent_task_run_id for r in children}
        task_runs = await prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    boundary = _ts(sub.created) if sub is not None else paged
    ends = [e for t in task_runs if t.id not in parents and (e := _ts(t.end_time)) is not None and e <= boundary]
    if not ends:
        print(f"  {key}: no probe task run ended before the declaration", flush=True)
        return None
    measured = max(ends)
    out = {"page": paged - measured}
    if sub is not None:
        out["created"] = (_ts(sub.created) or measured) - measured
        if sub.start_time is not None:
            out["started"] = sub.start_time.timestamp() - measured
    async with open_store() as store:
        pending = next((e.at for e in await store.timeline(key) if e.details.get("page_pending")), None)
    if pending is not None:
        out["pending"] = pending.timestamp() - measured
    return out


def _fresh_state(home: Path, run: int) -> None:
    """Point the incident store and the monitor store at a new directory (no breach history, nothing open)."""
    state = home / f"state-{run}"
    state.mkdir(parents=True)
    os.environ["RUNBOOK_STATE_DIR"] = str(state)
    os.environ["RUNBOOK_STORE_URL"] = f"sqlite+aiosqlite:///{state / 'incidents.db'}"


def _run(args: argparse.Namespace, home: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from bench.alert_latency import _delete_scheduled, _register

    print(f"start: {_load()}", flush=True)
    with DrillStack() as stack, prefect_on_postgres(home / "prefect") as server, \
            temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("RUNBOOK_")})
        os.environ.update({"PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
                           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        policy = home / "policy.yaml"
        policy.write_text(yaml.safe_dump({"monitoring": {"breach_cycles": args.breach_cycles}}))
        os.environ["RUNBOOK_POLICY_FILE"] = str(policy)
        asyncio.run(_register())
        found: dict[str, list[float]] = {k: [] for k in ("page", "created", "started", "pending")}
        for run in range(args.runs + 1):
            stack.reset()
            for name, value in stack.env.items():
                if name.startswith("RUNBOOK_"):
                    os.environ[name] = value
            _fresh_state(home, run)
            os.environ.update(stack.inject(args.scenario))
            began = time.monotonic()
            timings = asyncio.run(_one(stack, args.breach_cycles))
            took = time.monotonic() - began
            if timings is None:
                continue
            line = ", ".join(f"{k} {v:.3f} s" for k, v in timings.items())
            if run == 0:
                print(f"  first run in this process (left out): {line}; the monitor run took {took:.1f} s", flush=True)
                continue
            print(f"  run {run}: {line}; the monitor run took {took:.1f} s", flush=True)
            for k, v in timings.items():
                found[k].append(v)
        asyncio.run(_delete_scheduled())
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the last runs' log lines reach the server before it stops
        print(f"breach on cycle {args.breach_cycles} ({args.scenario}): cycle measured → page {_stats(found['page'])}",
              flush=True)
        print(f"  breakdown (p50, from the measurement's end): declare-incident run created {_p50(found['created'])},"
              f" started {_p50(found['started'])}, page pending {_p50(found['pending'])}", flush=True)
        print(f"end: {_load()}", flush=True)


def main() -> None:
    """Run the monitor N times over a freshly broken stack and print the declaring cycle's detection → page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="monitor runs measured (one more first, left out)")
    parser.add_argument("--breach-cycles", type=int, default=2, help="the policy's monitoring.breach_cycles")
    parser.add_argument("--scenario", default="bad-deploy", help="the drill scenario injected (default bad-deploy)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    args = parser.parse_args()
    in_temp_home("runbook-bench-monitor-", lambda home: _run(args, home), keep=args.keep)


if __name__ == "__main__":
    main()

