"""`runbook report ID` and `runbook metrics`: the incident report and MTTA/MTTR per severity."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from runbook.errors import InputError
from runbook.report import compute_metrics, render_metrics, write_report
from runbook.store import open_store

DEFAULT_METRICS_DAYS = 30


def register(sub: Any) -> None:
    """Add the report and metrics commands."""
    rep = sub.add_parser("report", help="render an incident's report (Markdown + timeline SVG) and print it")
    rep.add_argument("id", help="incident id, e.g. inc-20261126-1a2b3c")
    rep.set_defaults(func=lambda a: asyncio.run(_report(a)))

    met = sub.add_parser("metrics", help="MTTA and MTTR per severity over a period")
    met.add_argument("--since", type=_date, default=None,
                     help=f"first day (YYYY-MM-DD, UTC); default: {DEFAULT_METRICS_DAYS} days ago")
    met.add_argument("--until", type=_date, default=None, help="day after the last one (YYYY-MM-DD); default: now")
    met.add_argument("--include-drills", action="store_true", help="count drill incidents too")
    met.add_argument("--json", action="store_true", help="print JSON (seconds)")
    met.set_defaults(func=lambda a: asyncio.run(_metrics(a)))


def _date(value: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


async def _report(args: argparse.Namespace) -> int:
    async with open_store() as store:
        files = await write_report(store, args.id)
    print(files.markdown, end="")
    print(f"\n(written to {files.markdown_path} and {files.picture_path})")
    return 0


async def _metrics(args: argparse.Namespace) -> int:
    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(days=DEFAULT_METRICS_DAYS)
    if since >= until:
        raise InputError("--since must be before --until")
    async with open_store() as store:
        metrics = await compute_metrics(store, since=since, until=until, include_drills=args.include_drills)
    if args.json:
        print(json.dumps(metrics.model_dump(mode="json"), indent=2))
    else:
        print(render_metrics(metrics))
    return 0
