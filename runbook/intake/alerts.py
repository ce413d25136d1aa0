"""POST /alerts: our Alert shape, Sentry (issue alerts and issue webhooks) and Vercel webhooks, as incidents.

Order on every POST: no credential offered at all → 401 before the body is read; the body read in chunks up to
MAX_BODY_BYTES (413 past it, the rest never read); authenticate the raw body (401, nothing parsed; signatures.py) →
parse strict JSON and validate (400 with the reason; the raw payload is kept in the incident store; nothing started)
→ trim what would not fit Prefect's parameter limit (kept in full in the store) → keep the alert in the intake's
outbox and hand it to Prefect (`declare-incident` through Prefect's API, or the warm path's background task) in the
background (outbox.py) → 202 within about a second and a half: with what was started, or `queued` while Prefect is
slow or down (the hand-off is retried until the alert is attached to its incident; nothing is lost). Without
credentials (--insecure-local, loopback only) a browser-like post (cross-site, an Origin elsewhere, not
application/json) is 403. Only the store being unreachable (the alert cannot be kept) answers 503, "retry".
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from runbook.errors import InputError
from runbook.intake.common import (
    MAX_BODY_BYTES,
    Respond,
    Starter,
    accepted_before,
    fit_parameters,
    keep_raw,
    log,
    read_body,
    rejected,
    strict_json,
)
from runbook.intake.outbox import Outbox
from runbook.intake.signatures import SeenOnce, authenticate, cross_site, offers_credentials
from runbook.models import Alert
from runbook.settings import Settings

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
    try:
        fields = {"generic": lambda p: p, "sentry": from_sentry, "vercel": from_vercel}[shape](payload)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a field of an unexpected type
        raise InputError(f"malformed {shape} alert: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        alert = Alert.model_validate({**fields, "raw": payload})
    except ValidationError as exc:
        raise InputError(f"malformed {shape} alert: {_explain(exc)}") from None
    if alert.rule:
        from runbook.policy import get_policy

        get_policy().rule(alert.rule)  # an unknown rule fails here, not later inside the run
    return alert


# -- the route ------------------------------------------------------------------------------------------------

# Signatures over the body alone: the same bytes are the same delivery, so a repeat is a replay (or a retry of one
# already taken). A bearer token signs nothing: the same body from a token holder is a new report.
SIGNED_BODY_ONLY = {"signature", "sentry", "vercel"}


def _unauthorized(request: Request) -> JSONResponse:
    log.warning("rejected an unauthenticated alert from %s", request.client.host if request.client else "?")
    return JSONResponse({"status": "rejected", "error": "unauthorized"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


def routes(settings: Settings, *, open_access: bool, respond: Respond, start: Starter | None = None,
           outbox: Outbox | None = None) -> list[Route]:
    """Return the alert route; `open_access` (no token or HMAC secret, --insecure-local) skips authentication;
    `outbox` keeps each accepted alert and hands it to Prefect with `start` (default: a declare-incident
    deployment run)."""
    if outbox is None:
        from runbook.intake.common import declare_by_deployment

        outbox = Outbox(start or declare_by_deployment)
    deliveries = SeenOnce()  # signed bodies being or already taken by this process (concurrent replays)

    async def alerts(request: Request) -> JSONResponse:
        if open_access:
            browser = cross_site(request.headers)
            if browser:
                log.warning("refused a browser-like post to the open (--insecure-local) intake: %s", browser)
                return rejected(403, f"refused: {browser}; the open intake takes only JSON posts from this machine")
        elif not offers_credentials(request.headers, settings.intake_token):  # refused before the body is read
            return _unauthorized(request)
        body = await read_body(request)
        if body is None:
            return rejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
        how = "insecure-local" if open_access else authenticate(
            request.headers, body, settings.intake_token, settings.intake_hmac_secret)
        if how is None:
            return _unauthorized(request)
        try:
            payload: Any = strict_json(body)
        except InputError as exc:
            kept = await keep_raw({"body": body.decode("utf-8", "replace")[:20_000]}, str(exc))
            return rejected(400, str(exc), kept_alert_id=kept)
        try:
            alert = await fit_parameters(to_alert(payload, request.headers))
        except InputError as exc:
            raw = payload if isinstance(payload, dict) else {"payload": payload}
            kept = await keep_raw(raw, str(exc))
            log.info("kept a malformed alert (id %s): %s", kept, exc)
            return rejected(400, str(exc), kept_alert_id=kept)
        digest = hashlib.sha256(body).hexdigest()
        if how in SIGNED_BODY_ONLY and (not deliveries.claim(digest) or await outbox.seen(digest)
                                        or await accepted_before(alert)):
            log.warning("replayed signed alert %s (auth %s): nothing started", alert.fingerprint, how)
            return JSONResponse({"status": "duplicate", "fingerprint": alert.fingerprint,
                                 "detail": "this exact signed delivery was accepted before (a replay, or a retry of "
                                           "one already taken); nothing started"}, status_code=200)
        try:
            kept, started, error = await outbox.accept(alert, respond,
                                                       digest if how in SIGNED_BODY_ONLY else None)
        except Exception as exc:  # the store unreachable: the alert cannot be kept; the sender must retry
            deliveries.release(digest)
            reason = f"not kept: {type(exc).__name__}: {exc}"
            log.error("could not keep alert %s: %s", alert.fingerprint, reason)
            return rejected(503, reason, fingerprint=alert.fingerprint)
        if started is not None:
            log.info("alert %s (%s, auth %s) → %s", alert.fingerprint, alert.source, how,
                     ", ".join(f"{k} {v}" for k, v in started.items()))
            return JSONResponse({"status": "accepted", **started, "fingerprint": alert.fingerprint,
                                 "intake_id": kept}, status_code=202)
        log.info("alert %s (%s, auth %s) kept as intake #%d, handed to Prefect in the background%s", alert.fingerprint,
                 alert.source, how, kept, f" (first try: {error})" if error else "")
        return JSONResponse({"status": "accepted", "queued": True, "fingerprint": alert.fingerprint, "intake_id": kept,
                             "detail": "kept; handed to Prefect in the background and retried until it is attached "
                                       "to its incident" + (f" (first try: {error})" if error else "")},
                            status_code=202)

    return [Route("/alerts", alerts, methods=["POST"])]
