"""The production topology on one machine: prefect.yaml deployed to a process work pool, N `prefect worker start`
processes, and the incident store on PostgreSQL shared by all of them (`runbook up --workers N`, `runbook drill
--workers N`, the topology tests and bench/workers.py).

    with Topology(api_url, workers=2, state_dir=...) as topo:   # pool + deployments + store + workers, all ready
        ...                                                      # every deployment run executes in a worker
    # stop(): runs in flight cancelled (Cancelled, not Crashed), workers stopped, the store's database removed

- **Pool and deployments through the API** (`deploy_to_pool`): the deployments of prefect.yaml (the one list), each
  with `work_pool_name` and the job variable `working_dir` = the project directory; a few at a time (about 10 s
  for all, where `prefect --no-prompt deploy --all` takes about 45 s).
- **Workers**: `prefect worker start --pool P --name runbook-worker-<i> --type process`, each in its own session,
  with PREFECT_WORKER_QUERY_SECONDS (default 1 s: a triggered run starts within about a second; Prefect's default
  10 s would be the start latency of every hop of an incident: declare → respond → remediation) and the RUNBOOK_*
  settings of this process, RUNBOOK_STORE_URL included. Each flow run carries the label `prefect.worker.name`.
- **The store** (`shared_store`): RUNBOOK_STORE_URL when the user set it, else an embedded PostgreSQL created here
  and removed at stop. SQLite would work for one machine but not for workers elsewhere; the lock of "one
  remediation per environment" lives there.
- **A worker that dies** (`reap()`): the runs it was executing whose process is gone too are marked Crashed through
  the API (so the remediation lock they held can be taken over at once, runbook/store.py) and the worker restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from deployments.local_server import api_headers, embedded_postgres, prefect_command, prefect_env
from deployments.serve import DEFAULT_FILE, PROJECT_DIR, load_deployments
from runbook.errors import RunbookError

POOL = "runbook-pool"
WORKER_QUERY_SECONDS = 1.0
# Every process of one topology carries this marker in its environment: stop() finds them all by it (the workers'
# flow-run processes run in sessions of their own and would outlive a group kill of the worker).
MARKER = "RUNBOOK_TOPOLOGY_ID"
BUSY = ("PENDING", "RUNNING", "CANCELLING")
# Every flow run a worker starts sends a heartbeat event this often (PREFECT_FLOWS_HEARTBEAT_FREQUENCY; 30 s is
# Prefect's minimum, its default 180 s). The server's automation CRASH_AUTOMATION sets Crashed a run silent for
# CRASHED_AFTER_SECONDS (three beats missed): a worker that died on any machine is known dead within about 90 s.
HEARTBEAT_SECONDS = 30
CRASHED_AFTER_SECONDS = 3.0 * HEARTBEAT_SECONDS
CRASH_AUTOMATION = "runbook-crashed-flow-runs"


@contextlib.contextmanager
def shared_store(environ: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the incident store every worker shares: RUNBOOK_STORE_URL if set, else a temporary embedded
    PostgreSQL (its own database: not the Prefect server's, not the one under incident), removed at exit."""
    given = (os.environ if environ is None else environ).get("RUNBOOK_STORE_URL")
    if given:
        yield given
        return
    # A short path: the socket lives in the data directory and a Unix socket path has at most 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="runbook-store-"))
    try:
        with embedded_postgres(base / "pg") as uri:
            yield uri
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


async def ensure_work_pool(name: str = POOL) -> None:
    """Create the process work pool `name` on the current Prefect server unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(
                name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))


async def ensure_work_queues(pool: str, names: Sequence[str]) -> None:
    """Create the named work queues of the pool unless they exist."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        for name in names:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_queue(name=name, work_pool_name=pool)


async def apply_all(deployments: Sequence[Any], *, at_once: int = 6) -> dict[str, Any]:
    """Apply deployments a few at a time (one by one took 18 s on a loaded machine); return name → id."""
    limit = asyncio.Semaphore(at_once)
    ids: dict[str, Any] = {}

    async def apply(deployment: Any) -> None:
        async with limit:
            ids[deployment.name] = await deployment.aapply()

    await asyncio.gather(*(apply(d) for d in deployments))
    return ids


async def ensure_crash_detection(within_seconds: float = CRASHED_AFTER_SECONDS) -> None:
    """Create (or update) Prefect's documented automation for zombie flow runs on the current server: a flow run
    that sent a heartbeat and then no flow-run event at all (no heartbeat, no state change) for `within_seconds` is
    set Crashed. Its process died without telling anyone (its worker killed, its machine gone): Prefect then says
    Crashed, and the remediation lock it held is taken over by the next run at once (store.holder_run_ended), on
    any machine, instead of after the lock's TTL. A suspended run sent its Suspended event: never a zombie."""
    from datetime import timedelta

    from prefect.automations import Automation, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState

    automation = Automation(
        name=CRASH_AUTOMATION, description="runbook: flow runs whose heartbeats stopped are Crashed",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": ["prefect.flow-run.*"]}, for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=timedelta(seconds=within_seconds)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=(
            f"no heartbeat for {within_seconds:g} s: its process died with its worker or machine"))])
    try:
        existing = await Automation.aread(name=CRASH_AUTOMATION)
    except ValueError:
        await automation.acreate()
        return
    automation.id = existing.id
    await automation.aupdate()


async def deploy_to_pool(file: str | Path = DEFAULT_FILE, pool: str = POOL, *,
                         names: Sequence[str] | None = None, schedules: bool = True,
                         crashed_after: float = CRASHED_AFTER_SECONDS) -> dict[str, Any]:
    """Deploy prefect.yaml's deployments to the process pool through the API (what `prefect deploy --all` does,
    about four times faster), with the crash detection of runs whose heartbeats stop; return name → deployment id."""
    await ensure_work_pool(pool)
    await ensure_crash_detection(crashed_after)
    # Built in a worker thread: Prefect's sync/async dispatch returns coroutines inside a running loop.
    deployments = await asyncio.to_thread(load_deployments, file, names=names, schedules=schedules)
    for deployment in deployments:
        deployment.work_pool_name = pool
        deployment.job_variables = {"working_dir": str(PROJECT_DIR)}
    return await apply_all(deployments)


@dataclass
class Worker:
    """One `prefect worker start` process."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    restarts: int = 0


@dataclass
class Topology:
    """A process pool, its deployments, N workers and the shared store, on the Prefect server at api_url."""

    api_url: str
    workers: int
    state_dir: Path
    file: str | Path = DEFAULT_FILE
    pool: str = POOL
    query_seconds: float = WORKER_QUERY_SECONDS
    env: dict[str, str] = field(default_factory=dict)  # extra settings for the workers (RUNBOOK_* of the drill)
    schedules: bool = True
    deploy: bool = True  # False: prefect.yaml is already deployed to the pool (the drill deploys once)
    # True: each worker also polls a work queue of its own name, so a run can be sent to one worker
    # (`work_queue_name=` of run_deployment); the topology tests pin runs that way.
    own_queues: bool = False
    # False (with own_queues): the workers poll only their own queues, not the pool's default one: the workers of
    # one environment (their settings: its targets, RUNBOOK_ENVIRONMENT) get only the runs sent to that environment.
    default_queue: bool = True
    limit: int | None = None  # at most this many flow runs at a time per worker
    prefix: str = "runbook-worker"  # workers are named <prefix>-1 … <prefix>-N
    ready_timeout: float = 180.0
    store_url: str = ""
    running: list[Worker] = field(default_factory=list)
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise RunbookError(f"--workers must be at least 1 (got {self.workers})")

    @property
    def worker_names(self) -> list[str]:
        """Return the workers' names (the label `prefect.worker.name` of the runs they execute)."""
        return [f"{self.prefix}-{i + 1}" for i in range(self.workers)]

    # -- start -----------------------------------------------------------------------------------------------

    def start(self) -> Topology:
        """Store, pool, deployments, workers; return once every worker has registered with the pool."""
        try:
            self.store_url = self._stack.enter_context(shared_store({**os.environ, **self.env}))
            from prefect.settings import temporary_settings

            if self.deploy:
                with temporary_settings(updates=self.client_settings()):
                    asyncio.run(deploy_to_pool(self.file, self.pool, schedules=self.schedules))
            self.state_dir.mkdir(parents=True, exist_ok=True)
            if self.own_queues:
                with temporary_settings(updates=self.client_settings()):
                    asyncio.run(ensure_work_queues(self.pool, self.worker_names))
            for name in self.worker_names:
                self.running.append(self._spawn(name))
            self._wait_registered()
        except BaseException:
            self.stop()
            raise
        return self

    def client_settings(self) -> dict[Any, Any]:
        """Return the Prefect client settings of this process's calls to the server: its URL and the workers' API
        credential (PREFECT_API_AUTH_STRING, when the server has one)."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        auth = self.worker_env(self.prefix).get("PREFECT_API_AUTH_STRING")
        return {PREFECT_API_URL: self.api_url, **({PREFECT_API_AUTH_STRING: auth} if auth else {})}

    def worker_env(self, name: str) -> dict[str, str]:
        """Return a worker's environment: this process's settings, the store, the server, the poll interval."""
        env = prefect_env(self.state_dir / "prefect", self.api_url,
                          PREFECT_WORKER_QUERY_SECONDS=f"{self.query_seconds:g}",
                          PREFECT_WORKER_PREFETCH_SECONDS="2",
                          PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS))
        env.update(self.env)
        env.update(RUNBOOK_STORE_URL=self.store_url, RUNBOOK_STATE_DIR=str(self.state_dir), PWD=str(PROJECT_DIR))
        env[MARKER] = self.marker
        env["RUNBOOK_WORKER_NAME"] = name
        return env

    def warm_env(self) -> dict[str, str]:
        """Return the environment of the warm path's task worker (deployments/warm_start.py): a worker's, unmarked
        (`runbook up` stops it itself, gracefully, after the workers)."""
        env = {**os.environ, **self.worker_env("runbook-warm")}
        env.pop(MARKER, None)
        return env

    def _spawn(self, name: str, restarts: int = 0) -> Worker:
        logs = self.state_dir / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        log = (logs / f"{name}.log").open("ab")
        command = [*prefect_command(), "worker", "start", "--pool", self.pool, "--name", name, "--type", "process"]
        if self.own_queues:
            command += [*(["--work-queue", "default"] if self.default_queue else []), "--work-queue", name]
        if self.limit:
            command += ["--limit", str(self.limit)]
        process = subprocess.Popen(
            command,
            env=self.worker_env(name), cwd=PROJECT_DIR, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        return Worker(name=name, process=process, log=log, restarts=restarts)

    def _wait_registered(self) -> None:
        """Wait until every worker has polled the pool once (it is then listed as one of the pool's workers)."""
        import httpx

        deadline = time.monotonic() + self.ready_timeout
        wanted = set(self.worker_names)
        headers = api_headers(self.worker_env(self.prefix).get("PREFECT_API_AUTH_STRING"))  # the workers' credential
        while True:
            for worker in self.running:
                if worker.process.poll() is not None:
                    raise RunbookError(f"worker {worker.name} exited with {worker.process.returncode}:\n"
                                       f"{self.log_tail(worker.name)}")
            with contextlib.suppress(httpx.HTTPError):
                found = httpx.post(f"{self.api_url}/work_pools/{self.pool}/workers/filter", json={}, timeout=10,
                                   headers=headers).json()
                if wanted <= {w["name"] for w in found if w.get("status") == "ONLINE" or "status" not in w}:
                    return
            if time.monotonic() > deadline:
                raise RunbookError(f"workers not registered with {self.pool} after {self.ready_timeout:.0f} s")
            time.sleep(0.3)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """Return the end of a worker's log."""
        try:
            text = (self.state_dir / "workers" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- a worker that died --------------------------------------------------------------------------------------

    def reap(self) -> list[str]:
        """Restart workers that died; mark the runs they were executing Crashed when their process is gone too.

        Return a line per event for the terminal.
        """
        said: list[str] = []
        for i, worker in enumerate(self.running):
            if worker.process.poll() is None:
                continue
            worker.log.close()
            from prefect.settings import temporary_settings

            with temporary_settings(updates=self.client_settings()):
                crashed = asyncio.run(mark_orphans_crashed(self.api_url, worker.name))
            said.append(f"worker {worker.name} exited ({worker.process.returncode}); "
                        f"{len(crashed)} run(s) it was executing marked Crashed; restarting it")
            self.running[i] = self._spawn(worker.name, worker.restarts + 1)
        return said

    # -- stop ----------------------------------------------------------------------------------------------------

    def stop(self, timeout: float = 60.0) -> list[tuple[str, str]]:
        """Cancel the runs in flight (they end Cancelled), stop the workers and every process they started, remove
        the store's database when it is ours; return (run name, final state) of the cancelled runs."""
        cancelled: list[tuple[str, str]] = []
        if self.running:
            from prefect.settings import temporary_settings

            with contextlib.suppress(Exception), temporary_settings(updates=self.client_settings()):
                cancelled = asyncio.run(cancel_in_flight(self.api_url, self.worker_names, timeout=timeout))
        for worker in self.running:
            if worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGTERM)
        for worker in self.running:
            try:
                worker.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.process.pid, signal.SIGKILL)
            worker.log.close()
        self.running = []
        kill_marked(self.marker)
        self._stack.close()
        return cancelled

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def processes_marked(marker: str) -> list[int]:
    """Return the pids whose environment carries this topology's marker (its workers and their flow runs)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
    return found


def kill_marked(marker: str, timeout: float = 10.0) -> None:
    """SIGKILL every process of the topology still alive and wait until they are gone."""
    deadline = time.monotonic() + timeout
    while (pids := processes_marked(marker)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap our own children (the workers) so they do not linger
                pass
        time.sleep(0.1)


async def _busy_runs(client: Any, worker_names: Sequence[str] | None = None) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType(s) for s in BUSY]))), limit=200)
    if worker_names is None:
        return list(runs)
    return [r for r in runs if (r.labels or {}).get("prefect.worker.name") in set(worker_names)]


async def cancel_in_flight(api_url: str, worker_names: Sequence[str], timeout: float = 60.0
                           ) -> list[tuple[str, str]]:
    """Cancel the runs the workers are executing (Cancelling: the worker kills the process, the run ends
    Cancelled); wait for them to end; return (name, state) of each."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            runs = await _busy_runs(client, worker_names)
            for run in runs:
                with contextlib.suppress(Exception):
                    await client.set_flow_run_state(run.id, Cancelling(message="runbook stopped"), force=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            final: list[tuple[str, str]] = []
            for run in runs:
                while True:
                    now = await client.read_flow_run(run.id)
                    state = now.state
                    if state is None or state.is_final() or loop.time() > deadline:
                        final.append((now.name, (state.name if state else None) or "unknown"))
                        break
                    await asyncio.sleep(0.3)
    return final


def _pid_alive(infrastructure_pid: str | None) -> bool:
    """Return True when the flow run's process (`host:pid` as the process worker records it) still exists here."""
    if not infrastructure_pid:
        return False
    pid = infrastructure_pid.rsplit(":", 1)[-1]
    try:  # a zombie (exited, not yet reaped by whoever adopted it) is dead too
        stat = Path(f"/proc/{pid}/stat").read_text() if pid.isdigit() else ""
    except OSError:
        return False
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


async def mark_orphans_crashed(api_url: str, worker_name: str) -> list[str]:
    """Mark Crashed the runs a dead worker was executing whose own process is gone; return their names."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    crashed: list[str] = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            for run in await _busy_runs(client, [worker_name]):
                if _pid_alive(run.infrastructure_pid):
                    continue  # the run's process outlived its worker: it is not dead
                await client.set_flow_run_state(
                    run.id, Crashed(message=f"its worker {worker_name} and its process died"), force=True)
                crashed.append(run.name)
    return crashed


async def worker_of_runs(run_ids: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Return flow run id → its name, flow, state and the worker whose process executed it: the label
    `prefect.worker.name` of the run, or of the run it is a subflow of (it ran in that run's process)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    found: dict[str, dict[str, Any]] = {}
    async with get_client() as client:
        async def worker(run_id: UUID, depth: int = 0) -> tuple[Any, str | None]:
            run = await client.read_flow_run(run_id)
            name = _worker_label(run)
            if name is None and run.parent_task_run_id is not None and depth < 10:
                parent = await client.read_task_run(run.parent_task_run_id)
                if parent.flow_run_id is not None:
                    return run, (await worker(parent.flow_run_id, depth + 1))[1]
            return run, name

        for run_id in dict.fromkeys(str(r) for r in run_ids):
            run, name = await worker(UUID(run_id))
            flows = await client.read_flow(run.flow_id)
            found[run_id] = {"flow_run_id": run_id, "name": run.name, "flow": flows.name,
                             "state": run.state.name if run.state else None, "worker": name}
    return found


def _worker_label(run: Any) -> str | None:
    """Return the worker that executed a flow run (its label `prefect.worker.name`), or None."""
    name = (run.labels or {}).get("prefect.worker.name")
    return str(name) if name else None
