"""Run a command with CPU-burning processes beside it: `python -m bench.stress [--burners N] -- COMMAND …`.

`make test-stress` runs the whole suite this way and `make drill-stress` runs `runbook drill --all`: an incident is
exactly when machines are loaded, so both must pass with the machine's cores busy. The burners are started before
the command and stopped after it (also on Ctrl-C); the exit code is the command's. It prints the wall time and the
load average before and after, for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time


def _burn() -> None:  # pragma: no cover - runs in a child process until terminated
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.splitlines()[0])
    parser.add_argument("--burners", type=int, default=2, help="CPU-burning processes beside the command (2)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for proc in burners:
        proc.start()
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        code = subprocess.call(command)
    except KeyboardInterrupt:
        code = 130
    finally:
        for proc in burners:
            proc.terminate()
        for proc in burners:
            proc.join(timeout=10)
    elapsed = time.monotonic() - started
    print(f"stress: {' '.join(command)} → exit {code} in {elapsed:.0f} s with {args.burners} burner(s); "
          f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
