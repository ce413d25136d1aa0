"""prefect.yaml: every flow deployed, entrypoints import, defaults validate, schedules valid; deployments really run."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import signal
import subprocess
import sys
import time
import typing
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import yaml
from prefect import Flow
from prefect.deployments.flow_runs import arun_deployment
from pydantic import BaseModel

from deployments.local_server import LocalPrefectServer, api_auth_string, api_headers, prefect_command
from deployments.serve import PROJECT_DIR, DeploymentSpec, build_schedule, load_flow, read_specs
from runbook.errors import ConfigError
from runbook.store import open_store
from tests.e2e.deploy_support import INCIDENT_ID, POOL_SERVER, execute_due_runs, read_run

SPECS = read_specs()
BY_NAME = {s.name: s for s in SPECS}
# Values for fields a deployment cannot default (the form asks for them), per field name.
REQUIRED_SAMPLES: dict[str, Any] = {
    "incident_id": INCIDENT_ID, "requested_by": "alice", "enabled": True,
    # the lifecycle forms (flows/lifecycle.py): who, why, and what to change
    "by": "alice", "reason": "restored", "status": "monitoring", "severity": "P1", "other_id": INCIDENT_ID,
    "survivor_id": INCIDENT_ID, "duplicate_id": INCIDENT_ID, "text": "checked the dashboard",
}
# Flows whose model has a rule beyond required fields.
EXTRA_SAMPLES: dict[str, dict[str, Any]] = {"declare-incident": {"title": "Checkout returns 500"}}


def flow_modules() -> list[str]:
    """Return the flow modules of flows/ (private flows/_*.py are helpers, not flows)."""
    return sorted(p.stem for p in (PROJECT_DIR / "flows").glob("*.py") if not p.stem.startswith("_"))


def flows_in(module_name: str) -> dict[str, Flow[Any, Any]]:
    """Return the flows defined in a flow module, by function name."""
    module = importlib.import_module(f"flows.{module_name}")
    return {k: v for k, v in vars(module).items() if isinstance(v, Flow) and v.fn.__module__ == module.__name__}


def params_model(flow: Flow[Any, Any]) -> type[BaseModel] | None:
    """Return the flow's pydantic parameters model when it takes one `params` argument."""
    hint = typing.get_type_hints(flow.fn).get("params")
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_entrypoint_is_a_flow_named_like_its_deployment(spec: DeploymentSpec) -> None:
    """Each entrypoint is a file in flows/ whose object is a Prefect flow with the deployment's name."""
    assert (PROJECT_DIR / spec.entrypoint.split(":")[0]).is_file()
    assert spec.module.startswith("flows.") and not spec.module.split(".")[-1].startswith("_")
    flow = load_flow(spec)
    assert isinstance(flow, Flow) and flow.name == spec.name


def test_every_flow_has_a_deployment() -> None:
    """Every flow defined in a flows/ module (private modules aside) has exactly one deployment."""
    entrypoints = [s.entrypoint for s in SPECS]
    expected = [f"flows/{m}.py:{fn}" for m in flow_modules() for fn in flows_in(m)]
    assert sorted(set(entrypoints) ^ set(expected)) == []
    assert len(entrypoints) == len(set(entrypoints)) and len(BY_NAME) == len(SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_default_parameters_validate(spec: DeploymentSpec) -> None:
    """The deployment's defaults plus samples for the fields a form must ask for validate against the flow."""
    flow = load_flow(spec)
    assert set(spec.parameters) <= set(inspect.signature(flow.fn).parameters)
    model = params_model(flow)
    if model is None:  # a flow with plain arguments
        flow.validate_parameters(dict(spec.parameters))
        return
    given = dict(spec.parameters.get("params") or {})
    required = {n: REQUIRED_SAMPLES[n] for n, f in model.model_fields.items() if f.is_required() and n not in given}
    model.model_validate({**given, **required, **EXTRA_SAMPLES.get(spec.name, {})})
    assert set(given) <= set(model.model_fields)


def test_schedules_are_valid_and_as_the_runbook_needs() -> None:
    """Every schedule builds (exactly one of cron/interval/rrule); monitor, sweep and reminder are scheduled."""
    from prefect.cli.deploy._models import PrefectYamlModel  # what `prefect deploy` validates the file with

    PrefectYamlModel.model_validate(yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text()))
    built = {s.name: [build_schedule(c, s.name) for c in s.schedules] for s in SPECS}
    assert [x.interval.total_seconds() for x in built["monitor"] if x.interval] == [60]
    assert built["follow-up-sweep"] and built["runbook-review-reminder"][0].cron == "0 9 1 * *"
    if "config-snapshot" in built:
        assert [x.cron for x in built["config-snapshot"]] == ["0 * * * *"]
    assert all(x.active for schedules in built.values() for x in schedules)


def test_a_schedule_with_two_kinds_is_refused() -> None:
    """A schedule giving both cron and interval is a configuration error naming the rule."""
    with pytest.raises(ConfigError, match="exactly one of cron"):
        build_schedule({"cron": "* * * * *", "interval": 60})


def test_deployments_enforce_their_schema_on_the_runbook_pool() -> None:
    """Every deployment enforces its parameter schema, runs on runbook-pool, is tagged runbook and described."""
    raw = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    assert not raw.get("build") and not raw.get("push")
    for spec in SPECS:
        assert spec.enforce_parameter_schema and spec.work_pool.get("name") == "runbook-pool", spec.name
        assert "runbook" in spec.tags and spec.description, spec.name


async def test_load_deployments_registers_every_deployment(registered_deployments: dict[str, UUID]) -> None:
    """load_deployments() + aapply() registers each prefect.yaml deployment with its schedules and tags."""
    from prefect.client.orchestration import get_client

    assert set(registered_deployments) == set(BY_NAME)
    async with get_client() as client:
        monitor = await client.read_deployment(registered_deployments["monitor"])
        declare = await client.read_deployment(registered_deployments["declare-incident"])
    assert [s.schedule.interval.total_seconds() for s in monitor.schedules] == [60.0]  # type: ignore[union-attr]
    assert monitor.concurrency_limit == 1 or monitor.global_concurrency_limit is not None
    assert declare.enforce_parameter_schema and "response" in declare.tags and not declare.schedules


async def test_triggered_declare_run_executes(registered_deployments: dict[str, UUID], state_dir: Path) -> None:
    """A declare-incident run created through Prefect's API executes in a runner subprocess and records the incident."""
    title = f"Checkout returns 500 ({uuid.uuid4().hex[:6]})"
    run = await arun_deployment("declare-incident/declare-incident", timeout=0,
                               parameters={"params": {"title": title, "respond": "none"}})
    await execute_due_runs("declare-incident")
    finished = await read_run(run.id)
    assert finished.state is not None and finished.state.is_completed(), finished.state
    async with open_store() as store:  # the subprocess shared RUNBOOK_STATE_DIR through the environment
        assert [i.title for i in await store.list()] == [title]


# -- prefect deploy --all against a real local server, and a process worker running a deployed flow --------------


def api(server: LocalPrefectServer, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST (or GET without a body) to the local server's API and return the JSON."""
    url = f"{server.api_url}{path}"
    headers = server.api_headers  # the server has API authentication, as `runbook up`'s
    response = (httpx.post(url, json=body, timeout=10, headers=headers) if body is not None
                else httpx.get(url, timeout=10, headers=headers))
    response.raise_for_status()
    return response.json()


@pytest.mark.slow
@pytest.mark.xdist_group(POOL_SERVER)
def test_the_printed_ui_talks_to_its_own_server(deployed: tuple[LocalPrefectServer, dict[str, str]]) -> None:
    """The UI at the server's own (non-default) port is configured with that server's API, not 127.0.0.1:4200."""
    server, _ = deployed
    assert server.port != 4200
    settings = httpx.get(f"{server.url}/ui-settings", timeout=10).json()
    assert settings["api_url"] == server.api_url
    page = httpx.get(f"{server.url}/", timeout=10, follow_redirects=True, headers={"accept": "text/html"})
    assert page.status_code == 200 and "<html" in page.text.lower()
    # what the UI lists is what this server holds
    names = {d["name"] for d in httpx.post(f"{settings['api_url']}/deployments/filter", json={}, timeout=10,
                                           headers=server.api_headers).json()}
    assert names == set(BY_NAME)


@pytest.mark.slow
@pytest.mark.xdist_group(POOL_SERVER)
def test_prefect_deploy_all_registers_every_deployment(deployed: tuple[LocalPrefectServer, dict[str, str]]) -> None:
    """`prefect deploy --all` (what users run) creates or updates every deployment on runbook-pool with its
    schedules, in the project directory (the shared server's deployments came through the API: each is redone)."""
    server, env = deployed
    began = datetime.now(UTC)
    done = subprocess.run([*prefect_command(), "--no-prompt", "deploy", "--all"], env=env, cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {d["name"]: d for d in api(server, "/deployments/filter", {"limit": 200})}
    assert set(found) == set(BY_NAME)
    # every one written by this command: updated since it began, with prefect.yaml's pull step (the API has none)
    assert [n for n, d in found.items() if datetime.fromisoformat(d["updated"]) < began] == []
    assert all(d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}]
               for d in found.values()), {n: d["pull_steps"] for n, d in found.items()}
    assert {d["work_pool_name"] for d in found.values()} == {"runbook-pool"}
    assert found["monitor"]["schedules"][0]["schedule"]["interval"] == 60
    assert found["runbook-review-reminder"]["schedules"][0]["schedule"]["cron"] == "0 9 1 * *"
    assert found["declare-incident"]["job_variables"]["working_dir"] == str(PROJECT_DIR)


@pytest.mark.slow
@pytest.mark.xdist_group(POOL_SERVER)
def test_worker_runs_a_deployment_started_from_the_shell(
        deployed: tuple[LocalPrefectServer, dict[str, str]]) -> None:
    """A run started with `prefect deployment run --param` completes on a worker started elsewhere and records."""
    server, env = deployed
    title = "Checkout returns 500 from the shell"
    started = subprocess.run(
        [*prefect_command(), "deployment", "run", "declare-incident/declare-incident",
         "--param", f'params={{"title": "{title}", "respond": "none"}}'],
        env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr[-2000:]
    worker = subprocess.run([*prefect_command(), "worker", "start", "--pool", "runbook-pool", "--run-once"],
                            env=env, cwd="/", capture_output=True, text=True, timeout=90)
    assert worker.returncode == 0, worker.stdout[-3000:]
    runs = api(server, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"declare {title}"]}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    store_file = Path(env["RUNBOOK_STATE_DIR"]) / "incidents.db"
    titles = asyncio.run(_titles(f"sqlite+aiosqlite:///{store_file}"))
    assert titles == [title]  # the worker's flow-run process wrote to the store its environment names


async def _titles(store_url: str) -> list[str]:
    async with open_store(store_url) as store:
        return [i.title for i in await store.list()]


def processes_mentioning(text: str) -> list[int]:
    """Return the pids whose command line or environment mentions text."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_runbook_up_serves_everything_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    """`runbook up` says ready (with links) once every deployment is; Ctrl-C mid-run cancels it and leaves nothing.
    Its state dir holds the key of an earlier start: the server requires that key (kept across restarts)."""
    state = tmp_path / "up-state"
    earlier = api_auth_string(state / "api-auth")
    proc = start_runbook_up(state)
    try:
        output = read_until_ready(proc)
        ui = re.search(r"Prefect UI: +(http://127\.0\.0\.1:\d+)", output)
        key = up_key(state)
        assert ui and f"ready: {len(BY_NAME)} deployments served" in output, output
        assert key == earlier and earlier.split(":", 1)[1] not in output  # the earlier start's key, never printed
        assert httpx.post(f"{ui[1]}/api/block_documents/filter", json={}, timeout=10).status_code == 401
        assert f"{ui[1]}/deployments" in output and f"{ui[1]}/artifacts" in output and "state=Paused" in output
        found = api_post(ui[1], key, "/deployments/filter", {"limit": 200})
        assert {d["name"] for d in found} == set(BY_NAME) and {d["status"] for d in found} == {"READY"}
        monitor = next(d for d in found if d["name"] == "monitor")
        run = api_post(ui[1], key, f"/deployments/{monitor['id']}/create_flow_run",
                       {"parameters": {"params": {"respond": "none", "cycles": 200, "interval_seconds": 1}}})
        deadline = time.monotonic() + 120
        while (now := api_get(ui[1], key, f"/flow_runs/{run['id']}"))["state_type"] != "RUNNING":  # mid-flight
            assert time.monotonic() < deadline, "the monitor run did not start"
            time.sleep(0.3)
        time.sleep(1)  # the run names itself when it starts (flow_run_name)
        name = api_get(ui[1], key, f"/flow_runs/{run['id']}")["name"] or now["name"]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and rest.rstrip().endswith("stopped"), rest[-2000:]
    # the cancelled run's process says it in a line, without a traceback or a "Crash detected" line per task run
    assert "Traceback" not in output + rest and "cancelled by the runtime environment" not in rest, rest[-3000:]
    assert re.search(rf"{re.escape(name)}: Cancelled", rest), rest[-2000:]  # not Crashed
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{ui[1]}/api/health", timeout=2)
    assert processes_mentioning(str(state)) == []
    # the server ran on its own PostgreSQL, kept in the state dir for the next start (not SQLite); the incident
    # store and its reports are in the state dir too, not in a temporary directory that the stop deleted
    assert (state / "prefect" / "postgres" / "PG_VERSION").is_file()
    assert not list((state / "prefect").glob("*.db"))
    assert (state / "incidents.db").is_file()


def start_runbook_up(state: Path, *args: str) -> subprocess.Popen[str]:
    """Start `runbook up` as a person does (own session, no PREFECT_/RUNBOOK_ settings but the state dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOK_"))}
    env["RUNBOOK_STATE_DIR"] = str(state)
    return subprocess.Popen([str(Path(sys.executable).with_name("runbook")), "up", *args], cwd=PROJECT_DIR,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def read_until_ready(proc: subprocess.Popen[str]) -> str:
    """Return `runbook up`'s output up to its ready banner ("ready" comes only once everything is)."""
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return "".join(lines)


def up_key(state: Path) -> str:
    """Return the API credential `runbook up` keeps in its state dir (its server has API authentication)."""
    return (state / "api-auth").read_text().strip()


def wait_final(ui: str, key: str, run_id: str, timeout: float = 180) -> dict[str, Any]:
    """Wait until a flow run reaches a final state; return it."""
    deadline = time.monotonic() + timeout
    while (now := api_get(ui, key, f"/flow_runs/{run_id}"))["state_type"] not in FINAL:
        assert time.monotonic() < deadline, now["state_type"]
        time.sleep(0.3)
    return now


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.mark.slow
def test_runbook_up_with_workers_runs_deployments_on_them_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    """`runbook up --workers 2`: runs execute in a worker (shared Postgres store); Ctrl-C cancels the run in flight
    and stops workers, server and both databases: no process, no port, no database directory left."""
    state = tmp_path / "upw"
    proc = start_runbook_up(state, "--workers", "2")
    try:
        output = read_until_ready(proc)
        ui = re.search(r"Prefect UI: +(http://127\.0\.0\.1:\d+)", output)
        key = up_key(state)
        store = re.search(r"incident store: (postgresql://\S+host=(\S+)) \(shared by the workers\)", output)
        assert ui and store and "2 worker(s) polling (runbook-worker-1, runbook-worker-2)" in output, output
        assert "PREFECT_WORKER_QUERY_SECONDS=1" in output
        found = {d["name"]: d for d in api_post(ui[1], key, "/deployments/filter", {"limit": 200})}
        assert set(found) == set(BY_NAME) and {d["work_pool_name"] for d in found.values()} == {"runbook-pool"}
        title = f"Checkout returns 500 ({uuid.uuid4().hex[:6]})"
        declare = api_post(ui[1], key, f"/deployments/{found['declare-incident']['id']}/create_flow_run",
                           {"parameters": {"params": {"title": title, "respond": "none"}}})
        done = wait_final(ui[1], key, declare["id"])
        assert done["state_type"] == "COMPLETED", done["state"]
        assert done["labels"]["prefect.worker.name"] in {"runbook-worker-1", "runbook-worker-2"}
        assert title in asyncio.run(_titles(store[1]))  # the worker wrote into the shared PostgreSQL store
        monitor = api_post(ui[1], key, f"/deployments/{found['monitor']['id']}/create_flow_run",
                           {"parameters": {"params": {"respond": "none", "cycles": 200, "interval_seconds": 1}}})
        deadline = time.monotonic() + 120
        while api_get(ui[1], key, f"/flow_runs/{monitor['id']}")["state_type"] != "RUNNING":  # mid-flight
            assert time.monotonic() < deadline, "the monitor run did not start"
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and rest.rstrip().endswith("stopped"), rest[-2000:]
    assert "Traceback" not in output + rest, rest[-3000:]
    ended = re.search(r"  (monitor[^:]*): (\w+)", rest)
    assert ended and ended[2] == "Cancelled", rest[-2000:]  # not Crashed
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{ui[1]}/api/health", timeout=2)
    store_dir = Path(store[2])
    assert processes_mentioning(str(state)) == [] and processes_mentioning(str(store_dir)) == []
    assert not store_dir.exists()  # the store's database was ours: removed


def api_post(ui: str, key: str, path: str, body: dict[str, Any]) -> Any:
    """POST to the API behind a UI address with its credential and return the JSON."""
    response = httpx.post(f"{ui}/api{path}", json=body, timeout=10, headers=api_headers(key))
    response.raise_for_status()
    return response.json()


def api_get(ui: str, key: str, path: str) -> Any:
    """GET from the API behind a UI address with its credential and return the JSON."""
    response = httpx.get(f"{ui}/api{path}", timeout=10, headers=api_headers(key))
    response.raise_for_status()
    return response.json()
