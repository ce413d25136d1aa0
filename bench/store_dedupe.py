"""Benchmark: incident store throughput — declarations, duplicate alerts and timeline appends, SQLite and Postgres.

    .venv/bin/python -m bench.store_dedupe [--incidents 200] [--duplicates 5]

A monitor in a long outage attaches a duplicate alert every minute per rule; the store must stay cheap for that.
Not a test: timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench._backends import on_both_backends
from runbook.models import Alert, Incident, Severity, TimelineEvent
from runbook.store import open_store


async def run(url: str, incidents: int, duplicates: int) -> dict[str, float]:
    """Declare, attach duplicates to and append events on `incidents` incidents; return per-operation ms."""
    out: dict[str, float] = {}
    async with open_store(url) as store:
        began = time.perf_counter()
        ids = []
        for n in range(incidents):
            inc, _ = await store.declare(Incident(title=f"bench {n}", severity=Severity.P1, fingerprint=f"fp-{n}"))
            ids.append(inc.id)
        out["declare_ms"] = (time.perf_counter() - began) * 1000 / incidents
        began = time.perf_counter()
        for n in range(incidents):
            for _ in range(duplicates):
                await store.declare(Incident(title="dup", severity=Severity.P1, fingerprint=f"fp-{n}"),
                                    Alert(source="bench", fingerprint=f"fp-{n}", summary="still failing"))
        out["duplicate_ms"] = (time.perf_counter() - began) * 1000 / (incidents * duplicates)
        began = time.perf_counter()
        for inc_id in ids:
            await store.append_event(inc_id, TimelineEvent(kind="note", summary="bench"))
        out["append_ms"] = (time.perf_counter() - began) * 1000 / incidents
        began = time.perf_counter()
        await asyncio.gather(*[store.declare(Incident(title="race", severity=Severity.P0, fingerprint="race"))
                               for _ in range(20)])
        out["20_concurrent_ms"] = (time.perf_counter() - began) * 1000
    return out


def main() -> None:
    """Run the store benchmark on SQLite and on an embedded PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=200)
    parser.add_argument("--duplicates", type=int, default=5)
    args = parser.parse_args()
    on_both_backends(lambda url: run(url, args.incidents, args.duplicates), prefix="bench-store-")


if __name__ == "__main__":
    main()
