"""`runbook up`: a local Prefect server, the drill stack and every deployment served, until Ctrl-C.

`runbook up`:
  1. a Prefect server: the one PREFECT_API_URL names (with your PREFECT_API_AUTH_STRING, if any), else
     `prefect server start` on a free 127.0.0.1 port with PREFECT_HOME=<state dir>/prefect (an embedded PostgreSQL
     there; the UI's history survives restarts) and API authentication: its credential (PREFECT_SERVER_API_AUTH_STRING,
     "runbook:<random>") is generated once into <state dir>/api-auth (mode 0600, reused at the next start) and given
     to everything started here that talks to the server (PREFECT_API_AUTH_STRING); the UI asks for it on its login
     page; it is never printed, only where it is kept;
  2. the drill stack (`--no-drill` to skip): its RUNBOOK_* variables go into this process's environment, which the
     served flow runs inherit — except the state dir: incidents, reports and backups stay in RUNBOOK_STATE_DIR
     (default .runbook), the one store every `runbook` command reads, kept across restarts;
  3. every deployment of prefect.yaml served from this process (deployments/serve.py), schedules active; or, with
     `--workers N`, deployed to the process pool runbook-pool and executed by N `prefect worker start` processes
     sharing one incident store on PostgreSQL (deployments/workers.py: the production topology on one machine).
It prints "ready" with direct links (deployments, the paused runs waiting for a person, artifacts) only once every
deployment is registered and ready. Ctrl-C or SIGTERM stops the runner (runs in flight are cancelled: they end
Cancelled, not Crashed; its schedules are paused), then the drill stack and the server; nothing is left.
It serves deployments, so it lives here, not in runbook/ (which never imports deployments/ or flows/); the
`runbook` command line finds it through the entry point `up` of the group `runbook.commands` (pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from deployments.local_server import api_auth_string, drain_api_workers
from deployments.run_logging import logging_config
from runbook.settings import API_AUTH_FILE, get_settings
from runbook.settings import redacted_url as redacted

# The served Runner's poll: one `POST /deployments/get_scheduled_flow_runs` (every deployment at once) per poll, so
# 0.5 request/s at 2 s; it is what respond-<severity> (assessment, diagnosis) waits for after the page (BENCHMARKS.md).
SERVED_QUERY_SECONDS = 2.0


def register(sub: Any) -> None:
    """Add the `up` command."""
    up = sub.add_parser("up", help="local Prefect server + drill stack + every deployment served (Ctrl-C stops)")
    up.add_argument("--port", type=int, default=0, help="port of the local Prefect server (default: a free one)")
    up.add_argument("--no-drill", action="store_true", help="do not start the drill stack; use your RUNBOOK_* settings")
    up.add_argument("--file", default="prefect.yaml", help="the deployments file (default: prefect.yaml)")
    up.add_argument("--limit", type=int, default=None, help="at most this many flow runs at a time")
    up.add_argument("--query-seconds", type=float, default=None,
                    help=f"how often to look for due runs (default {SERVED_QUERY_SECONDS:g} served, 1 with "
                         "--workers); the warm path's page does not wait for it, the rest of the response does")
    up.add_argument("--workers", type=int, default=0, metavar="N",
                    help="deploy prefect.yaml to the process pool runbook-pool and run N `prefect worker start` "
                         "processes sharing one incident store on PostgreSQL (default 0: served from this process)")
    up.add_argument("--intake-port", type=int, default=None, metavar="P",
                    help="also serve the alert intake on this port, on the warm path: each alert is declared and "
                         "paged at once by the task worker (deployments/warm_start.py); default: not served")
    up.set_defaults(func=cmd_up)


@contextlib.contextmanager
def patched_environ(updates: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    before = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def interrupt_signals() -> Iterator[None]:
    """Make SIGINT (even if inherited as ignored) and SIGTERM raise KeyboardInterrupt, so cleanup always runs."""
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _raise)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM for the duration of the block (cleanup)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def store_url_of(state_dir: Path) -> str:
    """Return the incident store the served runs use: RUNBOOK_STORE_URL, else the state dir's SQLite file."""
    return os.environ.get("RUNBOOK_STORE_URL") or get_settings().model_copy(
        update={"state_dir": state_dir}).resolved_store_url


def configured_api_url() -> str | None:
    """Return the Prefect API URL already configured (environment or profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def cmd_up(args: argparse.Namespace) -> int:
    """Run a local Prefect server, the drill stack and every deployment until Ctrl-C."""
    from deployments.serve import load_deployments

    if args.workers < 0:
        print(f"runbook up: --workers must be 0 (served) or more (got {args.workers})", file=sys.stderr)
        return 2
    state_dir = get_settings().state_dir.resolve()
    deployments = load_deployments(args.file)  # a broken prefect.yaml fails before anything starts
    with contextlib.ExitStack() as stack, interrupt_signals():
        try:
            api_url = configured_api_url()
            auth_file: Path | None = None
            if api_url:
                from prefect.settings import PREFECT_UI_URL

                ui_url = PREFECT_UI_URL.value() or api_url.removesuffix("/api")
                client: dict[Any, Any] = {PREFECT_API_URL: api_url}  # and the PREFECT_API_AUTH_STRING configured
                print(f"Prefect server: {api_url} (from PREFECT_API_URL)", flush=True)
            else:
                from deployments.local_server import prefect_on_postgres

                home = state_dir / "prefect"
                print(f"starting a local Prefect server on an embedded PostgreSQL (PREFECT_HOME={home}) ...",
                      flush=True)
                # Postgres, kept in the state dir: the UI's history survives restarts, and concurrent runs do not
                # meet SQLite's "database is locked".
                # With API authentication: without it anyone reaching the port reads the Secret blocks and
                # approves paused remediations. The credential stays in the state dir, never on the terminal.
                auth_file = state_dir / API_AUTH_FILE
                server = stack.enter_context(prefect_on_postgres(home, keep=True, port=args.port or None,
                                                                 log_file=state_dir / "prefect-server.log",
                                                                 auth_string=api_auth_string(auth_file)))
                api_url, ui_url, client = server.api_url, server.url, server.client_settings()
                print(f"Prefect server ready in {server.startup_seconds:.0f} s on {server.host}, with API "
                      f"authentication (the key is in {auth_file})", flush=True)
            env = {"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   # the served runs' processes share this terminal: a run cancelled at Ctrl-C says so in one
                   # line, without the TerminationSignal traceback (deployments/run_logging.py)
                   "PREFECT_LOGGING_SETTINGS_PATH": str(logging_config(state_dir / "prefect" / "run-logging.yml"))}
            if client.get(PREFECT_API_AUTH_STRING):  # the served runs, the warm path's task worker, the workers
                env["PREFECT_API_AUTH_STRING"] = client[PREFECT_API_AUTH_STRING]
            if not args.no_drill:
                from runbook.drill import DrillStack

                print("starting the drill stack ...", flush=True)
                drill = stack.enter_context(DrillStack())
                env.update(drill.env)
                # The stack's own state dir is a temporary one; incidents and reports stay in ours, across
                # restarts, in the store every `runbook` command reads (marked drill: RUNBOOK_DRILL=true).
                env["RUNBOOK_STATE_DIR"] = str(state_dir)
                print(f"drill stack ready (app {drill.env.get('RUNBOOK_APP_URL')})", flush=True)
            stack.enter_context(patched_environ(env))
            if args.workers:
                with temporary_settings(updates=client):
                    return _up_with_workers(args, stack, state_dir, api_url, ui_url, [d.name for d in deployments],
                                            auth_file)
            print(f"incident store: {redacted(store_url_of(state_dir))}; reports in {state_dir / 'reports'}",
                  flush=True)
            _start_warm(stack, {**os.environ, "RUNBOOK_STATE_DIR": str(state_dir)}, state_dir, args.intake_port)
        except KeyboardInterrupt:
            with signals_ignored():
                stack.close()
            print("interrupted while starting; stopped", file=sys.stderr)
            return 130
        print(f"registering {len(deployments)} deployments ...", flush=True)
        try:
            asyncio.run(_serve(client, ui_url, args.file, args.limit,
                               SERVED_QUERY_SECONDS if args.query_seconds is None else args.query_seconds,
                               [d.name for d in deployments], auth_file))
        except KeyboardInterrupt:
            pass
        print("stopping ...", flush=True)
        # A second Ctrl-C / SIGTERM must not cut the cleanup short (the server would outlive us).
        with signals_ignored():
            with temporary_settings(updates=client):
                drain_api_workers()  # the last log lines reach the server before it stops (no "Error logging…")
            stack.close()
    print("stopped", flush=True)
    return 0


def _up_with_workers(args: argparse.Namespace, stack: contextlib.ExitStack, state_dir: Path, api_url: str,
                     ui_url: str, names: list[str], auth_file: Path | None = None) -> int:
    """The deployed topology: runbook-pool, prefect.yaml deployed to it, N workers, the shared store; until Ctrl-C.

    Called inside cmd_up's ExitStack (server, drill stack) and its interrupt_signals(), with this process's Prefect
    client pointed at the server (its credential included); it stops the workers and their runs before that stack
    stops the drill stack and the server.
    """
    from deployments.workers import WORKER_QUERY_SECONDS, Topology

    query = WORKER_QUERY_SECONDS if args.query_seconds is None else args.query_seconds
    auth = PREFECT_API_AUTH_STRING.value()
    topology = Topology(api_url, workers=args.workers, state_dir=state_dir, file=args.file, query_seconds=query,
                        env={"PREFECT_API_AUTH_STRING": auth} if auth else {})
    try:
        print(f"deploying {len(names)} deployments to the process pool {topology.pool}, starting "
              f"{args.workers} worker(s) (PREFECT_WORKER_QUERY_SECONDS={query:g}) ...", flush=True)
        topology.start()
        print(f"incident store: {redacted(topology.store_url)} (shared by the workers); reports in "
              f"{state_dir / 'reports'}", flush=True)
        _start_warm(stack, topology.warm_env(), state_dir, args.intake_port)
        print(workers_banner(ui_url, names, topology, auth_file), flush=True)
        while True:  # until Ctrl-C / SIGTERM (KeyboardInterrupt); a worker that died is restarted
            time.sleep(1)
            for line in topology.reap():
                print(line, flush=True)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # a worker that would not start: one line, then the same clean stop
        print(f"runbook up: {exc}; stopping", file=sys.stderr, flush=True)
    with signals_ignored():
        busy = sum(1 for _ in topology.running)
        print(f"stopping: cancelling the runs in flight, then {busy} worker(s) ...", flush=True)
        for name, state in topology.stop():
            print(f"  {name}: {state}", flush=True)
        print("stopping ...", flush=True)
        drain_api_workers()
        stack.close()
    print("stopped", flush=True)
    return 0


def _start_warm(stack: contextlib.ExitStack, env: dict[str, str], state_dir: Path, intake_port: int | None) -> None:
    """Start the warm path's task worker (and the intake on `intake_port`); `stack` stops it before the server."""
    from deployments.warm_start import warm_process

    log = state_dir / "warm-start.log"
    stack.enter_context(warm_process(env, log, intake_port=intake_port))
    print(f"task worker of the warm path (declare-alert) started; log {log}"
          + (f"; alert intake on http://127.0.0.1:{intake_port}/alerts" if intake_port else ""), flush=True)


def workers_banner(ui_url: str, names: list[str], topology: Any, auth_file: Path | None = None) -> str:
    """Return what `runbook up --workers N` prints once its workers are polling."""
    return ready_banner(ui_url, names, auth_file).replace(
        f"ready: {len(names)} deployments served, every one ready",
        f"ready: {len(names)} deployments deployed to {topology.pool}, {topology.workers} worker(s) polling "
        f"({', '.join(topology.worker_names)})")


async def _runs_in_flight() -> list[Any]:
    """Return the flow runs running (or about to) on the server now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    busy = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
    with contextlib.suppress(Exception):
        async with get_client() as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=busy))))
    return []


async def _states(runs: list[Any]) -> list[tuple[str, str]]:
    """Return (run name, state name) of each run now."""
    from prefect.client.orchestration import get_client

    found: list[tuple[str, str]] = []
    with contextlib.suppress(Exception):
        async with get_client() as client:
            for run in runs:
                now = await client.read_flow_run(run.id)
                found.append((now.name, (now.state.name if now.state else None) or "unknown"))
    return found


def ready_banner(ui_url: str, names: list[str], auth_file: Path | None = None) -> str:
    """Return what `runbook up` prints once every deployment is ready: the UI, its direct links and, for a server
    with API authentication, where its key is kept (never the key)."""
    login = (f"  log in with the key in {auth_file}  (its whole line; it is never printed)\n"
             f"  other terminals:      PREFECT_API_URL={ui_url}/api  (`runbook` commands of this state dir read the "
             "key there; the prefect CLI needs PREFECT_API_AUTH_STRING set to it)\n") if auth_file else ""
    return (f"\nready: {len(names)} deployments served, every one ready\n"
            f"Prefect UI:   {ui_url}\n{login}"
            f"  deployments:          {ui_url}/deployments\n"
            f"  waiting for you:      {ui_url}/runs?tab=flow-runs&state=Paused  (paused runs: approvals, "
            "acknowledgements, confirmations)\n"
            f"  artifacts (reports):  {ui_url}/artifacts\n"
            "Ctrl-C stops everything (runs in flight end Cancelled).\n")


async def wait_until_ready(names: list[str], timeout: float = 300.0) -> None:
    """Wait until every deployment is registered and READY (its runner polls for it); say how far it got."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    loop = asyncio.get_running_loop()
    deadline, shown = loop.time() + timeout, -1
    async with get_client() as client:
        while True:
            found = await client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)), limit=len(names) + 10)
            ready = sorted(d.name for d in found if str(getattr(d.status, "value", d.status)).upper() == "READY")
            if len(ready) == len(set(names)):
                return
            if len(ready) != shown:
                shown = len(ready)
                print(f"  {len(found)}/{len(names)} registered, {len(ready)} ready ...", flush=True)
            if loop.time() > deadline:
                missing = sorted(set(names) - set(ready))
                raise TimeoutError(f"deployments not ready after {timeout:.0f} s: {', '.join(missing)}")
            await asyncio.sleep(0.5)


async def _serve(client: dict[Any, Any], ui_url: str, file: str | Path, limit: int | None, query_seconds: float,
                 names: list[str], auth_file: Path | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM; stopping cancels the runs in flight (Cancelled, not Crashed) before returning.

    `client`: the Prefect settings of a client of the server (its URL, its credential when it has one)."""
    from deployments.serve import build_runner

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    # Prefect read its settings at import; point this process's client at the server explicitly.
    with temporary_settings(updates=client):
        runner = await build_runner(file, limit=limit, query_seconds=query_seconds)
        serving = asyncio.create_task(runner.start())
        for sig in (signal.SIGINT, signal.SIGTERM):  # runner.start() installs its own SIGTERM handler: ours wins
            loop.add_signal_handler(sig, stopping.set)
        stop = asyncio.create_task(stopping.wait())
        ready = asyncio.create_task(wait_until_ready(names))
        await asyncio.wait({ready, stop, serving}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not ready.cancelled() and ready.exception() is None and not stopping.is_set():
            print(ready_banner(ui_url, names, auth_file), flush=True)
            await asyncio.wait({stop, serving}, return_when=asyncio.FIRST_COMPLETED)
        elif ready.done() and not ready.cancelled() and ready.exception() is not None:
            print(f"runbook up: {ready.exception()}; stopping", file=sys.stderr, flush=True)
        ready.cancel()
        in_flight = await _runs_in_flight()
        print(f"stopping: cancelling {len(in_flight)} run(s) in flight ...", flush=True)
        if runner.started:
            await runner.astop()  # cancels each run in flight (its process ends, its state is Cancelled)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(serving, timeout=60)
        stop.cancel()
        for name, state in await _states(in_flight):
            print(f"  {name}: {state}", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
