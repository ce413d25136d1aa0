"""`runbook`: the on-call engineer's command line.

Commands live next to what they drive; each module contributes a `register(subparsers)` that adds its commands
and sets `func` (returning the exit code). This module only assembles them and turns our errors into messages.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from runbook.errors import ConfigError, RunbookError

# Modules that add commands; each has register(subparsers).
COMMAND_MODULES = [
    "runbook.cli_incidents",
    "runbook.cli_report",
    "runbook.preflight",
    "runbook.drill.cli",
    "runbook.cli_ops",
    "deployments.drill",  # runs flows, so it lives outside runbook/ (runbook/ never imports flows/)
]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="runbook",
        description="Permit School incident response: the Operations runbook as Prefect flows.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cfg = sub.add_parser("config", help="print the effective settings (secrets as set/unset + fingerprint)")
    cfg.add_argument("--json", action="store_true", help="print JSON")
    cfg.set_defaults(func=cmd_config)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings and policy file, never a secret value."""
    from runbook.policy import load_policy
    from runbook.settings import load_settings

    settings = load_settings()
    load_policy(settings.policy_file)  # an invalid policy file is a configuration error too
    described = settings.describe()
    if args.json:
        print(json.dumps(described, indent=2, default=str))
    else:
        width = max(len(k) for k in described)
        for key, value in described.items():
            print(f"{key:<{width}}  {value}")
    return 0


def run_async(coro_fn: Callable[..., Any], *args: Any) -> Any:
    """Run an async command body."""
    return asyncio.run(coro_fn(*args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `runbook` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"runbook: configuration error: {exc}", file=sys.stderr)
        return 2
    except RunbookError as exc:
        print(f"runbook: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
