"""`runbook`: the on-call engineer's command line — the parser, `runbook config`, and `main`.

Commands live next to what they drive; each command module contributes a `register(subparsers)` that adds its
commands and sets `func` (returning the exit code). This module only assembles them and turns our errors into
messages. The command groups in runbook/ are imported here; commands that run flows or serve deployments
(`runbook drill`, `runbook up`) live in deployments/ and are found through the entry points of the group
`runbook.commands` (pyproject.toml), so nothing in runbook/ imports deployments/ or flows/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runbook.cli import freeze, incidents, intake, lifecycle, preflight, remediate, report
from runbook.drill import cli as drill_cli
from runbook.errors import ConfigError, RunbookError

Register = Callable[[Any], object]

# The command groups of runbook/, in the order `runbook --help` lists them; each has register(subparsers).
COMMAND_GROUPS: tuple[Register, ...] = (
    incidents.register,
    lifecycle.register,
    remediate.register,
    freeze.register,
    report.register,
    preflight.register,
    drill_cli.register,
    intake.register,
)
# Commands contributed from outside runbook/ (deployments/: `up`, `drill`), as entry points of this group.
ENTRY_POINT_GROUP = "runbook.commands"


def contributed_commands() -> list[Register]:
    """Return the register functions of the entry points of ENTRY_POINT_GROUP (their modules are imported now)."""
    return [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]


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
    for register in (*COMMAND_GROUPS, *contributed_commands()):
        register(sub)
    return parser


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings and policy file, never a secret value."""
    from runbook.policy import load_policy
    from runbook.settings import load_settings

    settings = load_settings()
    load_policy(settings.policy_file)  # an invalid policy file is a configuration error too
    described = settings.describe()
    described["prefect_api_auth"] = describe_api_auth(settings.api_auth_file)
    if args.json:
        print(json.dumps(described, indent=2, default=str))
    else:
        width = max(len(k) for k in described)
        for key, value in described.items():
            print(f"{key:<{width}}  {value}")
    return 0


def describe_api_auth(auth_file: Path) -> str:
    """Return how the Prefect API credential stands, safe to print: set (fingerprint) and from where, or unset."""
    from runbook.settings import fingerprint

    given = os.environ.get("PREFECT_API_AUTH_STRING")
    kept = _read_auth_file(auth_file)
    if given:
        where = str(auth_file) if given == kept else "PREFECT_API_AUTH_STRING"
        return f"set ({fingerprint(given)}, {where})"
    if kept:
        return f"unset (PREFECT_API_URL unset or not loopback; `runbook up` keeps one in {auth_file})"
    return "unset"


def _read_auth_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def use_local_api_auth() -> None:
    """Give this process's Prefect client the credential `runbook up` keeps in the state dir, when PREFECT_API_URL
    names a server on this machine and no PREFECT_API_AUTH_STRING is set: `runbook resolve` and the other commands
    that start runs reach the server `runbook up` runs with API authentication. Call it before Prefect is imported
    (it reads its settings once)."""
    from runbook.settings import load_settings

    url = os.environ.get("PREFECT_API_URL")
    if not url or os.environ.get("PREFECT_API_AUTH_STRING") or urlsplit(url).hostname not in LOOPBACK:
        return
    try:
        auth_file = load_settings().api_auth_file
    except ConfigError:  # the command itself reports it
        return
    if kept := _read_auth_file(auth_file):
        os.environ["PREFECT_API_AUTH_STRING"] = kept


def run_async(coro_fn: Callable[..., Any], *args: Any) -> Any:
    """Run an async command body."""
    return asyncio.run(coro_fn(*args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `runbook` console script."""
    use_local_api_auth()  # before build_parser(): `up` and `drill` import Prefect, which reads its settings once
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
