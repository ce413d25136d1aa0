"""Who may post to the intake: the shared secrets, the senders' signatures, compared in constant time.

Every sender's routes authenticate the raw body here before anything is parsed. Any one of (the same
RUNBOOK_INTAKE_HMAC_SECRET for every signature):
    Authorization: Bearer <RUNBOOK_INTAKE_TOKEN>
    X-Runbook-Signature: sha256=<hex HMAC-SHA256 of the raw body>
    Sentry-Hook-Signature: <hex HMAC-SHA256 of the raw body>          (Sentry integration platform)
    x-vercel-signature: <hex HMAC-SHA1 of the raw body>               (Vercel webhooks)
A sender with its own signing scheme (PagerDuty webhooks, Slack's signed requests) adds its check here, and so does
replay protection (a signed timestamp within a window, a delivery id seen once), so every route shares one place.
Secrets are never logged; neither are request headers.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Literal

from pydantic import SecretStr


def secret_bytes(value: SecretStr | None) -> bytes | None:
    """Return a configured secret as bytes, or None when it is unset or empty."""
    raw = value.get_secret_value() if value is not None else ""
    return raw.encode() if raw else None


def sign(body: bytes, secret: str, algorithm: Literal["sha256", "sha1"] = "sha256") -> str:
    """Return the hex HMAC of a body (what a sender puts in its signature header)."""
    return hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()


def authenticate(headers: Any, body: bytes, token: SecretStr | None, hmac_secret: SecretStr | None) -> str | None:
    """Return how the request authenticated ('bearer', 'signature', 'sentry', 'vercel') or None."""
    expected_token = secret_bytes(token)
    auth = headers.get("authorization", "")
    if expected_token and auth[:7].lower() == "bearer ":
        if hmac.compare_digest(auth[7:].strip().encode(), expected_token):
            return "bearer"
    key = secret_bytes(hmac_secret)
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


SIGNATURE_HEADERS = ("x-runbook-signature", "sentry-hook-signature", "x-vercel-signature")


def offers_credentials(headers: Any, token: SecretStr | None) -> bool:
    """Whether a request could authenticate at all: a correct bearer token, or a signature header to check against
    the body. A request with neither is refused before its body is read; one with a wrong token and no signature
    too (a token is checked without the body)."""
    if any(headers.get(h) for h in SIGNATURE_HEADERS):
        return True
    auth, expected = headers.get("authorization", ""), secret_bytes(token)
    return bool(expected and auth[:7].lower() == "bearer "
                and hmac.compare_digest(auth[7:].strip().encode(), expected))


def cross_site(headers: Any) -> str | None:
    """Why a request looks like a browser's cross-site form post, or None: what an unauthenticated (loopback-only,
    --insecure-local) endpoint must refuse, since any web page the user opens can post to 127.0.0.1."""
    site = headers.get("sec-fetch-site", "").lower()
    if site in {"cross-site", "same-site"}:
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin", "")
    if origin:
        from urllib.parse import urlsplit

        host = urlsplit(origin).hostname or origin
        if host not in {"127.0.0.1", "localhost", "::1"}:
            return f"Origin {origin[:100]}"
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        return f"Content-Type {kind or 'missing'} (application/json is required)"
    return None


# -- signed timestamps (replay protection) ------------------------------------------------------------------------

REPLAY_WINDOW_SECONDS = 5 * 60


def fresh_timestamp(timestamp: str | None, now: float, window: float = REPLAY_WINDOW_SECONDS) -> bool:
    """Return True when an epoch-seconds timestamp header is within `window` of now (either side)."""
    try:
        value = int((timestamp or "").strip())
    except ValueError:
        return False
    return abs(now - value) <= window


def timestamped_hmac(secret: bytes, basestring: bytes, prefix: str = "") -> str:
    """Return `prefix` + the hex HMAC-SHA256 of a signed base string (e.g. Slack's v0:{ts}:{body})."""
    return prefix + hmac.new(secret, basestring, hashlib.sha256).hexdigest()


def slack_basestring(timestamp: str, body: bytes) -> bytes:
    """Return what Slack signs: `v0:{X-Slack-Request-Timestamp}:{raw body}`."""
    return b"v0:" + timestamp.encode() + b":" + body


def sign_slack(body: bytes, secret: str, timestamp: str) -> str:
    """Return the X-Slack-Signature of a body (what Slack sends; the drill's stand-in signs with it)."""
    return timestamped_hmac(secret.encode(), slack_basestring(timestamp, body), "v0=")


def verify_slack(headers: Any, body: bytes, signing_secret: SecretStr | None, now: float
                 ) -> Literal["ok", "unconfigured", "stale", "bad-signature"]:
    """Check Slack's request signature: a fresh X-Slack-Request-Timestamp and a v0= HMAC (constant-time)."""
    key = secret_bytes(signing_secret)
    if not key:
        return "unconfigured"
    timestamp = headers.get("x-slack-request-timestamp", "")
    if not fresh_timestamp(timestamp, now):
        return "stale"
    given = headers.get("x-slack-signature", "").strip()
    expected = timestamped_hmac(key, slack_basestring(timestamp.strip(), body), "v0=")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        return "bad-signature"
    return "ok"


# -- PagerDuty V3 webhooks: v1 signatures (several during a secret rotation) and delivery ids seen once -----------


def sign_pagerduty(body: bytes, *secrets: str) -> str:
    """Return an X-PagerDuty-Signature value: `v1=<hex HMAC-SHA256 of the raw body>` per secret, comma-separated."""
    return ",".join("v1=" + hmac.new(s.encode(), body, hashlib.sha256).hexdigest() for s in secrets)


def verify_versioned(header: str | None, body: bytes, keys: list[bytes], version: str = "v1") -> bool:
    """Return True when any `<version>=<hex>` signature of a comma-separated header is the HMAC-SHA256 of the body
    under any key (a sender rotating its secret signs with both); every comparison is constant-time."""
    given = [part.strip()[len(version) + 1:].lower().encode() for part in (header or "").split(",")
             if part.strip().startswith(f"{version}=")]
    if not given or not keys:
        return False
    expected = [hmac.new(key, body, hashlib.sha256).hexdigest().encode() for key in keys]
    matched = False
    for signature in given:
        for candidate in expected:
            matched |= hmac.compare_digest(signature, candidate)  # no early exit: the time does not tell which
    return matched


def verify_pagerduty(headers: Any, body: bytes, secret: SecretStr | None
                     ) -> Literal["ok", "unconfigured", "bad-signature"]:
    """Check PagerDuty's X-PagerDuty-Signature on the raw body with the subscription's signing secret."""
    key = secret_bytes(secret)
    if not key:
        return "unconfigured"
    return "ok" if verify_versioned(headers.get("x-pagerduty-signature"), body, [key]) else "bad-signature"


class SeenOnce:
    """Delivery ids already processed (PagerDuty's X-Webhook-Id repeats on every retry of one webhook).

    In memory, bounded, thread-safe; `claim(id)` is True for the first caller only, `release(id)` gives an id back
    when its processing failed (so the sender's retry is processed). Durable idempotency is the route's business
    (e.g. the id recorded on the timeline); this stops concurrent duplicates.
    """

    def __init__(self, limit: int = 10_000) -> None:
        import threading
        from collections import OrderedDict

        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def claim(self, delivery_id: str) -> bool:
        """Return True when `delivery_id` was not seen before (and remember it)."""
        with self._lock:
            if delivery_id in self._ids:
                return False
            self._ids[delivery_id] = None
            while len(self._ids) > self._limit:
                self._ids.popitem(last=False)
            return True

    def release(self, delivery_id: str) -> None:
        """Forget an id whose processing failed."""
        with self._lock:
            self._ids.pop(delivery_id, None)
