"""What every sender's routes share: the body limit (read in chunks, stopped at the limit), strict JSON, the
rejection answer, keeping a payload that was not turned into an incident, and starting `declare-incident` through
Prefect's API with parameters that fit what Prefect accepts."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse

from runbook.errors import InputError
from runbook.models import Alert
from runbook.store import open_store

DECLARE_DEPLOYMENT = "declare-incident/declare-incident"
MAX_BODY_BYTES = 1_000_000
Respond = Literal["deployment", "inline", "none"]
# How the intake starts the response to a validated alert: returns the answer's fields naming what it started. The
# default is a declare-incident deployment run; deployments/warm_start.py injects a Prefect background task that a
# long-running task worker runs at once (runbook/ never imports flows/ or deployments/: the caller passes it in).
Starter = Callable[[Alert, Respond], Awaitable[dict[str, str]]]

# Prefect refuses flow-run parameters over 512 KiB (a 503-looking failure for the sender, retried for ever): an alert
# whose parameters would be larger is passed with a trimmed `raw`, its payload kept in full in the store.
PARAMETERS_LIMIT_BYTES = 400_000
# Deeper JSON than any sender's real payload; Prefect's JSON (orjson) refuses more than 254 levels anyway.
MAX_JSON_DEPTH = 64

log = logging.getLogger("runbook.intake")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """Return the body, read in chunks; None as soon as it passes `limit` (the rest is never read or kept)."""
    if int(request.headers.get("content-length") or 0) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise InputError(f"malformed alert: {name} is not a JSON number")


def _check_tree(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"malformed alert: nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("malformed alert: a string holds a lone surrogate (not valid Unicode)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, depth + 1)
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


def strict_json(body: bytes) -> Any:
    """Parse a body as strict JSON (RFC 8259): UTF-8, no NaN/Infinity, no lone surrogates, bounded depth and number
    size; InputError names the problem (what Python's json would accept and Prefect would later refuse)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"malformed alert: body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except InputError:
        raise
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed alert: body is not JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"malformed alert: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError(f"malformed alert: {str(exc).split(';')[0]}") from None
    try:
        _check_tree(value)
    except RecursionError:
        raise InputError(f"malformed alert: nested deeper than {MAX_JSON_DEPTH} levels") from None
    return value


def rejected(status: int, message: str, **extra: Any) -> JSONResponse:
    """Return the intake's rejection answer: `{"status": "rejected", "error": …}` with the HTTP status."""
    return JSONResponse({"status": "rejected", "error": message, **extra}, status_code=status)


async def keep_raw(raw: dict[str, Any], reason: str) -> int | None:
    """Keep a payload that was not turned into an incident, with the reason; return its id (None if impossible)."""
    try:
        async with open_store() as store:
            return await store.store_raw_alert(raw, error=reason)
    except Exception as exc:  # the store is down: say so in the log, still answer the sender
        log.error("could not keep the raw alert (%s): %s", type(exc).__name__, exc)
        return None


KEPT_IN_FULL = "kept in full"


async def accepted_before(alert: Alert) -> bool:
    """Whether this exact payload was accepted before (its alert is in the store): for a body-only signature (ours,
    Sentry's, Vercel's) the same bytes are the same delivery — a replay, or the sender's retry of one we took — and
    must never open a second incident after the first is resolved. An alert kept only because Prefect was
    unreachable (503) was not accepted: the sender's retry of it is taken."""
    async with open_store() as store:
        rows = await store.alerts(fingerprint=alert.fingerprint, limit=1000)
    return any(r["raw"] == alert.raw and (r["valid"] or str(r["error"] or "").startswith(KEPT_IN_FULL))
               for r in rows)


async def fit_parameters(alert: Alert) -> Alert:
    """Return the alert as it can be passed to Prefect: when its parameters would pass PARAMETERS_LIMIT_BYTES, the
    payload is kept in full in the store and the alert carries a trimmed `raw` naming where it is."""
    if len(json.dumps(alert.model_dump(mode="json"))) <= PARAMETERS_LIMIT_BYTES:
        return alert
    kept = await keep_raw(alert.raw, f"{KEPT_IN_FULL}: larger than the {PARAMETERS_LIMIT_BYTES} bytes passed to "
                                     "Prefect; the incident's alert carries a trimmed copy")
    scalars = {k: v for k, v in alert.raw.items() if isinstance(v, str | int | float | bool) and len(str(v)) < 500}
    trimmed = alert.model_copy(update={"raw": {**scalars, "trimmed": True, "kept_alert_id": kept}})
    if len(json.dumps(trimmed.model_dump(mode="json"))) > PARAMETERS_LIMIT_BYTES:
        raise InputError(f"alert too large: its fields alone pass {PARAMETERS_LIMIT_BYTES} bytes")
    return trimmed


async def start_declare(alert: Alert, respond: Respond) -> str:
    """Start declare-incident for a validated alert (passed through `fit_parameters` first) through Prefect's API;
    return the flow-run id. One run per alert: a retried hand-off of the same alert (same fingerprint and time
    received) gets the run Prefect created the first time (its idempotency key)."""
    from prefect.deployments.flow_runs import arun_deployment

    run = await arun_deployment(
        DECLARE_DEPLOYMENT,
        parameters={"params": {"alert": alert.model_dump(mode="json"), "respond": respond}},
        timeout=0,
        flow_run_name=f"declare {alert.summary[:60]}",
        tags=["intake", alert.source],
        idempotency_key=f"intake:{alert.fingerprint}:{alert.received_at.isoformat()}",
    )
    return str(run.id)


async def declare_by_deployment(alert: Alert, respond: Respond) -> dict[str, str]:
    """The default Starter: a declare-incident deployment run (a runner or worker picks it up at its next poll)."""
    return {"incident_flow_run_id": await start_declare(alert, respond), "deployment": DECLARE_DEPLOYMENT}
