"""`runbook remediate ACTION --by NAME [--as SLACK_ID]`: start a remediation deployment, with who asked recorded.

The run plans, asks for approval (Slack buttons, the Prefect UI) and acts only when approved; this command only
starts it. The requester is `--by` (recorded as requested_by, via cli, with the operating-system user who ran the
command). Their identity for the two-person rule is the policy's approvers-map id: `--as U012ABC` (it must be in
the map), else the one approver whose name is `--by`; so the same person approving from Slack is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
from typing import Any

from runbook.errors import InputError, RunbookError
from runbook.models import INCIDENT_ID_PATTERN

ACTION_PATTERN = r"^[a-z][a-z0-9-]{1,60}$"
SLACK_USER_PATTERN = r"^[UW][A-Z0-9]{2,}$"


def register(sub: Any) -> None:
    """Add `runbook remediate`."""
    p = sub.add_parser("remediate", help="start a remediation (it plans, asks for approval, then acts)")
    p.add_argument("action", help="the remediation deployment, e.g. code-rollback, database-rollback")
    p.add_argument("--incident", help="the incident it remediates (recorded on its timeline)")
    p.add_argument("--by", required=True, help="who asks for it (the requester; the approver must be someone else "
                                               "for two-person actions)")
    p.add_argument("--as", dest="identity", metavar="SLACK_USER_ID",
                   help="your Slack user id in the policy's approvers map (default: the approver named --by)")
    p.add_argument("--dry-run", action="store_true", help="only compute and publish the plan")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="another field of the remediation's form (VALUE as JSON when it parses, else a string)")
    p.set_defaults(func=lambda a: asyncio.run(_remediate(a)))


def requester_identity(by: str, identity: str | None) -> str | None:
    """Return the requester's approvers-map id: `identity` (checked against the map) or the approver named `by`."""
    from runbook.policy import get_policy

    approvers = get_policy().approvers
    if identity is not None:
        if not re.fullmatch(SLACK_USER_PATTERN, identity):
            raise InputError(f"--as {identity!r} is not a Slack user id (U… or W…)")
        if identity not in approvers:
            raise InputError(f"--as {identity} is not in the policy's approvers map; nothing was started")
        if approvers[identity].name.strip().casefold() != by.strip().casefold():
            # else a requester could borrow another approver's identity and then approve their own request
            raise InputError(f"--as {identity} is {approvers[identity].name} in the approvers map, not {by}; "
                             "nothing was started")
        return identity
    named = [uid for uid, person in approvers.items() if person.name.strip().casefold() == by.strip().casefold()]
    return named[0] if len(named) == 1 else None


def build_params(args: argparse.Namespace) -> dict[str, Any]:
    """Return the remediation's `params` from the command line; InputError names what is wrong."""
    if not re.fullmatch(ACTION_PATTERN, args.action):
        raise InputError(f"{args.action!r} is not a remediation name (e.g. code-rollback)")
    if args.incident is not None and not re.fullmatch(INCIDENT_ID_PATTERN, args.incident):
        raise InputError(f"{args.incident!r} is not an incident id")
    by = args.by.strip()
    if not 1 <= len(by) <= 100:
        raise InputError("--by must name who asks (1–100 characters)")
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise InputError(f"--param {item!r} is not KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    reserved = {"requested_by", "requester_identity", "requested_via", "requester_os_user", "dry_run", "incident_id"}
    if reserved & set(params):
        raise InputError(f"set {', '.join(sorted(reserved & set(params)))} with the command's own options")
    params.update(incident_id=args.incident, dry_run=bool(args.dry_run), requested_by=by,
                  requester_identity=requester_identity(by, args.identity), requested_via="cli",
                  requester_os_user=_os_user())
    return params


def _os_user() -> str | None:
    try:
        return getpass.getuser()[:100]
    except Exception:  # no user name in this environment: the record says so by leaving it empty
        return None


async def _remediate(args: argparse.Namespace) -> int:
    from prefect.deployments.flow_runs import arun_deployment
    from prefect.exceptions import ObjectNotFound

    params = build_params(args)
    name = f"{args.action}/{args.action}"
    try:
        run = await arun_deployment(name, parameters={"params": params}, timeout=0, as_subflow=False,
                                    flow_run_name=f"{args.action} {args.incident or 'adhoc'}", tags=["cli"])
    except ObjectNotFound:
        raise RunbookError(f"no deployment {name} on the Prefect server (is `runbook up` running?); "
                           "nothing was started") from None
    except Exception as exc:  # the server refused the parameters (409 with the reason) or is unreachable
        raise RunbookError(f"{args.action} was not started: {type(exc).__name__}: {exc}") from None
    who = params["requested_by"] + (f" ({params['requester_identity']})" if params["requester_identity"] else "")
    print(f"started {run.name} ({run.id}), requested by {who} via cli as OS user {params['requester_os_user']}; "
          + ("a dry run: nothing changes" if args.dry_run else "it asks for approval before acting"))
    return 0
