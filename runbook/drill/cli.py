"""Command line of the drill environment: `stack up` (foreground, until SIGINT/SIGTERM) and the scenario list.

    runbook stack up [--json] [--scenario NAME]

With --json the FIRST stdout line is one JSON object `{"urls": {...}, "env": {...}, ...}` (flushed); `env` holds
the stack's throwaway drill credentials, so export it to point the runbook at the stack. Without --json nothing
secret is printed. `register(subparsers)` adds the commands to the `runbook` parser; `main()` runs them alone
(`python -m runbook.drill.cli stack up --json`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from types import FrameType
from typing import Any

from runbook.drill.scenarios import SCENARIOS
from runbook.drill.stack import DrillStack


class _Stop(BaseException):
    """Raised by the SIGTERM/SIGHUP handler to leave the foreground loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def list_scenarios() -> list[dict[str, str]]:
    """Return every scenario as a dict: name, title, severity, runbook_section, remediation, symptom, description."""
    return [scenario.describe() for scenario in SCENARIOS.values()]


def format_scenarios() -> str:
    """Return the scenarios as an aligned text table (for `runbook drill --list`)."""
    rows = list_scenarios()
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'SCENARIO'.ljust(width)}  SEV  REMEDIATION        WHAT BREAKS"]
    for r in rows:
        lines.append(f"{r['name'].ljust(width)}  {r['severity']:<3}  {r['remediation']:<17}  {r['symptom']}")
    return "\n".join(lines)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `stack up [--json] [--scenario NAME]` to an argparse subparsers object; return the `stack` parser."""
    stack = subparsers.add_parser("stack", help="run the local drill stack (stand-ins of production)")
    commands = stack.add_subparsers(dest="stack_command", metavar="COMMAND")
    commands.required = True
    up = commands.add_parser("up", help="start the drill stack in the foreground until Ctrl-C / SIGTERM")
    up.add_argument("--json", action="store_true",
                    help="print one JSON line {urls, env} first (env holds the drill's throwaway credentials)")
    up.add_argument("--scenario", choices=sorted(SCENARIOS), help="inject this scenario once the stack is up")
    up.add_argument("--workdir", default=None, help="keep state and migrations here (default: a temp dir)")
    up.set_defaults(func=stack_up)
    return stack


def stack_up(args: argparse.Namespace) -> int:
    """Run the drill stack in the foreground; stop cleanly on SIGINT, SIGTERM or SIGHUP."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, _raise_stop)
    stack = DrillStack(workdir=getattr(args, "workdir", None))
    code = 0
    try:
        stack.start()
        scenario = getattr(args, "scenario", None)
        changes = stack.inject(scenario) if scenario else {}
        if args.json:
            print(json.dumps({"urls": stack.urls, "env": stack.env, "db_url": stack.db_url,
                              "workdir": str(stack.workdir), "scenario": scenario, "env_changes": changes,
                              "startup_seconds": round(stack.startup_seconds, 3)}), flush=True)
        else:
            print(f"drill stack up in {stack.startup_seconds:.1f}s (workdir {stack.workdir})")
            for name, url in stack.urls.items():
                print(f"  {name:<13} {url}")
            if scenario:
                print(f"scenario injected: {scenario}")
            print("`runbook stack up --json` prints the RUNBOOK_* environment. Ctrl-C stops.", flush=True)
        while True:
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        code = 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the drill commands on their own (what `runbook stack …` does once wired)."""
    parser = argparse.ArgumentParser(prog="runbook-drill")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    register(subparsers)
    subparsers.add_parser("scenarios", help="list the drill scenarios").set_defaults(
        func=lambda _args: print(format_scenarios()) or 0)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
