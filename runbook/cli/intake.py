"""`runbook intake`: serve the alert intake (runbook/intake/) until interrupted."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the `intake` command."""
    intake = sub.add_parser("intake", help="HTTP endpoint turning alerts (generic, Sentry, Vercel) into incidents")
    intake.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    intake.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    intake.add_argument("--insecure-local", action="store_true",
                        help="allow no token/HMAC secret (only on 127.0.0.1, for a local try-out)")
    intake.add_argument("--respond", choices=["deployment", "inline", "none"], default="deployment",
                        help="how declare-incident starts the response (default: as its own deployment run)")
    intake.set_defaults(func=cmd_intake)


def cmd_intake(args: argparse.Namespace) -> int:
    """Serve the alert intake until interrupted."""
    from runbook.intake import serve

    serve(args.host, args.port, insecure_local=args.insecure_local, respond=args.respond)
    return 0
