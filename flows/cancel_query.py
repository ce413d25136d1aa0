"""Cancel a runaway query (runbook "Performance Issues" / "Database Issues"): terminate the session that blocks
the app or runs away, with pg_terminate_backend.

Plan: the long-running queries (pid, duration, query, blocking pids) → the sessions to terminate: those blocking
others (root blockers), and long-running ones that wait on nobody. Sessions waiting on a lock are left alone
(terminating their blocker frees them); the runbook's own sessions are never targets. A pid is terminated only
if it still runs the planned query (same query_start). Verify: the runbook's performance check and the pids gone.
"""

import asyncio
from datetime import datetime
from typing import Any

from prefect import flow
from pydantic import Field

from flows._remediation import (
    Checked,
    Plan,
    Remediation,
    RemediationParams,
    RemediationResult,
    run_name,
    run_remediation,
    verify_scenario,
)
from runbook.models import Approval
from runbook.settings import get_settings
from tasks.supabase import list_long_queries, read_query_starts, terminate_backend

ACTION = "cancel-query"
OWN_APPLICATION = "permit-school-runbook"


class CancelQueryParams(RemediationParams):
    """Terminate runaway or blocking database sessions (a form in the Prefect UI)."""

    min_duration_seconds: float = Field(5, ge=0.5, le=86400,
                                        description="Only queries running at least this long are considered")
    pids: list[int] = Field(default_factory=list, max_length=50,
                            description="Only these backend pids (empty: every runaway or blocking session)")


async def plan_cancel(params: CancelQueryParams) -> Plan:
    """Choose the sessions to terminate from pg_stat_activity."""
    environment = get_settings().environment
    # Two samples a moment apart: a runaway persists (same pid, same query_start); a query that was merely
    # waiting and just got its lock finishes in between and is not a target.
    samples = []
    for n in range(2):
        if n:
            await asyncio.sleep(0.5)
        long = [q for q in await list_long_queries(params.min_duration_seconds)
                if q.application_name != OWN_APPLICATION]
        blockers = {pid for q in long for pid in q.blocking_pids}
        candidates = blockers | {q.pid for q in long if not q.blocking_pids}
        if params.pids:
            candidates &= set(params.pids)
        samples.append((candidates, await read_query_starts(sorted(candidates)) if candidates else {}))
    (first, first_starts), (second, second_starts) = samples
    persistent = {p for p in set(first_starts) & set(second_starts) if first_starts[p] == second_starts[p]}
    targets = sorted(p for p in persistent if p in first | second)
    starts = second_starts
    by_pid = {q.pid: q for q in long}
    shown = {p: (when.isoformat() if (when := starts.get(p)) else None) for p in targets}
    state: dict[str, Any] = {"targets": {str(p): shown[p] for p in targets}}
    if not targets:
        return Plan(action=ACTION, environment=environment, noop=True, state=state,
                    summary=f"no runaway or blocking query over {params.min_duration_seconds:g} s")
    steps = []  # hashed: no durations here (they grow every second), start times instead
    for pid in targets:
        q = by_pid.get(pid)
        waiting = [w.pid for w in long if pid in w.blocking_pids]
        since = f"{at[11:19]} UTC" if (at := shown[pid]) else "unknown"
        what = (f"running since {since}: {q.query[:120]!r}" if q else f"holding locks (since {since})")
        blocks = f"; blocks {', '.join(map(str, waiting))}" if waiting else ""
        app = f" [{q.application_name}]" if q and q.application_name else ""
        steps.append(f"pg_terminate_backend({pid}){app} — {what}{blocks}")
    steps.append("Verify /api/health answers within the runbook's response-time target")
    return Plan(action=ACTION, environment=environment, state=state, steps=steps,
                warnings=["The terminated sessions' open transactions roll back"],
                summary=f"terminate {len(targets)} session(s): {', '.join(map(str, targets))}")


@flow(name=ACTION, flow_run_name=run_name(ACTION))
async def cancel_query(params: CancelQueryParams) -> RemediationResult:
    """Terminate runaway/blocking sessions: plan from pg_stat_activity, approve, terminate, verify performance."""

    async def plan() -> Plan:
        return await plan_cancel(params)

    async def act(plan: Plan, approval: Approval) -> dict[str, Any]:
        results = []
        for pid, start in plan.state["targets"].items():
            started = datetime.fromisoformat(start) if start else None
            results.append(await terminate_backend(int(pid), started))
        return {"terminated": [r.pid for r in results if r.terminated],
                "results": [r.model_dump() for r in results]}

    async def verify(plan: Plan, applied: dict[str, Any]) -> Checked:
        pids = [int(p) for p in plan.state["targets"]]
        for _ in range(50):  # a terminated backend leaves pg_stat_activity a moment later
            still = sorted(await read_query_starts(pids))
            if not still:
                break
            await asyncio.sleep(0.1)
        extra = {"sessions_gone": {"ok": not still, "still_present": still}}
        return await verify_scenario("performance", params.incident_id, params.verify_within_seconds, extra)

    return await run_remediation(Remediation(ACTION, plan, act, verify), params)
