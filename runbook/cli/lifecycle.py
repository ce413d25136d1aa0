"""`runbook resolve|set-status|set-severity|link|merge|note|locks|unlock`: a person steering an incident from the
command line.

Each command changes the record at once (runbook/lifecycle.py: one timeline event with who and via "cli"). What
the change sets in motion outside the record — the status page, #incidents, pages, the new severity's escalation —
is done by the matching deployment of flows/lifecycle.py: with a Prefect server configured (PREFECT_API_URL, as
`runbook up` prints) the command starts that run (it finds the record already changed and does the rest); without
one it says what was not told and how to do it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from runbook import lifecycle
from runbook.models import Incident, Severity, Status
from runbook.store import open_store

# Which deployment finishes each command's change outside the record (None: the record is all there is).
FOLLOW_UP = {"resolve": "resolve-incident", "set-status": "set-incident-status",
             "set-severity": "set-incident-severity", "merge": "merge-incidents"}


def register(sub: Any) -> None:
    """Add the lifecycle commands."""
    def by(p: argparse.ArgumentParser) -> None:
        p.add_argument("--by", required=True, help="who makes the change (recorded on the timeline)")
        p.add_argument("--no-follow-up", action="store_true",
                       help="only change the record; start no Prefect run for the status page / Slack / pages")

    p = sub.add_parser("resolve", help="resolve an incident by hand (refused while a remediation is in flight)")
    p.add_argument("id")
    p.add_argument("--reason", required=True, help="what restored the service, or why it was not an incident")
    by(p)
    p.set_defaults(func=lambda a: asyncio.run(_resolve(a)))

    p = sub.add_parser("set-status", help="move an incident to investigating|identified|monitoring|resolved")
    p.add_argument("id")
    p.add_argument("status", choices=[s.value for s in Status])
    p.add_argument("--reason", default="", help="why (required for resolved)")
    by(p)
    p.set_defaults(func=lambda a: asyncio.run(_set_status(a)))

    p = sub.add_parser("set-severity", help="change the severity; the new severity's escalation and comms run")
    p.add_argument("id")
    p.add_argument("severity", choices=[s.value for s in Severity])
    p.add_argument("--reason", default="", help="why")
    by(p)
    p.set_defaults(func=lambda a: asyncio.run(_set_severity(a)))

    p = sub.add_parser("link", help="relate two incidents (both timelines say so)")
    p.add_argument("id")
    p.add_argument("other")
    by(p)
    p.set_defaults(func=lambda a: asyncio.run(_link(a)))

    p = sub.add_parser("merge", help="merge DUPLICATE into SURVIVOR: one record with both timelines")
    p.add_argument("survivor")
    p.add_argument("duplicate")
    p.add_argument("--reason", default="", help="why they are the same outage")
    by(p)
    p.set_defaults(func=lambda a: asyncio.run(_merge(a)))

    p = sub.add_parser("locks", help="the remediation locks held now (environment, holder, since, expiry)")
    p.set_defaults(func=lambda a: asyncio.run(_locks(a)))

    p = sub.add_parser("unlock", help="release an environment's remediation lock by hand (after a crashed run)")
    p.add_argument("environment")
    p.add_argument("--reason", required=True, help="why (recorded on the holder's incident)")
    p.add_argument("--by", required=True, help="who releases it")
    p.add_argument("--force", action="store_true",
                   help="even when the holder's Prefect run is not known to have ended (it may still be acting)")
    p.set_defaults(func=lambda a: asyncio.run(_unlock(a)))

    p = sub.add_parser("note", help="add a note to an incident's timeline")
    p.add_argument("id")
    p.add_argument("text")
    p.add_argument("--by", required=True, help="who writes it")
    p.set_defaults(func=lambda a: asyncio.run(_note(a)))


async def _follow_up(command: str, params: dict[str, Any], incident: Incident, skip: bool) -> None:
    """Start the deployment that finishes the change outside the record, or say why it did not run."""
    deployment = FOLLOW_UP[command]
    manual = (f"run the {deployment} deployment for {incident.id} (e.g. from the Prefect UI of `runbook up`) to "
              "update the status page, Slack and pages")
    if skip:
        print(f"record changed only (--no-follow-up): {manual}")
        return
    if not os.environ.get("PREFECT_API_URL"):
        print(f"record changed; no Prefect server configured (PREFECT_API_URL), so nothing outside the record was "
              f"told: {manual}", file=sys.stderr)
        return
    from prefect.deployments.flow_runs import arun_deployment

    try:
        run = await arun_deployment(f"{deployment}/{deployment}", parameters={"params": {**params, "via": "cli"}},
                                   timeout=0, flow_run_name=f"{deployment} {incident.id} (cli)",
                                   tags=["incident", "cli"])
    except Exception as exc:  # the record is changed either way; say what did not happen
        print(f"record changed; could not start {deployment} on the Prefect server ({type(exc).__name__}: {exc}): "
              f"{manual}", file=sys.stderr)
        return
    print(f"started {deployment} run {run.id} (status page, Slack, pages)")


async def _locks(args: argparse.Namespace) -> int:
    async with open_store() as store:
        held = await store.active_locks(lifecycle.REMEDIATION_LOCKS)
    for lock in held:
        print(f"{lock['name'].removeprefix(lifecycle.REMEDIATION_LOCKS)}: {lock['holder']} since "
              f"{lock['acquired_at']:%Y-%m-%d %H:%M:%S}Z (expires {lock['expires_at']:%H:%M:%S}Z)")
    if not held:
        print("no remediation lock is held")
    return 0


async def _unlock(args: argparse.Namespace) -> int:
    async with open_store() as store:
        lock = await lifecycle.unlock(store, args.environment, by=args.by, reason=args.reason, force=args.force)
    print(f"released {lock['name']} (held by {lock['holder']})")
    return 0


async def _resolve(args: argparse.Namespace) -> int:
    async with open_store() as store:
        incident, changed = await lifecycle.resolve(store, args.id, reason=args.reason, by=args.by, via="cli")
    print(("resolved: " if changed else "already resolved: ") + lifecycle.describe(incident))
    await _follow_up("resolve", {"incident_id": incident.id, "reason": args.reason, "by": args.by}, incident,
                     args.no_follow_up)
    return 0


async def _set_status(args: argparse.Namespace) -> int:
    async with open_store() as store:
        incident, changed = await lifecycle.set_status(store, args.id, args.status, by=args.by, reason=args.reason,
                                                       via="cli")
    print(("status set: " if changed else "unchanged: ") + lifecycle.describe(incident))
    if changed:
        await _follow_up("set-status", {"incident_id": incident.id, "status": args.status, "reason": args.reason,
                                        "by": args.by}, incident, args.no_follow_up)
    return 0


async def _set_severity(args: argparse.Namespace) -> int:
    async with open_store() as store:
        incident, changed = await lifecycle.set_severity(store, args.id, args.severity, by=args.by,
                                                         reason=args.reason, via="cli")
    print(("severity set: " if changed else "unchanged: ") + lifecycle.describe(incident))
    if changed:
        await _follow_up("set-severity", {"incident_id": incident.id, "severity": args.severity,
                                          "reason": args.reason, "by": args.by}, incident, args.no_follow_up)
    return 0


async def _link(args: argparse.Namespace) -> int:
    async with open_store() as store:
        incident, other, changed = await lifecycle.link(store, args.id, args.other, by=args.by, via="cli")
    print(("linked: " if changed else "already linked: ") + f"{incident.id} ↔ {other.id}")
    return 0


async def _merge(args: argparse.Namespace) -> int:
    async with open_store() as store:
        survivor, duplicate, changed = await lifecycle.merge(store, args.survivor, args.duplicate, by=args.by,
                                                             reason=args.reason, via="cli")
    print(("merged: " if changed else "already merged: ") + f"{duplicate.id} → {lifecycle.describe(survivor)}")
    if changed:
        await _follow_up("merge", {"survivor_id": survivor.id, "duplicate_id": duplicate.id, "reason": args.reason,
                                   "by": args.by}, survivor, args.no_follow_up)
    return 0


async def _note(args: argparse.Namespace) -> int:
    async with open_store() as store:
        event = await lifecycle.note(store, args.id, args.text, by=args.by, via="cli")
    print(f"noted on {args.id} at {event.at:%H:%M:%S}Z")
    return 0
