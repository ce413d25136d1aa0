"""The warm path from an alert to the page: a Prefect background task run by a long-running task worker.

    python -m deployments.warm_start [--intake-port P] [--host H] [--limit N]    (`runbook up` starts it)

The intake (runbook/intake/, built here with `start=start_warm`) hands each accepted alert to
`flows.declare_incident.declare_alert.delay(...)`: a task run in Prefect (Scheduled), pushed over the server's
websocket to the task worker of this process, which runs it at once in a warm Python process: no deployment poll
interval and no process start before the page. The task run declares the alert itself (declare-incident's body, no
flow run of its own: that cost API calls before the page), its steps task runs under it in the UI: dedupe by
fingerprint, record, page on-call and announce "investigating" (status page, #incidents:
`flows._response.first_response`), then start the rest of the response (respond-<severity>) as a deployment run,
whose page and first announcement find themselves made (dedup keys) and are not repeated. A page the task run
leaves pending (the process died) names it as its sender: the follow-up sweep sends it once the run is over.

Per alert, what Prefect costs on this path is kept down (bench/alert_latency.py measures it, CPU included): one
Prefect client for the process (not one, with its TLS context, per alert and per task run), and the task run is
submitted without the intake's serialized run context (see `submit_background`).

The task's parameters travel through Prefect's result storage: the intake and the task worker must share it
(PREFECT_LOCAL_STORAGE_PATH; both in this process here). SIGINT/SIGTERM stop the worker (a task run in flight is
left to Prefect; its page is durable on the timeline: the escalation or the follow-up sweep sends it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runbook.models import Alert

PROJECT_DIR = Path(__file__).resolve().parent.parent
TASK_LIMIT = 10  # alerts declared at once by one task worker (each a short run: the page, then a deployment run)


async def start_warm(alert: Alert, respond: Any) -> dict[str, str]:
    """The intake's Starter: submit the alert's declaration as a background task; return its task-run id."""
    from flows.declare_incident import DeclareParams, declare_alert

    run = await submit_background(declare_alert, {"params": DeclareParams(alert=alert, respond=respond)})
    return {"task_run_id": str(run.id), "task": "declare-alert"}


async def submit_background(task: Any, parameters: dict[str, Any]) -> Any:
    """Submit a background task run (`task.delay(**parameters)`) on this event loop; return the TaskRun.

    What `Task.create_run(deferred=True)` does (delay() is sync: it would block the intake's loop, or need a thread
    and a loop of its own per alert): a Scheduled task run whose parameters go to the result storage, pushed by the
    server to the subscribed task worker. Except that the caller's run context is not stored with them: the intake
    runs in no flow or task run, and its settings are the task worker's (one process, one environment). Rebuilding
    the settings from that context and a client for it cost the task worker ~50 ms of CPU per alert, serializing it
    the intake ~15 ms (measured with py-spy: bench/alert_latency.py); a heavily loaded machine multiplies both.
    """
    from uuid import uuid4

    from prefect.client.orchestration import get_client
    from prefect.results import ResultStore, get_or_create_default_task_scheduling_storage
    from prefect.states import Scheduled
    from prefect.task_worker import store_parameters
    from prefect.utilities.engine import emit_task_run_state_change_event

    parameters_id = uuid4()
    state = Scheduled()
    state.state_details.deferred = True
    state.state_details.task_parameters_id = parameters_id
    store = await ResultStore(
        result_storage=await get_or_create_default_task_scheduling_storage()).aupdate_for_task(task)
    await store_parameters(store, parameters_id, {"parameters": parameters})
    async with get_client() as client:  # the process's client (aserve_warm's context), else a new one
        run = await client.create_task_run(task=task, name=task.name, flow_run_id=None,
                                           dynamic_key=f"{task.task_key}-{uuid4().hex}", state=state,
                                           task_inputs={name: set() for name in parameters})
    emit_task_run_state_change_event(task_run=run, initial_state=None, validated_state=run.state)
    return run


async def aserve_warm(*, intake_port: int | None = None, host: str = "127.0.0.1", limit: int = TASK_LIMIT,
                      ready: asyncio.Event | None = None, handle_signals: bool = True) -> None:
    """Run the task worker (and the intake on `intake_port`) until SIGINT/SIGTERM (`handle_signals`) or
    cancellation; `ready` is set once both listen."""
    from prefect.context import AsyncClientContext

    # One Prefect client for the whole process: the intake's hand-offs, the task worker's runs and what they call
    # find it in the context (get_client), instead of a new client (and TLS context) per alert and per task run.
    async with AsyncClientContext():
        await _serve_warm(intake_port=intake_port, host=host, limit=limit, ready=ready, handle_signals=handle_signals)


async def _serve_warm(*, intake_port: int | None, host: str, limit: int, ready: asyncio.Event | None,
                      handle_signals: bool) -> None:
    import uvicorn
    from prefect.task_worker import aserve

    import flows._response  # noqa: F401  (imported now, not at the first alert: the page does not wait for it)
    from flows.declare_incident import declare_alert
    from runbook.intake import create_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    worker = asyncio.create_task(aserve(declare_alert, limit=limit))
    server = None
    serving: asyncio.Task[Any] | None = None
    if intake_port is not None:
        server = uvicorn.Server(uvicorn.Config(create_app(start=start_warm), host=host, port=intake_port,
                                               log_level="warning", access_log=False))
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the worker registered its own SIGTERM handler by now: ours replace it (clean stop)
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    print(f"task worker serving declare-alert (limit {limit})"
          + (f"; alert intake on http://{host}:{intake_port}/alerts" if intake_port is not None else ""), flush=True)
    if ready is not None:
        ready.set()
    waits = {asyncio.create_task(stop.wait()), worker, *([serving] if serving else [])}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if server is not None:
            server.should_exit = True
        worker.cancel()
        for pending in waits:
            if pending is not worker and pending is not serving:
                pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker
        if serving is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serving
        for sig in signals:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def warm_process(env: dict[str, str], log: Path, *, intake_port: int | None = None,
                 timeout: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m deployments.warm_start` (its own session: the terminal's Ctrl-C reaches `runbook up`, which
    stops it here with SIGTERM, then SIGKILL after `timeout`) for the duration of the block."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "deployments.warm_start"]
    if intake_port is not None:
        command += ["--intake-port", str(intake_port)]
    with log.open("ab") as out:
        # The task run's own logs (outside a flow run) stay in the log file, without a warning per line.
        env = {"PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore", **env}
        process = subprocess.Popen(command, env=env, cwd=PROJECT_DIR, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: the task worker of the warm path, and the intake with it when given a port."""
    parser = argparse.ArgumentParser(prog="python -m deployments.warm_start", description=__doc__.splitlines()[0])
    parser.add_argument("--intake-port", type=int, default=None, help="also serve the alert intake on this port")
    parser.add_argument("--host", default="127.0.0.1", help="the intake's address (default 127.0.0.1)")
    parser.add_argument("--limit", type=int, default=TASK_LIMIT, help="at most this many declarations at once")
    args = parser.parse_args(argv)
    from prefect.settings import PREFECT_API_URL

    from runbook.errors import ConfigError
    from runbook.intake import check_bind
    from runbook.settings import get_settings

    if not PREFECT_API_URL.value():
        print("warm_start: set PREFECT_API_URL to the Prefect server", file=sys.stderr)
        return 2
    if args.intake_port is not None:
        try:
            check_bind(args.host, get_settings(), insecure_local=False)
        except ConfigError as exc:
            print(f"warm_start: {exc}", file=sys.stderr)
            return 2
    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(aserve_warm(intake_port=args.intake_port, host=args.host, limit=args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
