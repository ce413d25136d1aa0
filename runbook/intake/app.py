"""The intake's HTTP app: every sender's routes and /healthz, the refusal to run unauthenticated, and `serve`.

A new sender is one module beside alerts.py that offers `routes(settings, *, open_access, respond)` and is listed
in `SENDERS`; its signature (and replay) checks go into signatures.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from runbook.errors import ConfigError
from runbook.intake import alerts, pagerduty, slack
from runbook.intake.common import Respond, Starter, declare_by_deployment
from runbook.intake.outbox import Outbox
from runbook.intake.signatures import secret_bytes
from runbook.settings import Settings, get_settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Each sender's routes: POST /alerts (ours, Sentry, Vercel), POST /pagerduty/webhooks (PagerDuty V3 webhooks);
# Slack interactions go here too.
SENDERS: tuple[Callable[..., list[Route]], ...] = (alerts.routes, slack.routes, pagerduty.routes)


def create_app(settings: Settings | None = None, *, insecure_local: bool = False,
               respond: Respond = "deployment", start: Starter | None = None) -> Starlette:
    """Return the intake app; without a token or HMAC secret it only starts with insecure_local (loopback only).

    `start` starts the response to an accepted alert (default: a declare-incident deployment run); `runbook up`
    passes the warm one (a Prefect background task, deployments/warm_start.py). Accepted alerts are kept in the
    outbox (`app.state.outbox`) and handed to Prefect in the background: its retry loop runs from the app's
    startup (and from the first alert when no lifespan runs) and stops at its shutdown."""
    settings = settings or get_settings()
    open_access = not (secret_bytes(settings.intake_token) or secret_bytes(settings.intake_hmac_secret))
    if open_access and not insecure_local:
        raise ConfigError("the alert intake needs RUNBOOK_INTAKE_TOKEN or RUNBOOK_INTAKE_HMAC_SECRET "
                          "(or --insecure-local on 127.0.0.1 for a local try-out)")

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    outbox = Outbox(start or declare_by_deployment)
    routes: list[BaseRoute] = [r for sender in SENDERS for r in sender(
        settings, open_access=open_access, respond=respond, start=start,
        **({"outbox": outbox} if sender is alerts.routes else {}))]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        outbox.ensure_running()  # alerts kept before a restart are handed off now
        try:
            yield
        finally:
            await outbox.aclose()

    app = Starlette(routes=[*routes, Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)
    app.state.outbox = outbox
    return app


def check_bind(host: str, settings: Settings, insecure_local: bool) -> None:
    """Refuse to serve without authentication unless asked to, and then only on loopback."""
    configured = secret_bytes(settings.intake_token) or secret_bytes(settings.intake_hmac_secret)
    if configured:
        return
    if not insecure_local:
        raise ConfigError("the alert intake needs RUNBOOK_INTAKE_TOKEN or RUNBOOK_INTAKE_HMAC_SECRET "
                          "(or --insecure-local on 127.0.0.1 for a local try-out)")
    if host not in LOOPBACK:
        raise ConfigError(f"--insecure-local only binds to 127.0.0.1, not {host}")


def serve(host: str = "127.0.0.1", port: int = 8787, *, insecure_local: bool = False,
          respond: Respond = "deployment", start: Starter | None = None) -> None:
    """Run the intake with uvicorn until interrupted."""
    import uvicorn
    from prefect.settings import PREFECT_API_URL

    settings = get_settings()
    check_bind(host, settings, insecure_local)
    if not PREFECT_API_URL.value():  # else Prefect would start a throwaway server and the runs would go nowhere
        raise ConfigError("set PREFECT_API_URL to the Prefect server where declare-incident is deployed "
                          "(e.g. the address `runbook up` prints, plus /api)")
    app = create_app(settings, insecure_local=insecure_local, respond=respond, start=start)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"alert intake on http://{host}:{port}/alerts (health: /healthz)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
