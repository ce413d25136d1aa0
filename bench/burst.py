"""Benchmark: a burst of alerts through the intake (issue 21): N concurrent alerts for F fingerprints.

    .venv/bin/python -m bench.burst [--alerts 200] [--fingerprints 10] [--prefect sqlite|postgres] [--timeout 900]

The stack of `runbook up --intake-port`: a temporary Prefect server with API authentication (on SQLite, the default
and the issue's case: "database is locked" under load; or on embedded PostgreSQL), the drill stack's stand-ins
(PagerDuty, Statuspage, Slack on loopback), the incident store a SQLite file, prefect.yaml registered, and
`python -m deployments.warm_start --intake-port P` (the intake and the declare-alert task worker in one process).
The respond-<severity> runs the declarations start are created, not run (the burst measures the intake, not N full
responses). All N alerts are posted at once (one connection each, bearer token); then it waits until every alert
kept in the intake's outbox is attached to its incident, or --timeout.

Reports: answer time (POST → answer) p50 / p95 / max, the answers' status counts, alerts kept (outbox rows), alerts
attached (outbox rows attached, and the store's alerts rows with an incident), incidents created, pages sent
(PagerDuty triggers), the time until the last alert was attached, and the machine's load. Not a test: timings depend
on the machine. Exit code 1 when an answer was not 202, an alert was not kept or attached, or the incident count is
not the fingerprint count.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from deployments.local_server import LocalPrefectServer, free_port, new_api_auth_string, prefect_on_postgres
from deployments.serve import load_deployments
from deployments.warm_start import warm_process
from runbook.drill import DrillStack
from runbook.intake.outbox import Outbox
from runbook.store import open_store


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s (n={len(ordered)})"


@contextlib.contextmanager
def _prefect(kind: str, home: Path) -> Iterator[LocalPrefectServer]:
    auth = new_api_auth_string()
    if kind == "postgres":
        with prefect_on_postgres(home / "prefect", auth_string=auth, log_file=home / "prefect.log") as server:
            yield server
    else:
        with LocalPrefectServer(home / "prefect", auth_string=auth, log_file=home / "prefect.log") as server:
            yield server


def _wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {timeout:.0f} s")


async def _register() -> None:
    for deployment in load_deployments(schedules=False):
        await deployment.apply()


async def _burst(base_url: str, token: str, alerts: int, fingerprints: int, tag: str
                 ) -> list[tuple[int | None, float, str]]:
    """Post every alert at once; return (status or None, seconds to the answer, error) per alert."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=alerts, max_keepalive_connections=0)
    start = asyncio.Event()

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int | None, float, str]:
        n = i % fingerprints
        body = json.dumps({"source": "bench", "fingerprint": f"burst:{tag}:{n}", "summary": f"burst target {n} down",
                           "rule": "application_down", "labels": {"copy": str(i)}})
        await start.wait()
        began = time.perf_counter()
        try:
            answer = await client.post("/alerts", content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, time.perf_counter() - began, f"{type(exc).__name__}: {exc}"
        return answer.status_code, time.perf_counter() - began, "" if answer.status_code == 202 else answer.text[:200]

    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(alerts)]
        await asyncio.sleep(0.2)
        start.set()
        return list(await asyncio.gather(*tasks))


async def _attached(store_url: str, alerts: int, timeout: float, began: float) -> tuple[dict[str, Any], float | None]:
    """Wait until every kept alert is attached (or `timeout`); return the counts and when the last one was."""
    outbox = Outbox(_never_started, url=store_url)  # read only
    done_at = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            await outbox.check_attached()  # what the intake's loop does every few seconds, now
            rows = await outbox.rows()
            states = collections.Counter(r["state"] for r in rows)
            if states["attached"] >= alerts and done_at is None:
                done_at = time.perf_counter() - began
            if done_at is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    finally:
        await outbox.aclose()
    return {"kept": len(rows), "states": dict(states), "errors": sorted({r["error"] for r in rows if r["error"]})[:5]
            }, done_at


async def _never_started(alert: Any, respond: Any) -> dict[str, str]:
    raise RuntimeError("the benchmark's outbox reader hands nothing off")


async def _store_counts(store_url: str, tag: str) -> tuple[int, int]:
    """Return (incidents of the burst, alerts rows of the burst attached to an incident)."""
    async with open_store(store_url) as store:
        incidents = [i for i in await store.list(include_drill=True, limit=10_000)
                     if (i.fingerprint or "").startswith(f"burst:{tag}:")]
        rows = [a for a in await store.alerts(valid=True, limit=100_000)
                if (a["fingerprint"] or "").startswith(f"burst:{tag}:") and a["incident_id"]]
    return len(incidents), len(rows)


def main() -> int:
    """Run the burst and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=200, help="alerts posted at once")
    parser.add_argument("--fingerprints", type=int, default=10, help="distinct fingerprints among them")
    parser.add_argument("--prefect", choices=("sqlite", "postgres"), default="sqlite",
                        help="the Prefect server's database (sqlite: the issue's case)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every alert attached")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="runbook-bench-burst-"))
    try:
        return _run(args, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(args: argparse.Namespace, home: Path) -> int:
    from prefect.settings import temporary_settings

    print(f"start: {_load()}", flush=True)
    tag = os.urandom(3).hex()
    with DrillStack() as stack, _prefect(args.prefect, home) as server, \
            temporary_settings(updates=server.client_settings()):
        (home / "state").mkdir(parents=True, exist_ok=True)
        store_url = f"sqlite+aiosqlite:///{home / 'state' / 'incidents.db'}"
        env = {**os.environ, **stack.env, **server.env(), "RUNBOOK_STATE_DIR": str(home / "state"),
               "RUNBOOK_STORE_URL": store_url, "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
               }
        os.environ.update({k: v for k, v in env.items() if k.startswith("RUNBOOK_")})
        asyncio.run(_init_store(store_url))
        asyncio.run(_register())
        port = free_port()
        with warm_process(env, home / "warm.log", intake_port=port):
            _wait_http(f"http://127.0.0.1:{port}/healthz")
            time.sleep(3)  # the task worker subscribed
            print(f"burst: {args.alerts} alerts at once, {args.fingerprints} fingerprints, Prefect on {args.prefect}; "
                  f"{_load()}", flush=True)
            began = time.perf_counter()
            answers = asyncio.run(_burst(f"http://127.0.0.1:{port}", stack.env["RUNBOOK_INTAKE_TOKEN"], args.alerts,
                                         args.fingerprints, tag))
            statuses = collections.Counter(str(s) for s, _, _ in answers)
            print(f"answers: {_stats([t for _, t, _ in answers])}; status {dict(statuses)}", flush=True)
            for error in sorted({e for s, _, e in answers if e})[:3]:
                print(f"  not 202: {error}", flush=True)
            outbox, done_at = asyncio.run(_attached(store_url, args.alerts, args.timeout, began))
            incidents, attached_rows = asyncio.run(_store_counts(store_url, tag))
            pages = sum(1 for r in stack.pagerduty.requests if r.path.endswith("/enqueue")
                        and isinstance(r.body, dict) and r.body.get("event_action") == "trigger")
            print(f"kept: {outbox['kept']} of {args.alerts} (outbox states {outbox['states']}); attached: "
                  f"{outbox['states'].get('attached', 0)} (alerts rows on an incident: {attached_rows}); incidents: "
                  f"{incidents} for {args.fingerprints} fingerprints; pages: {pages}", flush=True)
            print("all attached " + (f"{done_at:.1f} s after the burst began" if done_at is not None
                                     else f"NOT within {args.timeout:.0f} s"), flush=True)
            if outbox["errors"]:
                print(f"  hand-off errors seen (retried): {outbox['errors']}", flush=True)
            print(f"end: {_load()}", flush=True)
    ok = (statuses == collections.Counter({"202": args.alerts}) and outbox["kept"] == args.alerts
          and outbox["states"].get("attached", 0) == args.alerts and attached_rows == args.alerts
          and incidents == args.fingerprints)
    return 0 if ok else 1


async def _init_store(store_url: str) -> None:
    async with open_store(store_url):
        pass


if __name__ == "__main__":
    sys.exit(main())
