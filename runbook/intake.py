"""The alert intake: an HTTP endpoint that turns alerts from other systems into `declare-incident` runs.

    POST /alerts   generic alert (our Alert shape), Sentry issue-alert / issue webhook, Vercel webhook
    GET  /healthz  liveness

Order on every POST: authenticate the raw body (401, nothing parsed) → parse and validate (400 with the reason; the
raw payload is kept in the incident store; nothing started) → start `declare-incident` through Prefect's API
(`run_deployment(..., timeout=0)`) → 202 with the flow-run id and the fingerprint. The incident id is decided by that
run (a duplicate alert attaches to the open incident): read it with `runbook incidents list` or the run's result.

Authentication, any one of (the same RUNBOOK_INTAKE_HMAC_SECRET for every signature, compared in constant time):
    Authorization: Bearer <RUNBOOK_INTAKE_TOKEN>
    X-Runbook-Signature: sha256=<hex HMAC-SHA256 of the raw body>
    Sentry-Hook-Signature: <hex HMAC-SHA256 of the raw body>          (Sentry integration platform)
    x-vercel-signature: <hex HMAC-SHA1 of the raw body>               (Vercel webhooks)
Secrets are never logged; neither are request headers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from runbook.errors import ConfigError, InputError
from runbook.models import Alert
from runbook.settings import Settings, get_settings

DECLARE_DEPLOYMENT = "declare-incident/declare-incident"
MAX_BODY_BYTES = 1_000_000
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
Respond = Literal["deployment", "inline", "none"]

log = logging.getLogger("runbook.intake")


# -- authentication -------------------------------------------------------------------------------------------


def _secret(value: SecretStr | None) -> bytes | None:
    raw = value.get_secret_value() if value is not None else ""
    return raw.encode() if raw else None


def sign(body: bytes, secret: str, algorithm: Literal["sha256", "sha1"] = "sha256") -> str:
    """Return the hex HMAC of a body (what a sender puts in its signature header)."""
    return hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()


def authenticate(headers: Any, body: bytes, token: SecretStr | None, hmac_secret: SecretStr | None) -> str | None:
    """Return how the request authenticated ('bearer', 'signature', 'sentry', 'vercel') or None."""
    expected_token = _secret(token)
    auth = headers.get("authorization", "")
    if expected_token and auth[:7].lower() == "bearer ":
        if hmac.compare_digest(auth[7:].strip().encode(), expected_token):
            return "bearer"
    key = _secret(hmac_secret)
    if not key:
        return None
    candidates: list[tuple[str, str, Callable[[], Any]]] = [
        ("signature", headers.get("x-runbook-signature", "").removeprefix("sha256="), hashlib.sha256),
        ("sentry", headers.get("sentry-hook-signature", ""), hashlib.sha256),
        ("vercel", headers.get("x-vercel-signature", ""), hashlib.sha1),
    ]
    for how, given, digest in candidates:
        if given and hmac.compare_digest(given.strip().lower().encode(),
                                         hmac.new(key, body, digest).hexdigest().encode()):
            return how
    return None


# -- payload shapes -------------------------------------------------------------------------------------------


def _explain(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'alert'}: {e['msg']}"
                     for e in exc.errors(include_url=False, include_input=False))


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _labels(pairs: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:200] for k, v in pairs.items() if v not in (None, "", [], {})}


def from_sentry(payload: dict[str, Any]) -> dict[str, Any]:
    """Map a Sentry issue-alert (`data.event`) or issue webhook (`data.issue`) to our alert fields."""
    data = payload.get("data")
    if not isinstance(data, dict):
        raise InputError("malformed Sentry webhook: data must be an object")
    event, issue = _obj(data.get("event")), _obj(data.get("issue"))
    rule = data.get("triggered_rule")
    rule_name = rule.get("label") or rule.get("name") if isinstance(rule, dict) else rule
    source = issue or event
    if not source:
        raise InputError("malformed Sentry webhook: data.event or data.issue is required")
    issue_id = _text(issue.get("id") or event.get("issue_id") or event.get("groupID"))
    key = issue_id or _text(rule_name)
    if not key:
        raise InputError("malformed Sentry webhook: no issue id and no triggered_rule to fingerprint it")
    title = _text(source.get("title") or source.get("message"))
    culprit = _text(source.get("culprit"))
    project = source.get("project")
    tags = {t[0]: t[1] for t in event.get("tags") or [] if isinstance(t, list | tuple) and len(t) == 2}
    return {
        "source": "sentry",
        "fingerprint": f"sentry:{key}",
        "summary": f"{title} ({culprit})" if title and culprit else title,
        "labels": _labels({
            "sentry_issue": issue_id, "sentry_rule": rule_name, "level": source.get("level"), "culprit": culprit,
            "project": project.get("slug") if isinstance(project, dict) else project,
            "environment": tags.get("environment"), "action": payload.get("action"),
            "url": source.get("web_url") or source.get("permalink") or source.get("url"),
        }),
    }


def from_vercel(payload: dict[str, Any]) -> dict[str, Any]:
    """Map a Vercel webhook (`type` + `payload`, e.g. deployment.error) to our alert fields."""
    kind = _text(payload.get("type"))
    body = payload.get("payload")
    if not kind or not isinstance(body, dict):
        raise InputError("malformed Vercel webhook: type and payload are required")
    deployment, project_obj = _obj(body.get("deployment")), _obj(body.get("project"))
    project = _text(project_obj.get("id") or body.get("projectId") or deployment.get("name") or body.get("name"))
    if not project:
        raise InputError("malformed Vercel webhook: payload.project.id (or deployment name) is required")
    url = _text(deployment.get("url"))
    target = _text(body.get("target") or deployment.get("target"))
    return {
        "source": "vercel",
        "fingerprint": f"vercel:{kind}:{project}",
        "summary": f"Vercel {kind} for {project}" + (f" ({url})" if url else ""),
        "labels": _labels({"vercel_event": kind, "project": project, "deployment_id": deployment.get("id"),
                           "url": url, "target": target, "event_id": payload.get("id")}),
    }


def shape_of(payload: dict[str, Any], headers: Any = None) -> Literal["sentry", "vercel", "generic"]:
    """Tell which sender's shape a payload has."""
    headers = headers or {}
    if headers.get("sentry-hook-resource") or (
            isinstance(payload.get("data"), dict) and {"event", "issue", "triggered_rule"} & set(payload["data"])):
        return "sentry"
    if headers.get("x-vercel-signature") or (isinstance(payload.get("type"), str) and "payload" in payload):
        return "vercel"
    return "generic"


def to_alert(payload: Any, headers: Any = None) -> Alert:
    """Validate a payload of any supported shape into an Alert; InputError names every problem."""
    if not isinstance(payload, dict):
        raise InputError(f"malformed alert: expected a JSON object, got {type(payload).__name__}")
    shape = shape_of(payload, headers)
    fields = {"generic": lambda p: p, "sentry": from_sentry, "vercel": from_vercel}[shape](payload)
    try:
        alert = Alert.model_validate({**fields, "raw": payload})
    except ValidationError as exc:
        raise InputError(f"malformed {shape} alert: {_explain(exc)}") from None
    if alert.rule:
        from runbook.policy import get_policy

        get_policy().rule(alert.rule)  # an unknown rule fails here, not later inside the run
    return alert


# -- the app --------------------------------------------------------------------------------------------------


async def keep_raw(raw: dict[str, Any], reason: str) -> int | None:
    """Keep a payload that was not turned into an incident, with the reason; return its id (None if impossible)."""
    from runbook.store import open_store

    try:
        async with open_store() as store:
            return await store.store_raw_alert(raw, error=reason)
    except Exception as exc:  # the store is down: say so in the log, still answer the sender
        log.error("could not keep the raw alert (%s): %s", type(exc).__name__, exc)
        return None


async def start_declare(alert: Alert, respond: Respond) -> str:
    """Start declare-incident for a validated alert through Prefect's API; return the flow-run id."""
    from prefect.deployments.flow_runs import arun_deployment

    run = await arun_deployment(
        DECLARE_DEPLOYMENT,
        parameters={"params": {"alert": alert.model_dump(mode="json"), "respond": respond}},
        timeout=0,
        flow_run_name=f"declare {alert.summary[:60]}",
        tags=["intake", alert.source],
    )
    return str(run.id)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"status": "rejected", "error": message, **extra}, status_code=status)


def create_app(settings: Settings | None = None, *, insecure_local: bool = False,
               respond: Respond = "deployment") -> Starlette:
    """Return the intake app; without a token or HMAC secret it only starts with insecure_local (loopback only)."""
    settings = settings or get_settings()
    open_access = not (_secret(settings.intake_token) or _secret(settings.intake_hmac_secret))
    if open_access and not insecure_local:
        raise ConfigError("the alert intake needs RUNBOOK_INTAKE_TOKEN or RUNBOOK_INTAKE_HMAC_SECRET "
                          "(or --insecure-local on 127.0.0.1 for a local try-out)")

    async def alerts(request: Request) -> JSONResponse:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        how = "insecure-local" if open_access else authenticate(
            request.headers, body, settings.intake_token, settings.intake_hmac_secret)
        if how is None:
            log.warning("rejected an unauthenticated alert from %s", request.client.host if request.client else "?")
            return JSONResponse({"status": "rejected", "error": "unauthorized"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            payload: Any = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = f"malformed alert: body is not JSON ({exc})"
            kept = await keep_raw({"body": body.decode("utf-8", "replace")[:20_000]}, reason)
            return _error(400, reason, kept_alert_id=kept)
        try:
            alert = to_alert(payload, request.headers)
        except InputError as exc:
            raw = payload if isinstance(payload, dict) else {"payload": payload}
            kept = await keep_raw(raw, str(exc))
            log.info("kept a malformed alert (id %s): %s", kept, exc)
            return _error(400, str(exc), kept_alert_id=kept)
        try:
            run_id = await start_declare(alert, respond)
        except Exception as exc:  # Prefect unreachable or the deployment missing: keep it, tell the sender to retry
            reason = f"not started: {type(exc).__name__}: {exc}"
            kept = await keep_raw(payload, reason)
            log.error("accepted-but-not-started alert %s (kept as %s): %s", alert.fingerprint, kept, reason)
            return _error(503, reason, kept_alert_id=kept, fingerprint=alert.fingerprint)
        log.info("alert %s (%s, auth %s) → declare-incident run %s", alert.fingerprint, alert.source, how, run_id)
        return JSONResponse({"status": "accepted", "incident_flow_run_id": run_id,
                             "fingerprint": alert.fingerprint, "deployment": DECLARE_DEPLOYMENT}, status_code=202)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/alerts", alerts, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])


def check_bind(host: str, settings: Settings, insecure_local: bool) -> None:
    """Refuse to serve without authentication unless asked to, and then only on loopback."""
    configured = _secret(settings.intake_token) or _secret(settings.intake_hmac_secret)
    if configured:
        return
    if not insecure_local:
        raise ConfigError("the alert intake needs RUNBOOK_INTAKE_TOKEN or RUNBOOK_INTAKE_HMAC_SECRET "
                          "(or --insecure-local on 127.0.0.1 for a local try-out)")
    if host not in LOOPBACK:
        raise ConfigError(f"--insecure-local only binds to 127.0.0.1, not {host}")


def serve(host: str = "127.0.0.1", port: int = 8787, *, insecure_local: bool = False,
          respond: Respond = "deployment") -> None:
    """Run the intake with uvicorn until interrupted."""
    import uvicorn
    from prefect.settings import PREFECT_API_URL

    settings = get_settings()
    check_bind(host, settings, insecure_local)
    if not PREFECT_API_URL.value():  # else Prefect would start a throwaway server and the runs would go nowhere
        raise ConfigError("set PREFECT_API_URL to the Prefect server where declare-incident is deployed "
                          "(e.g. the address `runbook up` prints, plus /api)")
    app = create_app(settings, insecure_local=insecure_local, respond=respond)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"alert intake on http://{host}:{port}/alerts (health: /healthz)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
