"""Benchmark: how long the drill stack takes to start and stop (target: start < 5 s).

    .venv/bin/python -m bench.drill_startup [--runs 5] [--users 300]

Prints one line per run and a summary (min / median / max). Not a test: timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import time

from runbook.drill import DrillStack


def main() -> None:
    """Start and stop the drill stack `--runs` times and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    starts, stops, healths = [], [], []
    for n in range(1, args.runs + 1):
        began = time.perf_counter()
        stack = DrillStack(users=args.users).start()
        started = time.perf_counter()
        code, _ = stack.health()
        checked = time.perf_counter()
        stack.stop()
        stopped = time.perf_counter()
        starts.append(started - began)
        healths.append(checked - started)
        stops.append(stopped - checked)
        print(f"run {n}: start {starts[-1]:.2f}s  first /api/health {healths[-1] * 1000:.0f} ms ({code})  "
              f"stop {stops[-1]:.2f}s", flush=True)
    for label, values in (("start", starts), ("stop", stops)):
        print(f"{label}: min {min(values):.2f}s  median {statistics.median(values):.2f}s  max {max(values):.2f}s")


if __name__ == "__main__":
    main()
