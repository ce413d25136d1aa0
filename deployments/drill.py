"""`runbook drill`: the whole runbook, end to end, on the local stand-in stack (the main job on a fresh machine).

For one scenario: a Prefect server (the configured one, or a temporary local one) and the drill stack start; the
fault is injected; the monitor detects it over its cycles and declares the incident; the severity's procedure runs
(page, status page, Slack, diagnosis); the remediation asks for approval — with `--approve auto` a drill approver
resumes the paused runs through Prefect's API exactly as a person does in the UI, with `--approve ui` a person does,
with `--approve slack` a drill user clicks the buttons of the Slack stand-in's messages (signed interactions to the
intake, which verifies the user against the policy's approvers and resumes the run);
the fix is applied and verified; the incident is resolved; the follow-ups are scheduled; the report is written.

The drill lives here, beside serving, because it runs flows: `runbook/` never imports `flows/`.
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

DEFAULT_SCENARIO = "database-migration"
DRILL_POLICY = """\
# The drill's policy: the runbook's numbers, with the monitor and the stability checks sped up.
monitoring: {interval_seconds: 1, breach_cycles: 2, probe_timeout_s: 10}
# Each drill is a fresh incident: a drill's fault is not the last drill's come back (no reopen on regression).
response: {ack_poll_seconds: 0.5, stable_checks: 2, stable_interval_seconds: 1, reopen_window_minutes: 0}
# Drills in a row share one store: each is a fresh incident on a reset stack, not a loop (the breaker's count).
guardrails: {max_remediations_per_hour: 1000}
"""
ONCALL = "drill-oncall"
APPROVER = "drill-approver"
SLACK_APPROVER_ID = "U0DRILLAPPROVER"
SLACK_POLICY = f"""
approvers:
  {SLACK_APPROVER_ID}: {{name: {APPROVER}, may_approve: ["*"]}}
"""
VENDOR_RECOVERY_SECONDS = 3.0
# Monitor cycles a drill allows for detection. The slowest scenario (slow-database: the query must outlast the
# probe's long-query threshold, then breach twice) needs 4 on an idle machine, but 14 beside two CPU burners
# (probes that time out while the lock holds are unmeasurable, not a breach; issue 22's note). 5 had no margin.
# A cycle costs 1-20 s, so 30 bounds a hang at about ten minutes.
DETECTION_CYCLES = 30


class DrillResult(BaseModel):
    """What one drill did, for the summary and `--json`."""

    scenario: str
    incident_id: str | None = None
    severity: str | None = None
    rule: str | None = None
    detected_after_cycles: int | None = None
    health_restored: bool = False
    resolved: bool = False
    mtta_s: float | None = None
    mttr_s: float | None = None
    statuspage_statuses: list[str] = Field(default_factory=list)
    pages_sent: int = 0
    slack_messages: int = 0
    approvals: list[dict[str, Any]] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    finding: str | None = None
    remediation: str | None = None
    follow_ups: list[dict[str, Any]] = Field(default_factory=list)
    report_path: str | None = None
    duration_s: float = 0.0
    workers: int = Field(0, description="0: the flows ran in the drill's process; N: on N Prefect workers")
    flow_runs: list[dict[str, Any]] = Field(
        default_factory=list, description="with --workers: every flow run of the drill and the worker that ran it")
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.health_restored and bool(self.report_path) and Path(str(self.report_path)).is_file()


_BEGAN = time.monotonic()


def progress(message: str) -> None:
    """One line of progress on stderr (stdout stays the summary / the JSON): elapsed seconds and the stage."""
    print(f"[{time.monotonic() - _BEGAN:5.1f}s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def prefect_server() -> Iterator[str]:
    """Use the configured Prefect API, or run a temporary local Prefect server on an embedded PostgreSQL.

    Not SQLite: under the drill's concurrent runs it answered `database is locked` (3-7 times per scenario, 2-15 s
    of client back-off each) and printed the tracebacks into the on-call engineer's terminal.
    """
    import tempfile

    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from deployments.local_server import drain_api_workers, new_api_auth_string, prefect_on_postgres

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if PREFECT_API_URL.value():
        yield str(PREFECT_API_URL.value())
        return
    home = Path(tempfile.mkdtemp(prefix="runbook-drill-prefect-"))
    progress("starting a temporary Prefect server on an embedded PostgreSQL (about 15 s)…")
    try:
        # No scheduler: the drill registers the deployments (schedules included) only to schedule follow-ups.
        # API authentication as `runbook up`'s (a key of its own, in memory only: the server lives for this drill).
        with prefect_on_postgres(home, server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
                                 auth_string=new_api_auth_string()) as server:
            progress(f"Prefect server ready at {server.url} ({server.startup_seconds:.0f} s)")
            with temporary_settings(updates={**server.client_settings(), PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                try:
                    yield server.api_url
                finally:
                    drain_api_workers()
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


async def register_deployments() -> None:
    """Register the deployments of prefect.yaml, the one list of them (follow-ups are scheduled against them)."""
    from deployments.serve import load_deployments

    project_file = Path(__file__).resolve().parent.parent / "prefect.yaml"
    # Built in a worker thread: Prefect's sync/async dispatch returns coroutines inside a running loop.
    deployments = await asyncio.to_thread(load_deployments, project_file)
    limit = asyncio.Semaphore(6)  # a few at a time: one by one took 18 s on a loaded machine

    async def apply(deployment: Any) -> None:
        async with limit:
            await deployment.aapply()

    await asyncio.gather(*(apply(d) for d in deployments))


async def auto_approver(incident_ids: set[str], stop: asyncio.Event, answered: list[dict[str, Any]],
                        pagerduty: Any = None) -> None:
    """Answer every pause of this drill's runs as a person would: acknowledge (in PagerDuty when paged there, as
    on-call does: a V3 webhook to the stack's intake then stops the escalation), approve the plan shown."""
    from runbook.drill.approver import pause_form, paused_runs, resume
    from runbook.drill.pagerduty import acknowledge_as_oncall

    seen: set[Any] = set()
    pressed_at: dict[str, float] = {}  # incident → when on-call pressed Acknowledge in PagerDuty
    waiting_since: dict[Any, float] = {}  # escalation run → when its pause was first seen without a page
    while not stop.is_set():
        runs = await paused_runs()
        # on-call acknowledges first, then looks at the plan, as a person does: a plan of an incident whose
        # escalation still waits for its acknowledgement is answered in a later round
        unacknowledged = {i for i in incident_ids for r in runs if r.name == f"escalate {i}" and r.id not in seen}
        unacknowledged |= await _ack_in_transit(pressed_at)
        for run in sorted(runs, key=lambda r: not (r.name or "").startswith("escalate ")):
            if run.id in seen or not any(i and i in (run.name or "") for i in incident_ids):
                continue
            if not (run.name or "").startswith("escalate ") and any(i in (run.name or "") for i in unacknowledged):
                continue
            try:
                schema, _ = await pause_form(run)
            except Exception:  # the pause is visible before its form is saved: look again next round
                continue
            props = schema.get("properties") or {}
            defaults = {k: v["default"] for k, v in props.items() if "default" in v}
            if "decision" in props:
                answer = {"decision": "approve", "approver": APPROVER, "reason": "game-day drill: approved as shown",
                          "plan_hash": defaults.get("plan_hash", "")}
            elif "by" in props:
                paged = next((i for i in incident_ids if (run.name or "") == f"escalate {i}"), None)
                if pagerduty is not None and paged and (pressed := acknowledge_as_oncall(pagerduty, paged)):
                    seen.add(run.id)
                    pressed_at[paged] = time.monotonic()
                    answered.append({"run": run.name, "by": pressed["last_status_change_by"]["summary"],
                                     "via": "pagerduty"})
                    continue
                if pagerduty is not None and paged and await _page_coming(paged, waiting_since.setdefault(
                        run.id, time.monotonic())):
                    continue  # a P0/P1 pages on-call at once: acknowledge the page when it lands
                answer = {"by": ONCALL, "note": "game-day drill"}  # not paged (P2/P3 page later): the UI
            else:
                continue
            seen.add(run.id)
            try:
                await resume(run, answer)
                answered.append({"run": run.name, **{k: v for k, v in answer.items() if k != "reason"}})
            except Exception as exc:  # resumed by someone else meanwhile
                answered.append({"run": run.name, "error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.3)


ACK_TRANSIT_S = 60.0  # at most this long the plan waits for a pressed acknowledgement to reach the store


async def _ack_in_transit(pressed_at: dict[str, float]) -> set[str]:
    """Return the incidents acknowledged in PagerDuty whose acknowledgement (a V3 webhook to the intake) has not
    reached the store yet; one acknowledged there, or pressed longer than ACK_TRANSIT_S ago, is dropped."""
    from runbook.store import open_store

    waiting = set()
    async with open_store() as store:
        for incident_id, at in list(pressed_at.items()):
            if (await store.get(incident_id)).acknowledged_at is None and time.monotonic() - at < ACK_TRANSIT_S:
                waiting.add(incident_id)
            else:
                del pressed_at[incident_id]
    return waiting


async def _page_coming(incident_id: str, since: float) -> bool:
    """Whether on-call's page is still to land in PagerDuty: an urgent incident (P0/P1 page at once) whose
    escalation has waited less than ACK_TRANSIT_S; a P2/P3 pages later, so on-call answers in the UI."""
    from runbook.models import Severity
    from runbook.store import open_store

    async with open_store() as store:
        severity = (await store.get(incident_id)).severity
    return severity in {Severity.P0, Severity.P1} and time.monotonic() - since < ACK_TRANSIT_S


@contextlib.asynccontextmanager
async def background(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """Run a coroutine beside the block; cancel it after."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def with_drill_approver(user_policy: Path, out: Path) -> Path:
    """Write `user_policy` with the drill's Slack approver added to its approvers to `out`; return `out`."""
    import yaml

    from runbook.policy import Approver, load_policy

    base = load_policy(user_policy)
    approvers = {**base.approvers, SLACK_APPROVER_ID: Approver(name=APPROVER, may_approve=["*"])}
    out.write_text(yaml.safe_dump(base.model_copy(update={"approvers": approvers}).model_dump(mode="json")))
    return out

async def run_one(stack: Any, scenario: str, approve: str, state_root: Path,
                  inject_params: dict[str, Any] | None = None, *, workers: int = 0,
                  store_url: str | None = None) -> DrillResult:
    """Run one scenario end to end against a running stack; return what happened.

    workers=N: every flow run (config snapshot, monitor cycles, declare, respond with its escalation, diagnosis,
    remediation and verification) executes in one of N `prefect worker start` processes on prefect.yaml's
    deployments (deployed to the pool beforehand), sharing the store at store_url; this process only watches,
    approves as a person would, and collects.
    """
    from flows.monitor import MonitorParams, monitor
    from flows.respond import respond_inline
    from runbook.store import open_store

    started = time.monotonic()
    result = DrillResult(scenario=scenario)
    state = state_root / f"{datetime.now():%Y%m%d-%H%M%S}-{scenario}"
    state.mkdir(parents=True, exist_ok=True)
    policy = state / "drill-policy.yaml"
    policy.write_text(DRILL_POLICY + (SLACK_POLICY if approve == "slack" else ""))
    stack.reset()
    saved = {k: v for k, v in os.environ.items() if k.startswith("RUNBOOK_")}
    store_url = store_url or shared_store_url(state_root, saved)
    os.environ.update(stack.env)
    if approve == "slack":  # the Slack app: buttons on messages, signed clicks back to the intake
        os.environ.update(stack.slack.app_env())
    os.environ["RUNBOOK_STATE_DIR"] = str(state)  # this drill's reports, backups and snapshots
    os.environ["RUNBOOK_STORE_URL"] = store_url  # its incident in the one store every command reads (drill=True)
    # The monitor's breach counters and baselines are the drill's own: each drill detects from a clean slate.
    os.environ["RUNBOOK_MONITOR_STORE_URL"] = f"sqlite+aiosqlite:///{(state / 'monitor.db').resolve()}"
    if saved.get("RUNBOOK_POLICY_FILE") and approve == "slack":
        # A person's own policy is the drill's (their chain, their numbers), plus the drill's Slack user among
        # its approvers: otherwise the drill's clicks are refused as an unknown user and the drill waits in vain.
        os.environ["RUNBOOK_POLICY_FILE"] = str(with_drill_approver(Path(saved["RUNBOOK_POLICY_FILE"]), policy))
    os.environ.setdefault("RUNBOOK_POLICY_FILE", str(policy))
    result.workers = workers
    topology = None
    try:
        if workers:
            from prefect.settings import PREFECT_API_URL

            from deployments.workers import Topology

            progress(f"drill {scenario}: starting {workers} Prefect worker(s)…")
            topology = Topology(str(PREFECT_API_URL.value()), workers=workers, state_dir=state, deploy=False)
            await asyncio.to_thread(topology.start)
            return await _run_on_workers(stack, scenario, approve, inject_params, result)
        with contextlib.suppress(ImportError):  # config rollbacks restore from the last scheduled snapshot
            from flows.config_snapshot import ConfigSnapshotParams, config_snapshot

            await config_snapshot(ConfigSnapshotParams())
        os.environ.update(stack.inject(scenario, **(inject_params or {})) or {})
        for cycle in range(1, DETECTION_CYCLES + 1):
            seen = await monitor(MonitorParams(respond="none", cycles=1, interval_seconds=0))
            if seen.declared:
                result.detected_after_cycles = cycle
                result.incident_id, result.rule = seen.declared[0].incident_id, seen.declared[0].rule
                break
            await asyncio.sleep(1)
        if result.incident_id is None:
            result.error = f"the monitor did not detect the fault within {DETECTION_CYCLES} cycles"
            return result
        async with open_store() as store:
            incident = await store.get(result.incident_id)
        result.severity = incident.severity.value
        progress(f"drill {scenario}: {incident.severity} {incident.id} declared after {result.detected_after_cycles} "
                 "cycle(s); responding (page, status page, diagnosis, remediation, verification)…")
        answered: list[dict[str, Any]] = []
        stop = asyncio.Event()
        approver = _approver(stack, approve, incident.id, stop, answered)
        recovery = _vendor_recovery(stack, scenario)
        async with slack_intake(stack, approve == "slack"), background(approver), background(recovery):
            outcome = await respond_inline(incident)
            stop.set()
        result.finding, result.remediation, result.resolved = outcome.finding, outcome.remediation, outcome.resolved
        await _collect(stack, result)
    except Exception as exc:  # the drill reports what broke instead of a traceback at 3 a.m.
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if topology is not None:
            await asyncio.to_thread(topology.stop)
        if result.incident_id and not result.resolved:
            await _close_unresolved(result)
        result.health_restored = bool(stack.healthy(scenario))
        result.duration_s = round(time.monotonic() - started, 1)
        for key in [k for k in os.environ if k.startswith("RUNBOOK_")]:  # the next scenario starts clean
            del os.environ[key]
        os.environ.update(saved)
    return result


def _approver(stack: Any, approve: str, incident_id: str, stop: asyncio.Event, answered: list[dict[str, Any]]) -> Any:
    """Return the coroutine that answers the drill's pauses: the drill approver (auto), the drill's Slack user
    clicking the buttons (slack), or nobody (ui: a person, told so here)."""
    if approve == "slack":
        from runbook.drill.approver import slack_approver

        return slack_approver(stack.slack, SLACK_APPROVER_ID, stop, answered, {incident_id})
    if approve == "ui":
        print(f"waiting for you in the Prefect UI: acknowledge and approve the runs of {incident_id}",
              file=sys.stderr, flush=True)
        return asyncio.sleep(0)
    return auto_approver({incident_id}, stop, answered, stack.pagerduty)


async def _deployment_run(name: str, params: dict[str, Any], *, wait: bool = True, timeout: float = 900) -> Any:
    """Start a deployment run (a worker executes it); with wait, return it once it is final."""
    from prefect.deployments.flow_runs import arun_deployment

    run = await arun_deployment(name, parameters={"params": params}, timeout=0, as_subflow=False)
    return await _wait_final(run.id, timeout) if wait else run


async def _wait_final(run_id: Any, timeout: float = 900) -> Any:
    """Wait until a flow run is final (Completed, Failed, Crashed, Cancelled); return it."""
    from prefect.client.orchestration import get_client

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            if loop.time() > deadline:
                raise TimeoutError(f"flow run {run.name} not finished after {timeout:.0f} s ({run.state_name})")
            await asyncio.sleep(0.3)


async def _run_by_name(name: str, timeout: float = 120) -> Any:
    """Wait until a flow run of this name exists; return it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with get_client() as client:
        while not (found := await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])), limit=1)):
            if loop.time() > deadline:
                raise TimeoutError(f"no flow run {name!r} after {timeout:.0f} s")
            await asyncio.sleep(0.3)
    return found[0]


async def _run_on_workers(stack: Any, scenario: str, approve: str, inject_params: dict[str, Any] | None,
                          result: DrillResult) -> DrillResult:
    """The drill with every flow run on the workers: deployment runs, watched from here through the API."""
    from deployments.workers import worker_of_runs
    from runbook.models import EventKind, Status, utcnow
    from runbook.store import open_store

    began = utcnow()
    run_ids: list[Any] = [(await _deployment_run("config-snapshot/config-snapshot", {})).id]
    os.environ.update(stack.inject(scenario, **(inject_params or {})) or {})
    for cycle in range(1, DETECTION_CYCLES + 1):
        # One cycle per run, as the every-minute schedule does; a breach declares through declare-incident, which
        # starts respond-<severity> as its own deployment run (also on a worker).
        run = await _deployment_run("monitor/monitor", {"respond": "deployment", "cycles": 1, "interval_seconds": 0})
        run_ids.append(run.id)
        async with open_store() as store:
            declared = await store.list(open_only=True, since=began)
        if declared:
            result.detected_after_cycles, incident = cycle, declared[-1]
            result.incident_id, result.severity = incident.id, incident.severity.value
            break
        await asyncio.sleep(1)
    if result.incident_id is None:
        result.error = f"the monitor did not detect the fault within {DETECTION_CYCLES} cycles"
        return result
    progress(f"drill {scenario}: {incident.severity} {incident.id} declared after {result.detected_after_cycles} "
             "cycle(s) on a worker; responding on the workers…")
    answered: list[dict[str, Any]] = []
    stop = asyncio.Event()
    approver = _approver(stack, approve, incident.id, stop, answered)
    # --approve slack: the clicks go to the intake served here, which resumes the suspended run on the server;
    # a worker picks the resumed run up (the workers have the Slack app's settings: they post the buttons).
    async with slack_intake(stack, approve == "slack"), background(approver), \
            background(_vendor_recovery(stack, scenario)):
        respond = await _run_by_name(f"{declare_target(incident.severity.value)} {incident.id}")
        respond = await _wait_final(respond.id)
        stop.set()
    run_ids.append(respond.id)
    async with open_store() as store:
        now = await store.get(incident.id)
        timeline = await store.timeline(incident.id)
    result.resolved = now.status == Status.RESOLVED
    alert = next((e.details.get("alert") for e in timeline if e.kind == EventKind.DECLARED), None) or {}
    result.rule = alert.get("rule") if isinstance(alert, dict) else None
    diagnoses = [e for e in timeline if e.kind == EventKind.DIAGNOSIS]
    result.finding = diagnoses[-1].details.get("finding") if diagnoses else None
    started = [e for e in timeline if e.kind == EventKind.REMEDIATION_STARTED]
    if started:
        action = started[-1].details.get("action")
        applied = any(e.kind == EventKind.REMEDIATION_APPLIED for e in timeline)
        result.remediation = f"{action}: {'applied' if applied else 'not applied'}"
    if not respond.state.is_completed():
        result.error = f"{respond.name} ended {respond.state_name}"
    await _collect(stack, result)
    run_ids += [e.flow_run_id for e in timeline if e.flow_run_id]
    result.flow_runs = sorted((await worker_of_runs(run_ids)).values(), key=lambda r: str(r["name"]))
    return result


def declare_target(severity: str) -> str:
    """Return the respond deployment's flow name of a severity (its runs are named '<flow> <incident id>')."""
    return {"P0": "respond-p0", "P1": "respond-p1"}.get(severity, "respond-p2-p3")


def shared_store_url(state_root: Path, environ: dict[str, str]) -> str:
    """Return the store drills write into: RUNBOOK_STORE_URL, else the SQLite file of the state dir above drills/.

    That is the store `runbook incidents list --include-drills`, `runbook report ID` and `metrics --include-drills`
    read with the same RUNBOOK_STATE_DIR; each drill's files (reports, backups) stay in its own directory.
    """
    if environ.get("RUNBOOK_STORE_URL"):
        return environ["RUNBOOK_STORE_URL"]
    return f"sqlite+aiosqlite:///{(state_root.parent / 'incidents.db').resolve()}"


async def _close_unresolved(result: DrillResult) -> None:
    """Close a drill incident the drill did not resolve, so that the next drill's alert is not attached to it."""
    from runbook.errors import RunbookError
    from runbook.models import Status
    from runbook.store import open_store

    assert result.incident_id
    with contextlib.suppress(RunbookError, OSError):
        async with open_store() as store:
            if (await store.get(result.incident_id)).status.is_open:
                await store.transition(result.incident_id, Status.RESOLVED, actor="drill",
                                       summary=f"Drill over without resolution ({result.error or 'still open'}); "
                                       "closed by the drill", details={"drill_closed": True})


@contextlib.asynccontextmanager
async def slack_intake(stack: Any, enabled: bool) -> AsyncIterator[None]:
    """Serve the intake (POST /slack/interactions) on a free 127.0.0.1 port as the Slack app's request URL."""
    if not enabled:
        yield
        return
    import uvicorn

    from deployments.local_server import free_port
    from runbook.intake import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        stack.slack.interaction_url = f"http://127.0.0.1:{port}/slack/interactions"
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task


async def _vendor_recovery(stack: Any, scenario: str) -> None:
    """Play the third party: an outage of a vendor ends on its own after a while."""
    if scenario == "third-party-outage":
        await asyncio.sleep(VENDOR_RECOVERY_SECONDS)
        stack.repair(scenario)


async def _collect(stack: Any, result: DrillResult) -> None:
    from runbook.models import EventKind
    from runbook.store import open_store

    assert result.incident_id
    async with open_store() as store:
        incident = await store.get(result.incident_id)
        timeline = await store.timeline(result.incident_id)
        approvals = await store.approvals(result.incident_id)
        follow_ups = await store.follow_ups(result.incident_id)
    result.mtta_s = incident.mtta.total_seconds() if incident.mtta else None
    result.mttr_s = incident.mttr.total_seconds() if incident.mttr else None
    result.statuspage_statuses = [
        r.body["incident"]["status"] for r in stack.statuspage.requests
        if r.method in {"POST", "PATCH"} and "/incidents" in r.path and isinstance(r.body, dict)
        and (r.status or 0) < 300 and r.body.get("incident", {}).get("status")
    ]
    result.pages_sent = sum(1 for r in stack.pagerduty.requests if isinstance(r.body, dict)
                            and r.body.get("event_action") == "trigger" and (r.status or 0) < 300)
    result.slack_messages = sum(1 for r in stack.slack.requests if (r.status or 0) < 300)
    result.approvals = [{"action": a.action, "decision": a.decision, "approver": a.approver,
                         "plan_hash": a.plan_hash, "via": a.via, "identity": a.identity} for a in approvals]
    result.actions = [f"{e.at:%H:%M:%S} {e.kind}: {e.summary}" for e in timeline
                      if e.kind in {EventKind.PAGED, EventKind.ESCALATED, EventKind.STATUS_PAGE,
                                    EventKind.REMEDIATION_APPLIED, EventKind.VERIFICATION, EventKind.APPROVAL,
                                    EventKind.STATUS_CHANGED, EventKind.ACKNOWLEDGED}]
    deployments = {"review-24h": "post-incident-review/post-incident-review",
                   "follow-up-1w": "post-incident-follow-up/post-incident-follow-up"}
    scheduled = {e.details.get("follow_up"): e.details.get("scheduled_time")
                 for e in timeline if e.kind == EventKind.FOLLOW_UP_SCHEDULED}
    result.follow_ups = [{"kind": f.kind.value, "deployment": deployments.get(f.kind.value),
                          "scheduled_time": scheduled.get(f.kind.value) or f.due.isoformat(),
                          "flow_run_id": f.flow_run_id} for f in follow_ups]
    reports = [e.details.get("path") for e in timeline if e.kind == EventKind.REPORT_WRITTEN]
    result.report_path = str(Path(reports[-1]).resolve()) if reports and reports[-1] else None


async def run_drills(scenarios: list[str], approve: str, state_root: Path, workers: int = 0) -> list[DrillResult]:
    """Start Prefect and the stack once, register the deployments, and run each scenario."""
    from runbook.drill import DrillStack

    results = []
    progress("starting the drill stack (PostgreSQL, the app, the vendors' stand-ins)…")
    with DrillStack() as stack, contextlib.ExitStack() as topology:
        store_url = None
        if workers:
            from deployments.workers import POOL, deploy_to_pool, shared_store
            from runbook.settings import redacted_url as redacted

            progress(f"deploying the deployments of prefect.yaml to the process pool {POOL}…")
            await deploy_to_pool(Path(__file__).resolve().parent.parent / "prefect.yaml")
            # One store for every worker: RUNBOOK_STORE_URL, else an embedded PostgreSQL removed at the end.
            store_url = topology.enter_context(shared_store())
            progress(f"incident store shared by the workers: {redacted(store_url)}")
        else:
            progress("registering the deployments of prefect.yaml…")
            await register_deployments()
        for scenario in scenarios:
            progress(f"drill {scenario}: injecting the fault; the monitor is watching")
            results.append(await run_one(stack, scenario, approve, state_root, workers=workers,
                                         store_url=store_url))
            last = results[-1]
            progress(f"drill {scenario}: {'passed' if last.ok else 'FAILED'} in {last.duration_s:.0f} s")
    return results


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def print_summary(result: DrillResult) -> None:
    """Print one drill's summary for a person."""
    mark = "PASS" if result.ok else "FAIL"
    print(f"\n[{mark}] drill {result.scenario}: incident {result.incident_id} ({result.severity}, rule {result.rule})")
    print(f"  detected after {result.detected_after_cycles} monitor cycle(s); MTTA {_fmt_s(result.mtta_s)}, "
          f"MTTR {_fmt_s(result.mttr_s)}; health restored: {result.health_restored}; took {result.duration_s}s")
    print(f"  finding: {result.finding}")
    print(f"  remediation: {result.remediation}; status page: {' → '.join(result.statuspage_statuses) or '-'}; "
          f"pages: {result.pages_sent}; Slack messages: {result.slack_messages}")
    for a in result.approvals:
        print(f"  approval: {a['action']} {a['decision']} by {a['approver']} via {a.get('via', '?')} "
              f"(plan {a['plan_hash']})")
    for f in result.follow_ups:
        print(f"  follow-up: {f['deployment']} at {f['scheduled_time']}")
    if result.workers:
        ran = sorted({str(r.get("worker")) for r in result.flow_runs})
        print(f"  workers: {len(result.flow_runs)} flow run(s) on {result.workers} worker(s): {', '.join(ran)}")
    print(f"  report: {result.report_path}")
    if result.error:
        print(f"  error: {result.error}")


def print_table(results: list[DrillResult]) -> None:
    """Print the `--all` table."""
    print(f"\n{'SCENARIO':<22} {'RESULT':<6} {'SEV':<4} {'RULE':<26} {'MTTA':>7} {'MTTR':>7} {'TOOK':>7}  REMEDIATION")
    for r in results:
        print(f"{r.scenario:<22} {'PASS' if r.ok else 'FAIL':<6} {r.severity or '-':<4} {r.rule or '-':<26} "
              f"{_fmt_s(r.mtta_s):>7} {_fmt_s(r.mttr_s):>7} {r.duration_s:>6.1f}s  {r.remediation or '-'}")


class _OneLine:
    """A console-handler filter: a record with a traceback is shown as its one line; the traceback goes to the log."""

    def __init__(self, handler: Any, log_file: Path) -> None:
        self.handler, self.log_file = handler, log_file

    def filter(self, record: Any) -> bool:
        import logging

        message = record.getMessage()
        if record.name == "prefect.task_runs" and message.startswith(("Finished in state", "Task run exceeded")):
            return False  # the engine repeats the failure it has just logged: one line per failure is enough
        if not (record.exc_info or record.exc_text):
            return True
        line = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        line.msg, line.args = f"{record.getMessage()} (traceback in {self.log_file})", None
        self.handler.handle(line)
        return False


def quiet_console(log_file: Path | None = None) -> None:
    """Show only warnings of Prefect's run logs on the terminal, one line each (the runs still log everything to
    the API); with log_file, every log line at INFO and above, tracebacks included, goes to that file too."""
    import logging

    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import APILogHandler

    if not logging.getLogger("prefect").handlers:
        setup_logging()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, APILogHandler):
                handler.setLevel(logging.WARNING)
                if log_file is not None:
                    handler.addFilter(_OneLine(handler, log_file))
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file)
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s"))
        for name in ("prefect", "runbook", "flows", "tasks"):
            logging.getLogger(name).addHandler(to_file)


def cmd_drill(args: argparse.Namespace) -> int:
    """Run `runbook drill`."""
    from runbook.drill.cli import format_scenarios
    from runbook.drill.scenarios import SCENARIOS

    if args.list:
        print(format_scenarios())
        return 0
    scenarios = sorted(SCENARIOS) if args.all else [args.scenario or DEFAULT_SCENARIO]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"runbook drill: unknown scenario {unknown[0]!r}; `runbook drill --list` names them", file=sys.stderr)
        return 2
    if args.approve == "ui" and not os.environ.get("PREFECT_API_URL"):
        print("runbook drill --approve ui needs a Prefect UI: start `runbook up` and set PREFECT_API_URL to the "
              "address it prints", file=sys.stderr)
        return 2
    state_root = Path(args.state_dir or os.environ.get("RUNBOOK_STATE_DIR") or ".runbook") / "drills"
    log_file = (state_root / f"drill-{datetime.now():%Y%m%d-%H%M%S}.log").resolve()
    if not args.verbose:
        quiet_console(log_file)
        progress(f"details and tracebacks: {log_file}")
    if args.workers < 0:
        print(f"runbook drill: --workers must be 0 or more (got {args.workers})", file=sys.stderr)
        return 2
    with prefect_server():
        results = asyncio.run(run_drills(scenarios, args.approve, state_root, args.workers))
    if args.json:
        payload = [r.model_dump(mode="json") | {"ok": r.ok} for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    else:
        for r in results:
            print_summary(r)
        if len(results) > 1:
            print_table(results)
    return 0 if all(r.ok for r in results) else 1


def register(sub: Any) -> None:
    """Add `runbook drill`."""
    p = sub.add_parser("drill", help="run a game-day drill end to end on the local stand-in stack")
    p.add_argument("scenario", nargs="?", help=f"scenario to drill (default {DEFAULT_SCENARIO})")
    p.add_argument("--all", action="store_true", help="drill every scenario and print a table")
    p.add_argument("--list", action="store_true", help="list the scenarios")
    p.add_argument("--approve", choices=["auto", "ui", "slack"], default="auto",
                   help="auto: a drill approver answers through Prefect's API; ui: wait for a person in the UI; "
                        "slack: a drill user clicks Approve / Acknowledge in Slack (signed, through the intake)")
    p.add_argument("--json", action="store_true", help="print one JSON object (an array with --all)")
    p.add_argument("--state-dir", help="where reports and the drill's store go (default .runbook/drills)")
    p.add_argument("--verbose", action="store_true", help="show every flow and task log line on the terminal")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="run every flow run on N Prefect workers of the process pool (prefect.yaml deployed to it, "
                        "the store on PostgreSQL shared by them); --json names the worker of each flow run")
    p.set_defaults(func=cmd_drill)
