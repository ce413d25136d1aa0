"""The alert intake: an HTTP endpoint that turns alerts from other systems into `declare-incident` runs.

    POST /alerts   generic alert (our Alert shape), Sentry issue-alert / issue webhook, Vercel webhook
    GET  /healthz  liveness

Order on every POST: authenticate the raw body (401, nothing parsed) → parse and validate (400 with the reason; the
raw payload is kept in the incident store; nothing started) → keep the alert in the outbox → hand it to Prefect
(`declare-incident` through Prefect's API, `run_deployment(..., timeout=0)`, or the warm path's background task) →
202 within 1.5 s with the fingerprint, the outbox id and the run started, or `queued` while Prefect is slow or
down (retried in the background until the alert is attached to its incident). The incident id is decided by that
run (a duplicate alert attaches to the open incident): read it with `runbook incidents list` or the run's result.

    app.py         the Starlette app (each sender's routes + /healthz), the refusal to run open, `serve`
    alerts.py      POST /alerts: our shape, Sentry and Vercel payloads → Alert
    signatures.py  bearer token and HMAC signatures (and, with the next senders, replay checks), shared by all
    common.py      what the routes share: body limit, rejections, keeping raw payloads, starting declare-incident
    outbox.py      accepted alerts kept before the answer, handed to Prefect in the background, retried, attached
One module per sender: PagerDuty webhooks (pagerduty.py) and Slack interactions (slack.py) go beside alerts.py.
"""

from runbook.intake.alerts import from_sentry, from_vercel, shape_of, to_alert
from runbook.intake.app import check_bind, create_app, serve
from runbook.intake.common import DECLARE_DEPLOYMENT, MAX_BODY_BYTES, keep_raw, start_declare
from runbook.intake.signatures import authenticate, sign

__all__ = [
    "DECLARE_DEPLOYMENT",
    "MAX_BODY_BYTES",
    "authenticate",
    "check_bind",
    "create_app",
    "from_sentry",
    "from_vercel",
    "keep_raw",
    "serve",
    "shape_of",
    "sign",
    "start_declare",
    "to_alert",
]
