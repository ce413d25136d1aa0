"""`runbook up`: a local Prefect server, the drill stack and every deployment served, until Ctrl-C.

`runbook up`:
  1. a Prefect server: the one PREFECT_API_URL names, else `prefect server start` on a free 127.0.0.1 port with
     PREFECT_HOME=<state dir>/prefect (embedded SQLite there; the UI's history survives restarts);
  2. the drill stack (`--no-drill` to skip): its RUNBOOK_* variables go into this process's environment, which the
     served flow runs inherit;
  3. every deployment of prefect.yaml served from this process (deployments/serve.py), schedules active.
Ctrl-C or SIGTERM stops the runner (its schedules are paused), the drill stack and the server; nothing is left.
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
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from runbook.settings import get_settings


def register(sub: Any) -> None:
    """Add the `up` command."""
    up = sub.add_parser("up", help="local Prefect server + drill stack + every deployment served (Ctrl-C stops)")
    up.add_argument("--port", type=int, default=0, help="port of the local Prefect server (default: a free one)")
    up.add_argument("--no-drill", action="store_true", help="do not start the drill stack; use your RUNBOOK_* settings")
    up.add_argument("--file", default="prefect.yaml", help="the deployments file (default: prefect.yaml)")
    up.add_argument("--limit", type=int, default=None, help="at most this many flow runs at a time")
    up.add_argument("--query-seconds", type=float, default=5.0, help="how often to look for due runs (default 5)")
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


def configured_api_url() -> str | None:
    """Return the Prefect API URL already configured (environment or profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def cmd_up(args: argparse.Namespace) -> int:
    """Run a local Prefect server, the drill stack and every deployment until Ctrl-C."""
    from deployments.serve import load_deployments

    state_dir = get_settings().state_dir.resolve()
    deployments = load_deployments(args.file)  # a broken prefect.yaml fails before anything starts
    with contextlib.ExitStack() as stack, interrupt_signals():
        try:
            api_url = configured_api_url()
            if api_url:
                from prefect.settings import PREFECT_UI_URL

                ui_url = PREFECT_UI_URL.value() or api_url.removesuffix("/api")
                print(f"Prefect server: {api_url} (from PREFECT_API_URL)", flush=True)
            else:
                from deployments.local_server import prefect_on_postgres

                home = state_dir / "prefect"
                print(f"starting a local Prefect server on an embedded PostgreSQL (PREFECT_HOME={home}) ...",
                      flush=True)
                # Postgres, kept in the state dir: the UI's history survives restarts, and concurrent runs do not
                # meet SQLite's "database is locked".
                server = stack.enter_context(prefect_on_postgres(home, keep=True, port=args.port or None,
                                                                 log_file=state_dir / "prefect-server.log"))
                api_url, ui_url = server.api_url, server.url
                print(f"Prefect server ready in {server.startup_seconds:.0f} s", flush=True)
            env = {"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            if not args.no_drill:
                from runbook.drill import DrillStack

                print("starting the drill stack ...", flush=True)
                drill = stack.enter_context(DrillStack())
                env.update(drill.env)
                print(f"drill stack ready (app {drill.env.get('RUNBOOK_APP_URL')}, "
                      f"state {drill.env.get('RUNBOOK_STATE_DIR')})", flush=True)
            stack.enter_context(patched_environ(env))
        except KeyboardInterrupt:
            with signals_ignored():
                stack.close()
            print("interrupted while starting; stopped", file=sys.stderr)
            return 130
        names = ", ".join(d.name for d in deployments)
        print(f"\nPrefect UI: {ui_url}\nserving {len(deployments)} deployments: {names}\nCtrl-C stops everything.\n",
              flush=True)
        try:
            asyncio.run(_serve(api_url, args.file, args.limit, args.query_seconds))
        except KeyboardInterrupt:
            pass
        print("stopping ...", flush=True)
        # A second Ctrl-C / SIGTERM must not cut the cleanup short (the server would outlive us).
        with signals_ignored():
            stack.close()
    print("stopped", flush=True)
    return 0


async def _serve(api_url: str, file: str | Path, limit: int | None, query_seconds: float) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.serve import build_runner

    # Prefect read its settings at import; point this process's client at the server explicitly.
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        runner = await build_runner(file, limit=limit, query_seconds=query_seconds)
        await runner.start()
