"""The production topology on one machine: a Prefect server on PostgreSQL, prefect.yaml deployed to a process pool,
several `prefect worker start` processes and one incident store on PostgreSQL; the drill on it, and faults of the
engine itself (two remediations on one environment from two workers; a worker SIGKILLed mid-remediation)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments.flow_runs import arun_deployment

from deployments.drill import DRILL_POLICY, run_one
from deployments.local_server import LocalPrefectServer, drain_api_workers
from deployments.workers import Topology, shared_store
from runbook.drill import DrillStack
from runbook.drill.approver import resume
from runbook.models import EventKind, Incident, Severity
from runbook.store import open_store
from tests.e2e.deploy_support import POOL_SERVER, prefect_settings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(POOL_SERVER)]


@pytest.fixture(scope="module")
def server(pool_server: LocalPrefectServer) -> LocalPrefectServer:
    """The session's Prefect server on its own embedded PostgreSQL with prefect.yaml deployed to runbook-pool."""
    return pool_server


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    """The incident store every worker shares: an embedded PostgreSQL of its own."""
    with shared_store({}) as url:
        yield url


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The drill's policy for the workers (its faster stability checks; the circuit breaker's hourly count lifted:
    this module's remediations in a row are each a fresh incident on a reset stack, not a loop)."""
    path = tmp_path_factory.mktemp("topology-policy") / "policy.yaml"
    path.write_text(DRILL_POLICY)
    return {"RUNBOOK_POLICY_FILE": str(path)}


@pytest.fixture
def on_server(server: LocalPrefectServer) -> Iterator[str]:
    """Point this test's Prefect client at the topology's server."""
    with prefect_settings(server.client_settings()):  # its URL and its API credential
        yield server.api_url


@pytest.fixture(scope="module")
def topology(server: LocalPrefectServer, store_url: str, drill_stack: DrillStack, policy: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """Two workers (each also on a queue of its own name, so a test can send a run to one of them) on the drill
    stack's targets, sharing the store."""
    state = tmp_path_factory.mktemp("topology-state")
    env = {**drill_stack.env, **policy, "RUNBOOK_STORE_URL": store_url, "RUNBOOK_ENVIRONMENT": "production",
           "PREFECT_API_AUTH_STRING": server.auth_string or ""}
    with Topology(server.api_url, workers=2, state_dir=state, env=env, deploy=False, own_queues=True,
                  prefix="topo-worker") as topo:
        yield topo


async def test_drill_on_two_workers_runs_every_flow_run_in_a_worker(
        on_server: str, store_url: str, drill_stack: DrillStack, tmp_path: Path) -> None:
    """`runbook drill --workers 2` (database-migration): detected, remediated and verified with every flow run of
    the drill executed by one of the two workers; the result names the worker of each run."""
    result = await run_one(drill_stack, "database-migration", "auto", tmp_path / "drills", workers=2,
                           store_url=store_url)
    assert result.ok and result.resolved, result.error
    flows = {r["flow"] for r in result.flow_runs}
    assert {"monitor", "declare-incident", "respond-p0", "escalate-incident", "database-rollback"} <= flows, flows
    assert {r["worker"] for r in result.flow_runs} <= {"runbook-worker-1", "runbook-worker-2"}, result.flow_runs
    assert all(r["worker"] for r in result.flow_runs), result.flow_runs  # none ran in the drill's process
    assert result.workers == 2 and result.approvals and result.approvals[0]["decision"] == "approve"



async def test_drill_on_two_workers_approved_in_slack(
        on_server: str, store_url: str, drill_stack: DrillStack, tmp_path: Path) -> None:
    """`runbook drill bad-deploy --workers 2 --approve slack --json`: the drill's Slack user clicks Approve on the
    message a worker posted; the intake verifies the click and resumes the suspended rollback on the pool server,
    whose resumed run a worker executes: the approval is the Slack user's, and every run ran in a worker."""
    result = await run_one(drill_stack, "bad-deploy", "slack", tmp_path / "drills", workers=2, store_url=store_url)
    assert result.ok and result.resolved, result.error
    assert [(a["decision"], a["approver"], a["via"], a["identity"]) for a in result.approvals] == [
        ("approve", "drill-approver", "slack", "U0DRILLAPPROVER")], result.approvals
    rollbacks = [r for r in result.flow_runs if r["flow"] == "code-rollback"]
    assert rollbacks and all(r["state"] == "Completed" for r in rollbacks), result.flow_runs
    assert all(r["worker"] in {"runbook-worker-1", "runbook-worker-2"} for r in result.flow_runs), result.flow_runs
    assert result.workers == 2

async def _incident(store_url: str, title: str) -> str:
    async with open_store(store_url) as store:
        incident, _ = await store.declare(Incident(title=title, severity=Severity.P0, drill=True))
    return incident.id


async def _wait(run_id: Any, until: Any, timeout: float = 180) -> Any:
    """Wait until a flow run satisfies until(run); return it."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while not until(run := await client.read_flow_run(run_id)):
            assert time.monotonic() < deadline, f"{run.name}: {run.state_name}"
            await asyncio.sleep(0.3)
    return run


def _paused(run: Any) -> bool:
    return run.state is not None and run.state.is_paused()


def _final(run: Any) -> bool:
    return run.state is not None and run.state.is_final()


@pytest.fixture(scope="module")
def staging(server: LocalPrefectServer, store_url: str, policy: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DrillStack, Topology]]:
    """A second environment, staging: a drill stack of its own and a worker with its settings (its targets,
    RUNBOOK_ENVIRONMENT=staging) that polls only staging's queue, topo-staging-1; the store is the shared one."""
    with DrillStack() as stack:
        env = {**stack.env, **policy, "RUNBOOK_STORE_URL": store_url, "RUNBOOK_ENVIRONMENT": "staging",
               "PREFECT_API_AUTH_STRING": server.auth_string or ""}
        with Topology(server.api_url, workers=1, state_dir=tmp_path_factory.mktemp("staging-state"), env=env,
                      deploy=False, own_queues=True, default_queue=False, prefix="topo-staging") as topo:
            yield stack, topo


async def test_two_incidents_on_two_environments_are_remediated_at_once_by_their_workers(
        on_server: str, topology: Topology, staging: tuple[DrillStack, Topology], store_url: str,
        bad_deploy: DrillStack) -> None:
    """A bad deploy in production and one in staging at the same time: both rollbacks hold their environment's
    lock at once (neither refused), each run executes on a worker of its environment (Prefect's flow runs say
    which), and both environments are rolled back once and healthy again."""
    staging_stack, _ = staging
    staging_stack.reset()
    staging_stack.inject("bad-deploy")
    try:
        prod_id = await _incident(store_url, "Checkout 500 (production)")
        staging_id = await _incident(store_url, "Checkout 500 (staging)")
        started = [await _rollback(prod_id, None), await _rollback(staging_id, "topo-staging-1")]
        paused = [await _wait(run.id, _paused) for run in started]  # both suspended for approval, both locks held
        async with open_store(store_url) as store:
            held = {lock["name"]: lock["holder"] for lock in await store.active_locks("remediation:")}
        assert held == {"remediation:production": f"code-rollback {prod_id} run {paused[0].id}",
                        "remediation:staging": f"code-rollback {staging_id} run {paused[1].id}"}, held
        finished = await asyncio.gather(*(_approve_until_final(run.id) for run in paused))
        ran = {run.name: run.labels.get("prefect.worker.name") for run in [*paused, *finished]}
        assert [run.state.is_completed() for run in finished] == [True, True], [r.state for r in finished]
        assert paused[0].labels["prefect.worker.name"] in {"topo-worker-1", "topo-worker-2"}, ran
        assert finished[0].labels["prefect.worker.name"] in {"topo-worker-1", "topo-worker-2"}, ran
        assert paused[1].labels["prefect.worker.name"] == finished[1].labels["prefect.worker.name"] == \
            "topo-staging-1", ran
        for stack in (bad_deploy, staging_stack):
            assert stack.healthy("bad-deploy")
            assert len([r for r in stack.vercel.requests if r.method == "POST" and "rollback" in r.path]) == 1
        async with open_store(store_url) as store:
            assert await store.active_locks("remediation:") == []
            for incident_id in (prod_id, staging_id):
                kinds = [e.kind for e in await store.timeline(incident_id)]
                assert kinds.count(EventKind.REMEDIATION_APPLIED) == 1, kinds
                assert EventKind.REMEDIATION_ABORTED not in kinds, kinds
    finally:
        staging_stack.reset()


async def _rollback(incident_id: str, worker: str | None) -> Any:
    """Start a code-rollback deployment run (not a dry run) for the incident on one worker's queue (None: the
    pool's default queue, any worker polling it)."""
    return await arun_deployment("code-rollback/code-rollback", timeout=0, work_queue_name=worker,
                                 parameters={"params": {"incident_id": incident_id, "dry_run": False,
                                                        "requested_by": "alice", "verify_within_seconds": 30}})


async def _approve_until_final(run_id: Any) -> Any:
    """Approve the run's pauses as a second person would until it ends; return it."""
    from runbook.drill.approver import pause_form

    while True:
        run = await _wait(run_id, lambda r: _final(r) or _paused(r))
        if _final(run):
            return run
        schema, _ = await pause_form(run)
        plan_hash = (schema.get("properties") or {}).get("plan_hash", {}).get("default", "")
        await resume(run, {"decision": "approve", "approver": "bob", "reason": "as planned", "plan_hash": plan_hash})
        await _wait(run_id, lambda r: not _paused(r))


@pytest.fixture
async def bad_deploy(drill_stack: DrillStack) -> AsyncIterator[DrillStack]:
    """The drill stack with a bad production deploy (a rollback has something to do); clean afterwards."""
    drill_stack.reset()
    drill_stack.inject("bad-deploy")
    yield drill_stack
    drill_stack.vercel.answer_delays.clear()
    drill_stack.reset()


async def test_a_second_remediation_from_another_worker_is_refused_naming_the_holder(
        on_server: str, topology: Topology, store_url: str, bad_deploy: DrillStack) -> None:
    """Two remediations on one environment from two workers: the second is refused naming the first (suspended
    for approval, it keeps the store's lock); after the first finishes the lock is free."""
    first_id, second_id = await _incident(store_url, "Checkout 500 (a)"), await _incident(store_url, "Checkout 500 (b)")
    first = await _rollback(first_id, "topo-worker-1")
    first = await _wait(first.id, _paused)  # suspended for approval, holding remediation:<environment>
    second = await _wait((await _rollback(second_id, "topo-worker-2")).id, _final)
    assert second.state.is_completed() and first.labels["prefect.worker.name"] == "topo-worker-1"
    assert second.labels["prefect.worker.name"] == "topo-worker-2"
    async with open_store(store_url) as store:
        refused = [e for e in await store.timeline(second_id) if e.kind == EventKind.REMEDIATION_ABORTED]
        assert refused and "held by" in refused[0].summary and str(first.id) in refused[0].summary, refused
        assert [lock["holder"] for lock in await store.active_locks("remediation:")] == [
            f"code-rollback {first_id} run {first.id}"]
    finished = await _approve_until_final(first.id)
    assert finished.state.is_completed(), finished.state
    async with open_store(store_url) as store:
        assert await store.active_locks("remediation:") == []
        assert [e.kind for e in await store.timeline(first_id)].count(EventKind.REMEDIATION_APPLIED) == 1


def _flow_run_process(run_id: Any) -> int | None:
    """Return the pid of the process executing a flow run (its environment names the run)."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    return int(proc.name)
            except OSError:
                continue
    return None


@pytest.mark.parametrize("reaper", [True, False], ids=["reaped-on-its-machine", "no-reaper-heartbeats-stop"])
async def test_a_worker_killed_mid_rollback_leaves_the_right_end_state(
        on_server: str, topology: Topology, store_url: str, bad_deploy: DrillStack, reaper: bool) -> None:
    """A worker SIGKILLed (with its run's process) while its approved rollback waits on Vercel: Prefect has the run
    Crashed — at once by `runbook up --workers`'s reaper on that machine, or, with no reaper there (a machine that
    died), by the server's automation once the run's heartbeats stop (deployments/workers.py, within a minute here);
    the next remediation takes the lock over at once (not after the 2 h TTL) and does not roll back twice."""
    incident_id = await _incident(store_url, "Checkout 500 (killed worker)")
    vercel = bad_deploy.vercel
    run = await _wait((await _rollback(incident_id, "topo-worker-1")).id, _paused)
    vercel.answer_delays.append(45)  # the rollback's answer is held back: the run sits in act, lock held
    schema_hash = await _plan_hash(run)
    await resume(run, {"decision": "approve", "approver": "bob", "reason": "go", "plan_hash": schema_hash})
    deadline = time.monotonic() + 180
    while not [r for r in vercel.requests if r.method == "POST" and "rollback" in r.path]:
        assert time.monotonic() < deadline, "the approved rollback never reached Vercel"
        await asyncio.sleep(0.2)
    pid = _flow_run_process(run.id)
    worker = next(w for w in topology.running if w.name == "topo-worker-1")
    os.killpg(worker.process.pid, signal.SIGKILL)
    if pid:
        os.kill(pid, signal.SIGKILL)
    worker.process.wait(10)
    deadline = time.monotonic() + 30
    while _flow_run_process(run.id) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if reaper:
        said = await asyncio.to_thread(topology.reap)  # what `runbook up --workers` does every second
        assert said and "1 run(s)" in said[0], said
    crashed = await _wait(run.id, _final, timeout=240)
    assert crashed.state.is_crashed(), crashed.state
    if not reaper:
        assert "no heartbeat for" in (crashed.state.message or ""), crashed.state
        said = await asyncio.to_thread(topology.reap)  # the worker restarted; its run was already Crashed
        assert said and "0 run(s)" in said[0], said
    again = await _approve_until_final((await _rollback(incident_id, "topo-worker-2")).id)
    assert again.state.is_completed(), again.state
    async with open_store(store_url) as store:
        timeline = await store.timeline(incident_id)
        assert await store.active_locks("remediation:") == []
    assert not [e for e in timeline if e.kind == EventKind.REMEDIATION_ABORTED and "held by" in e.summary]
    rollbacks = [r.path.rsplit("/", 1)[-1] for r in vercel.requests if r.method == "POST" and "rollback" in r.path]
    assert len(rollbacks) == 1, rollbacks  # no second rollback (issue 21: the re-run plans 'already rolled back')
    assert any(e.kind == EventKind.NOTE and "taken over from" in e.summary and str(run.id) in e.summary
               for e in timeline), [e.summary for e in timeline]


async def _plan_hash(run: Any) -> str:
    from runbook.drill.approver import pause_form

    schema, _ = await pause_form(run)
    return str((schema.get("properties") or {}).get("plan_hash", {}).get("default", ""))


async def _runs_named(name: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        return list(await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))))


def _triggers(stack: DrillStack, incident_id: str) -> list[str]:
    """Return the dedup keys of the PagerDuty triggers sent for an incident."""
    return [str(r.body.get("dedup_key")) for r in stack.pagerduty.requests if isinstance(r.body, dict)
            and r.body.get("event_action") == "trigger" and str(r.body.get("dedup_key", "")).startswith(incident_id)]


async def test_a_prefect_server_restarted_mid_incident_loses_no_approval_and_no_escalation(
        on_server: str, server: LocalPrefectServer, topology: Topology, store_url: str, bad_deploy: DrillStack,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Prefect server process restarts (same PostgreSQL database, same port) while a rollback is suspended for
    approval and the escalation waits for an acknowledgement on a worker: the suspension survives and its resume
    finishes the rollback on a worker (once); the escalation either resumed or, its run dead, is re-run by the
    follow-up sweep, once; the acknowledgement then ends it; on-call was paged once."""
    from flows.follow_up_sweep import FollowUpSweepParams, follow_up_sweep

    incident_id = await _incident(store_url, "Checkout 500 (server restarted)")
    rollback = await _wait((await _rollback(incident_id, "topo-worker-1")).id, _paused)
    escalation = await arun_deployment("escalate-incident/escalate-incident", timeout=0,
                                       work_queue_name="topo-worker-2", flow_run_name=f"escalate {incident_id}",
                                       parameters={"params": {"incident_id": incident_id}})
    await _wait(escalation.id, _paused)
    deadline = time.monotonic() + 120
    while not _triggers(bad_deploy, incident_id):
        assert time.monotonic() < deadline, "on-call was never paged"
        await asyncio.sleep(0.2)

    await asyncio.to_thread(drain_api_workers)  # this process's events reach the server before it stops
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)  # the same port and database: `prefect server start` again
    await asyncio.to_thread(topology.reap)  # a worker that gave up on the server while it was down is restarted

    async with get_client() as client:
        assert (await client.read_flow_run(rollback.id)).state.is_paused()  # the suspension survived
    finished = await _approve_until_final(rollback.id)
    assert finished.state.is_completed(), finished.state
    assert finished.labels["prefect.worker.name"] in set(topology.worker_names), finished.labels
    rollbacks = [r for r in bad_deploy.vercel.requests if r.method == "POST" and "rollback" in r.path]
    assert len(rollbacks) == 1 and bad_deploy.healthy("bad-deploy"), rollbacks

    for key, value in {**bad_deploy.env, "RUNBOOK_STORE_URL": store_url}.items():
        monkeypatch.setenv(key, value)
    async with get_client() as client:
        alive = not _final(await client.read_flow_run(escalation.id))
    swept = await follow_up_sweep(FollowUpSweepParams(lookback_days=1))
    assert swept.escalations_rerun == ([] if alive else [incident_id]), (alive, swept)
    assert (await follow_up_sweep(FollowUpSweepParams(lookback_days=1))).escalations_rerun == []
    async with open_store(store_url) as store:
        await store.acknowledge(incident_id, "ana", via="cli")  # `runbook ack`: the escalation sees it, ends

    async def ended() -> bool:
        return any(r.state.is_completed() for r in await _runs_named(f"escalate {incident_id}"))

    deadline = time.monotonic() + 180
    while not await ended():
        runs = await _runs_named(f"escalate {incident_id}")
        assert time.monotonic() < deadline, [(r.name, r.state_name) for r in runs]
        await asyncio.sleep(0.3)
    assert len(_triggers(bad_deploy, incident_id)) == 1, _triggers(bad_deploy, incident_id)  # on-call, once
    async with open_store(store_url) as store:
        assert len(await store.timeline(incident_id, kind=EventKind.PAGED)) == 1
        assert await store.active_locks("remediation:") == []
