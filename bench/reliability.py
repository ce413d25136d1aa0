"""The fault matrix: `python -m bench.reliability [--deps vercel,pagerduty] [--faults error,hang] [--when start]`.

Issue 21 asks that every dependency x {429 with the vendor's throttling, 5xx, hang, refused} end within a bound in a
clear state (resolved, or open with the reason on the timeline and a person paged), with 0 lost pages and 0
duplicates. Each cell is one end-to-end drill (`deployments.drill.run_one`: the monitor detects, the response
pages, announces, diagnoses, remediates with the drill's approver, verifies) of the scenario whose response leans on
that dependency, with the fault held on that stand-in for the whole cell: from the scenario's start (`--when
start`, the default) or from the moment the incident is declared (`--when declared`). One drill stack and one
temporary Prefect server (embedded PostgreSQL) serve every cell; the stack is reset between cells.

Per cell it records:
- within bound: the drill returned before `--cell-timeout`;
- paged: PagerDuty's stand-in accepted a trigger for the incident, or the page is still pending in the store
  (durable, retried by the response and the sweep): a page neither sent nor pending is LOST;
- duplicates: incidents beyond the first declared for the one fault (a trigger re-sent with the same dedup key is
  the same alert in PagerDuty: nobody is paged twice);
- clear state: resolved, or left open with the failing dependency named on the timeline and a page sent or pending;
- what the drill found, did and said went wrong.
Prints a Markdown table (for RELIABILITY.md) and, with `--json`, the cells. Exit code 1 when a cell is not clear,
lost a page or paged twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The scenario whose response leans on each dependency (P0 scenarios: on-call is paged at once).
DEPENDENCIES: dict[str, str] = {
    "supabase": "database-migration",  # the REST API: probes, verification counts
    "supabase_api": "database-migration",  # the Management API: migration list, project health
    "vercel": "bad-deploy",  # deployments, the rollback
    "stripe": "stripe-webhook-secret",  # webhook endpoints, events, resend
    "sentry": "bad-deploy",  # error counts and series
    "statuspage": "bad-deploy",  # the public status page
    "pagerduty": "bad-deploy",  # the page itself
    "slack": "bad-deploy",  # #incidents and the approvals' messages
    "openai": "database-migration",  # a third party failing during our own outage must not mask it
    "status_pages": "bad-deploy",  # the vendors' status pages, read by the diagnosis
}
FAULTS = ("rate_limit", "error", "hang", "refuse")


@dataclass
class Cell:
    dependency: str
    fault: str
    scenario: str
    when: str
    started: float = 0.0
    within_bound: bool = False
    duration_s: float = 0.0
    incident_id: str | None = None
    detected: bool = False
    resolved: bool = False
    triggers: int = 0
    duplicates: int = 0
    pending: int = 0
    closed_unsent: int = 0  # pending pages closed, not sent: the incident was resolved (or acknowledged) first
    named_on_timeline: bool = False
    finding: str | None = None
    remediation: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def page_lost(self) -> bool:
        """No page sent, none pending, and none closed because the incident was resolved or acknowledged first."""
        return self.detected and self.triggers == 0 and self.pending == 0 and self.closed_unsent == 0

    @property
    def clear(self) -> bool:
        if not self.within_bound or not self.detected:
            return False
        return self.resolved or (self.named_on_timeline and (self.triggers > 0 or self.pending > 0))


def make_fault(kind: str, hang_s: float) -> Any:
    """Return the stand-in fault of that kind, held until cleared."""
    from runbook.drill import Fault

    if kind == "rate_limit":
        return Fault.rate_limit(2, times=None)
    if kind == "error":
        return Fault.error(503, times=None)
    if kind == "hang":
        return Fault.hang(hang_s, times=None)
    if kind == "refuse":
        return Fault.refuse()
    raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")


@contextlib.contextmanager
def fault_from_start(stack: Any, standin: Any, fault: Any) -> Iterator[None]:
    """Hold `fault` on the stand-in from the scenario's injection on (run_one resets the stack first)."""
    original = stack.inject

    def inject(name: str, **params: Any) -> Any:
        changes = original(name, **params)
        standin.inject(fault)
        return changes

    stack.inject = inject
    try:
        yield
    finally:
        stack.inject = original


async def fault_on_declaration(standin: Any, fault: Any, started: float, stop: asyncio.Event) -> None:
    """Inject the fault once the drill's incident is in the store (declared after `started`)."""
    from runbook.store import open_store

    while not stop.is_set():
        with contextlib.suppress(Exception):
            async with open_store() as store:
                if any(i.created_at.timestamp() >= started for i in await store.list()):
                    standin.inject(fault)
                    return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def judge(stack: Any, cell: Cell) -> None:
    """Fill in the cell from the PagerDuty stand-in's accepted triggers and the incident's record."""
    from runbook.models import EventKind
    from runbook.store import open_store

    if not cell.incident_id:
        return
    keys: dict[str, int] = {}
    for r in stack.pagerduty.requests:
        body = r.body if isinstance(r.body, dict) else {}
        if body.get("event_action") == "trigger" and r.status is not None and 200 <= r.status < 300 and str(
                body.get("dedup_key", "")).startswith(cell.incident_id):
            keys[body["dedup_key"]] = keys.get(body["dedup_key"], 0) + 1
    # A trigger re-sent with the same dedup key is the same alert in PagerDuty (nobody is paged twice); a duplicate
    # is a second incident for the one fault, each with pages of its own.
    cell.triggers = sum(keys.values())
    from tasks.pagerduty import page_states, pending_pages

    cell.pending = len(await pending_pages(cell.incident_id))
    async with open_store() as store:
        timeline = await store.timeline(cell.incident_id)
        declared = [i for i in await store.list() if i.created_at.timestamp() >= cell.started]
    cell.closed_unsent = sum(p["state"] == "closed" for p in page_states(timeline).values())
    cell.duplicates = max(0, len(declared) - 1)
    words = {cell.dependency, cell.dependency.replace("_api", ""), cell.dependency.replace("_", " ")}
    failures = [e for e in timeline if e.kind in {EventKind.NOTE, EventKind.PAGED, EventKind.STATUS_PAGE,
                                                   EventKind.REMEDIATION_APPLIED, EventKind.VERIFICATION}
                or "fail" in e.summary.lower()]
    cell.named_on_timeline = any(any(w in f"{e.summary} {e.details}".lower() for w in words) and (
        "fail" in f"{e.summary} {e.details}".lower() or "error" in f"{e.summary} {e.details}".lower()
        or "unavailable" in f"{e.summary} {e.details}".lower() or "pending" in f"{e.summary} {e.details}".lower())
        for e in failures)
    cell.resolved = any(e.kind == EventKind.STATUS_CHANGED and e.details.get("to") == "resolved"
                        and not e.details.get("drill_closed") for e in timeline)


async def run_cell(stack: Any, state_root: Path, dependency: str, kind: str, when: str, timeout: float,
                   hang_s: float) -> Cell:
    """Run one drill with the fault held on one stand-in; return the judged cell."""
    from deployments.drill import DrillResult, run_one

    scenario = DEPENDENCIES[dependency]
    cell = Cell(dependency=dependency, fault=kind, scenario=scenario, when=when)
    standin = next(s for s in stack.standins if s.name == dependency)
    fault = make_fault(kind, hang_s)
    started = cell.started = time.time()
    stop = asyncio.Event()
    result: DrillResult | None = None
    watcher = asyncio.create_task(fault_on_declaration(standin, fault, started, stop)) if when == "declared" \
        else None
    try:
        with fault_from_start(stack, standin, fault) if when == "start" else contextlib.nullcontext():
            result = await asyncio.wait_for(run_one(stack, scenario, "auto", state_root), timeout)
        cell.within_bound = True
    except TimeoutError:
        cell.error = f"no end within {timeout:g} s"
    finally:
        stop.set()
        if watcher is not None:
            await watcher
        cell.duration_s = round(time.time() - started, 1)
    if result is not None:
        cell.incident_id, cell.detected = result.incident_id, result.incident_id is not None
        cell.finding, cell.remediation = result.finding, result.remediation
        cell.error = cell.error or result.error
    # The record is read with the drill's own settings: run_one restored the environment, so point at its store.
    await judge_with_drill_env(stack, cell, state_root)
    standin.clear_faults()
    return cell


async def judge_with_drill_env(stack: Any, cell: Cell, state_root: Path) -> None:
    from deployments.drill import shared_store_url

    saved = dict(os.environ)
    os.environ.update(stack.env)
    os.environ["RUNBOOK_STORE_URL"] = shared_store_url(state_root, saved)
    try:
        await judge(stack, cell)
    except Exception as exc:  # a judgement that cannot be made is said, not hidden
        cell.notes.append(f"not judged: {type(exc).__name__}: {exc}")
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def matrix(dependencies: list[str], faults: list[str], when: str, timeout: float, hang_s: float,
                 state_root: Path) -> list[Cell]:
    from deployments.drill import progress, register_deployments
    from runbook.drill import DrillStack

    cells: list[Cell] = []
    with DrillStack() as stack:
        await register_deployments()
        for dependency in dependencies:
            for kind in faults:
                progress(f"cell {dependency} x {kind} ({DEPENDENCIES[dependency]}, fault from {when})…")
                cell = await run_cell(stack, state_root, dependency, kind, when, timeout, hang_s)
                verdict = "clear" if cell.clear else "NOT CLEAR"
                progress(f"cell {dependency} x {kind}: {verdict}; triggers {cell.triggers}, pending {cell.pending}, "
                         f"{cell.duration_s:.0f} s" + (f"; {cell.error}" if cell.error else ""))
                cells.append(cell)
    return cells


def table(cells: list[Cell]) -> str:
    """Return the Markdown table of the cells and the totals line."""
    lines = ["| dependency | fault | scenario | clear | resolved | pages sent / pending / closed unsent | lost | "
             "duplicates | duration | what went wrong |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        wrong = (c.error or "")[:90].replace("|", "/")
        lines.append(f"| {c.dependency} | {c.fault} | {c.scenario} | {'yes' if c.clear else '**no**'} | "
                     f"{'yes' if c.resolved else 'no'} | {c.triggers} / {c.pending} / {c.closed_unsent} | "
                     f"{'**1**' if c.page_lost else 0} "
                     f"| {c.duplicates} | {c.duration_s:.0f} s | {wrong} |")
    clear = sum(c.clear for c in cells)
    lines.append("")
    lines.append(f"{clear} of {len(cells)} cells clear; pages lost: {sum(c.page_lost for c in cells)}; duplicate "
                 f"pages: {sum(c.duplicates for c in cells)}; pages closed unsent (resolved first): "
                 f"{sum(c.closed_unsent for c in cells)}; load average {os.getloadavg()[0]:.1f} at the end.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--deps", default=",".join(DEPENDENCIES), help="comma-separated dependencies")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated faults")
    parser.add_argument("--when", choices=("start", "declared"), default="start")
    parser.add_argument("--cell-timeout", type=float, default=420.0, help="seconds a cell may take (the bound)")
    parser.add_argument("--hang", type=float, default=120.0, help="seconds a hung request is held")
    parser.add_argument("--json", action="store_true", help="print the cells as JSON after the table")
    args = parser.parse_args(argv)
    dependencies = [d for d in args.deps.split(",") if d]
    faults = [f for f in args.faults.split(",") if f]
    bad = [d for d in dependencies if d not in DEPENDENCIES] + [f for f in faults if f not in FAULTS]
    if bad:
        parser.error(f"unknown {bad[0]!r}: dependencies {', '.join(DEPENDENCIES)}; faults {', '.join(FAULTS)}")
    from deployments.drill import prefect_server, quiet_console

    state_root = Path(tempfile.mkdtemp(prefix="runbook-reliability-"))
    quiet_console(state_root / "reliability.log")
    print(f"details and tracebacks: {state_root / 'reliability.log'}", file=sys.stderr)
    with prefect_server():
        cells = asyncio.run(matrix(dependencies, faults, args.when, args.cell_timeout, args.hang, state_root))
    print(table(cells))
    if args.json:
        print(json.dumps([asdict(c) | {"clear": c.clear, "page_lost": c.page_lost} for c in cells], indent=2))
    return 0 if all(c.clear and not c.page_lost and not c.duplicates for c in cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
