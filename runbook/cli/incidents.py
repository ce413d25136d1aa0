"""`runbook incidents list|show` and `runbook ack`: read and acknowledge incident records."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from runbook.models import Incident
from runbook.store import open_store


def register(sub: Any) -> None:
    """Add the incident commands."""
    inc = sub.add_parser("incidents", help="list or show incident records")
    isub = inc.add_subparsers(dest="incidents_command", metavar="ACTION", required=True)
    lst = isub.add_parser("list", help="list incidents, newest first")
    lst.add_argument("--open", action="store_true", help="only open incidents")
    drills = lst.add_mutually_exclusive_group()
    drills.add_argument("--no-drill", action="store_true", help="leave out drill incidents")
    drills.add_argument("--include-drills", action="store_true",
                        help="list drill incidents too (the default; `runbook drill` writes them to this store)")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=lambda a: asyncio.run(_list(a)))
    show = isub.add_parser("show", help="show one incident with its timeline")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=lambda a: asyncio.run(_show(a)))

    ack = sub.add_parser("ack", help="acknowledge an incident (stops its escalation)")
    ack.add_argument("id")
    ack.add_argument("--by", required=True, help="who acknowledges")
    ack.set_defaults(func=lambda a: asyncio.run(_ack(a)))


def _line(i: Incident) -> str:
    drill = " [drill]" if i.drill else ""
    return f"{i.id}  {i.severity}  {i.status:<13}  {i.created_at:%Y-%m-%d %H:%M}Z  {i.title}{drill}"


async def _list(args: argparse.Namespace) -> int:
    async with open_store() as store:
        items = await store.list(open_only=args.open, include_drill=not args.no_drill, limit=args.limit)
    if args.json:
        print(json.dumps([i.model_dump(mode="json") for i in items], indent=2))
    elif not items:
        print("no incidents")
    else:
        for i in items:
            print(_line(i))
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with open_store() as store:
        incident = await store.get(args.id)
        timeline = await store.timeline(args.id)
        approvals = await store.approvals(args.id)
    if args.json:
        print(json.dumps({"incident": incident.model_dump(mode="json"),
                          "timeline": [e.model_dump(mode="json") for e in timeline],
                          "approvals": [a.model_dump(mode="json") for a in approvals]}, indent=2))
        return 0
    print(_line(incident))
    print(f"  impact: user {incident.impact.user}, business {incident.impact.business}")
    if incident.acknowledged_at:
        print(f"  acknowledged by {incident.acknowledged_by} at {incident.acknowledged_at:%H:%M:%S}Z")
    for ev in timeline:
        print(f"  {ev.at:%Y-%m-%d %H:%M:%S}Z  {ev.kind:<16} {ev.actor:<20} {ev.summary}")
    return 0


async def _ack(args: argparse.Namespace) -> int:
    async with open_store() as store:
        incident, newly = await store.acknowledge(args.id, args.by, via="cli")
    if newly:
        print(f"{incident.id} acknowledged by {incident.acknowledged_by}")
    else:
        print(f"{incident.id} was already acknowledged by {incident.acknowledged_by}")
    return 0
