"""Benchmark: the monitor's traffic baselines at their full size — a day of request rates and route shares.

    .venv/bin/python -m bench.monitor_baselines [--cycles 1440] [--routes 25]

Every monitor cycle reads the request-rate history and every tracked route's share history (24 h at one cycle a
minute: 1,440 samples each), judges the route mix and writes this cycle's values. This measures that per-cycle cost
on SQLite and on PostgreSQL, once the tables hold a full baseline window. Not a test: timings depend on the load.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from datetime import timedelta

from bench._backends import on_both_backends
from runbook.clients.sentry import RouteCounts
from runbook.models import utcnow
from runbook.monitoring import FEATURE_SHARE, REQUEST_RATE, feature_anomaly, feature_shares, open_monitor_store
from runbook.policy import Monitoring


def _cycle_values(routes: int, cycle: int) -> dict[str, float]:
    shares = {f"{FEATURE_SHARE}/api/feature/{r}": 100.0 / routes + (cycle % 7) * 0.01 for r in range(routes)}
    return {REQUEST_RATE: 120.0 + cycle % 11, **shares}


async def run(url: str, cycles: int, routes: int, repeats: int = 20) -> dict[str, float]:
    """Fill a baseline window, then time the monitor's per-cycle reads, judgement and write; return ms and KiB."""
    mon = Monitoring(feature_max_routes=routes)
    window = timedelta(hours=mon.traffic_baseline_hours)
    now = utcnow()
    out: dict[str, float] = {}
    async with open_monitor_store(url) as store:
        began = time.perf_counter()
        for c in range(cycles):
            await store.add_rates(_cycle_values(routes, c), now - window + window * (c + 1) / (cycles + 1))
        out["fill_s"] = time.perf_counter() - began
        reads, judges, writes = [], [], []
        counts = RouteCounts(counts={f"/api/feature/{r}": 40 for r in range(routes)}, complete=True)
        for n in range(repeats):
            t0 = time.perf_counter()
            rates = await store.rates(REQUEST_RATE, window, now)
            history = await store.rates_by_prefix(FEATURE_SHARE, window, now)
            t1 = time.perf_counter()
            tracemalloc.start()
            shares, total = feature_shares(counts, mon, history)
            value, _ = feature_anomaly(shares, total, history, mon)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            t2 = time.perf_counter()
            await store.add_rates(_cycle_values(routes, n))
            t3 = time.perf_counter()
            reads.append(t1 - t0)
            judges.append(t2 - t1)
            writes.append(t3 - t2)
        assert len(rates) >= cycles and len(history) == routes and value == 0.0, (len(rates), len(history), value)
        out["read_ms"] = statistics.median(reads) * 1000
        out["judge_ms"] = statistics.median(judges) * 1000
        out["judge_peak_kib"] = peak / 1024
        out["write_ms"] = statistics.median(writes) * 1000
    return out


def main() -> None:
    """Run the baseline benchmark on SQLite and on an embedded PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1440)
    parser.add_argument("--routes", type=int, default=25)
    args = parser.parse_args()
    on_both_backends(lambda url: run(url, args.cycles, args.routes), prefix="bench-monitor-")


if __name__ == "__main__":
    main()
